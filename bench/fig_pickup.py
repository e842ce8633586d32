"""Pickup latency: from the publishing rename of a job to its build starting.

The PKGBUILD's top-level code prints the wall-clock time it runs, so each
figure includes the builder's own start (bwrap and makepkg up to sourcing the
PKGBUILD). The floor pays the same: a watcher that starts the same builder
command the moment inotify reports the rename. apbd's pickup proper is the
difference, and the goal is checked on it.
"""

from __future__ import annotations

import shutil
import sys
import time

from bench import jobs, procs
from bench.report import Row, fmt_ms, fmt_ratio
from bench.stats import median, percentile

GOAL_P50_S = 0.050
GOAL_P99_S = 0.200
ROWS = [("pickup p50", "apbd - floor <= 50 ms"), ("pickup p99", "apbd - floor <= 200 ms")]
# Pickup needs the start, not a package: the PKGBUILD prints the time and ends makepkg at once.
STOP_AFTER_STAMP = "exit 1"


def floor_pickup(staging, watched, text: str, name: str) -> float:
    """Rename a job folder into the watcher's folder; return the stamp minus the rename time."""
    src = staging / name / "src"
    src.mkdir(parents=True)
    (src / "PKGBUILD").write_text(text)
    target = watched / name
    shutil.move(str(staging / name), str(target))
    renamed = time.time()
    deadline = time.monotonic() + 120
    while not (target / "done").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"floor build {name} did not finish")
        time.sleep(0.005)
    stamp = jobs.start_stamp((target / "build.log").read_text(errors="replace"))
    if stamp is None:
        raise RuntimeError(f"floor build {name} printed no {jobs.START_MARK} line")
    return stamp - renamed


def run(ctx) -> list[Row]:
    count = ctx.pick(50, 3)
    folder = ctx.folder("pickup")
    spool = ctx.spool(folder)
    staging, watched = folder / "floor-staging", folder / "floor-jobs"
    staging.mkdir()
    watched.mkdir()

    apbd_times, floor_times = [], []
    watcher_argv = [sys.executable, "-m", "bench.floor_watch", str(watched)]
    with procs.start_runner(spool.root, folder) as runner, \
            procs.Child("floor-watch", watcher_argv, folder / "floor-watch.log") as watcher:
        deadline = time.monotonic() + 60
        while "ready" not in watcher.log_tail():
            if not watcher.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"floor watcher did not start:\n{watcher.log_tail()}")
            time.sleep(0.05)

        for n in range(count):
            name = f"bench-pickup-{n}"
            text = jobs.stamped_pkgbuild(name, top_level_after=STOP_AFTER_STAMP)
            build_id, renamed = jobs.publish_job(spool, text, name)
            jobs.wait_status(spool, build_id)
            log_text = (spool.job_dir(build_id) / "build.log").read_text(errors="replace")
            stamp = jobs.start_stamp(log_text)
            if stamp is None:
                raise RuntimeError(f"build {build_id} printed no {jobs.START_MARK} line:\n{log_text[-2000:]}")
            apbd_times.append(stamp - renamed)

            floor_times.append(floor_pickup(staging, watched, text, name))
            time.sleep(0.05)

    floor_median = median(floor_times)
    rows = []
    for label, fraction, goal_s in (("pickup p50", 0.5, GOAL_P50_S), ("pickup p99", 0.99, GOAL_P99_S)):
        a, f = percentile(apbd_times, fraction), percentile(floor_times, fraction)
        rows.append(Row(label, fmt_ms(a), fmt_ms(f), fmt_ratio(a, f), f"apbd - floor <= {goal_s * 1000:.0f} ms",
                        a - floor_median <= goal_s))
    rows[0].note = (f"{count} jobs, one at a time; rename to the PKGBUILD's first line; floor: inotify watcher "
                    f"starting the same builder command (median {fmt_ms(floor_median)} is the builder's own start)")
    return rows
