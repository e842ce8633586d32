"""Benchmarks that measure apbd side by side with its floors.

`python -m bench` starts real apbd-web and apbd-runner processes on loopback
with a temporary spool for each figure. It measures apbd and a floor, the same
work done without apbd (a bare Bottle route, nginx, cp, the builder command
run directly), interleaved in the same run, and prints one table. `--smoke`
runs every figure with tiny sizes, only to prove the suite still runs.
"""
