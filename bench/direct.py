"""The floor of every build figure: the runner's own builder command, started directly.

make_builder() gets from apbd.runner.builders the makepkg builder exactly as
apbd-runner makes it (same argv, sandbox, environment and build user), and
prepare_work() lays out a work folder as the runner does (work/build holds the
sources, work/pkgdest and work/home beside it, all owned by the build user).
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from pathlib import Path

from apbd import config
from apbd.runner import builders


@functools.lru_cache(maxsize=None)
def make_builder() -> builders.Builder:
    build_user = next(o.default for o in config.SHARED_OPTIONS if o.flag == "--build-user")
    return builders.make_builder(builders.MAKEPKG, buildroot="/nonexistent",
                                 architecture=builders.detect_architecture(), build_user=build_user)


def prepare_work(folder: Path, pkgbuild_text: str) -> builders.WorkPaths:
    """Create folder/work with the PKGBUILD in work/build, owned by the build user."""
    paths = builders.WorkPaths(folder / "work")
    for path in (paths.startdir, paths.pkgdest, paths.home):
        path.mkdir(parents=True, exist_ok=True)
    (paths.startdir / "PKGBUILD").write_text(pkgbuild_text)
    owner = make_builder().owner()
    if owner is not None:
        owner.chown_tree(paths.work)
    return paths


def start(paths: builders.WorkPaths, stdout) -> subprocess.Popen:
    """Start the builder command on paths with stdout and stderr going to stdout (a file object or DEVNULL)."""
    command = make_builder().command(paths)
    return subprocess.Popen(command.argv, cwd=str(command.cwd), env=command.env, stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
                            **command.popen_kwargs)


def run(folder: Path, pkgbuild_text: str, log_path: Path | None) -> tuple[float, int]:
    """Build pkgbuild_text directly in folder; return (wall seconds, exit status).

    The output goes to log_path, or to /dev/null when it is None. The time
    counts from starting the command to its exit, like a runner's build.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = prepare_work(folder, pkgbuild_text)
    with open(log_path or os.devnull, "wb") as out:
        started = time.perf_counter()
        proc = start(paths, out)
        code = proc.wait()
        return time.perf_counter() - started, code


def run_together(builds: list[tuple[Path, str]]) -> list[tuple[float, int]]:
    """Start every (folder, PKGBUILD text) build at once, output to /dev/null; return each (seconds, status)."""
    started, procs = [], []
    with open(os.devnull, "wb") as devnull:
        for folder, text in builds:
            folder.mkdir(parents=True, exist_ok=True)
            paths = prepare_work(folder, text)
            started.append(time.perf_counter())
            procs.append(start(paths, devnull))
        ended = [None] * len(procs)
        while any(e is None for e in ended):
            for n, proc in enumerate(procs):
                if ended[n] is None and proc.poll() is not None:
                    ended[n] = time.perf_counter()
            time.sleep(0.005)
    return [(ended[n] - started[n], procs[n].returncode) for n in range(len(procs))]
