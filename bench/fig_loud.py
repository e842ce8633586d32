"""Loud builds: hundreds of MB of output in short and in 1 MB lines, against the same build into /dev/null."""

from __future__ import annotations

import shutil

from bench import direct, jobs, loud, procs
from bench.report import Row, fmt_mb, fmt_ratio, fmt_s
from bench.stats import median

GOAL_RATIO = 1.1
GOAL_RSS = 100e6
KINDS = {"short": "short lines", "long": "1 MB lines"}
ROWS = [(f"loud build, {label}: wall time", "<= 1.1x /dev/null, log byte-exact") for label in KINDS.values()] + \
       [("loud builds runner RSS", "<= 100 MB")]


def build_seconds(status: dict) -> float:
    """Return the build's wall time as the runner recorded it."""
    if "duration" in status:
        return float(status["duration"])
    return float(status["end_time"]) - float(status["start_time"])


def run(ctx) -> list[Row]:
    size = ctx.pick(500 * 1024 * 1024, 4 * 1024 * 1024)
    rounds = ctx.pick(2, 1)
    folder = ctx.folder("loud")
    spool = ctx.spool(folder)
    rows = []
    with procs.start_runner(spool.root, folder) as runner:
        with procs.RssSampler([runner]) as rss:
            for kind, label in KINDS.items():
                text, exact = loud.loud_pkgbuild(f"bench-loud-{kind}", kind, size)
                digest = loud.expected_digest(kind, exact)
                apbd_times, floor_times, problems = [], [], []
                for n in range(rounds):
                    build_id, _ = jobs.publish_job(spool, text, f"bench-loud-{kind}")
                    status = jobs.wait_status(spool, build_id, timeout=600)
                    if status["status"] != "completed":
                        raise RuntimeError(f"loud build {build_id} ended {status['status']}: {status.get('reason')}")
                    apbd_times.append(build_seconds(status))
                    problem = loud.check_log(spool.job_dir(build_id) / "build.log", kind, exact, digest)
                    if problem:
                        problems.append(problem)
                    shutil.rmtree(spool.job_dir(build_id), ignore_errors=True)

                    seconds, code = direct.run(folder / f"direct-{kind}-{n}", text, None)
                    if code != 0:
                        raise RuntimeError(f"direct loud build exited {code}")
                    floor_times.append(seconds)
                    shutil.rmtree(folder / f"direct-{kind}-{n}", ignore_errors=True)
                a, f = median(apbd_times), median(floor_times)
                rows.append(Row(f"loud build, {label}: wall time", fmt_s(a), fmt_s(f), fmt_ratio(a, f),
                                "<= 1.1x /dev/null, log byte-exact", a <= GOAL_RATIO * f and not problems,
                                f"{fmt_mb(exact)} printed, median of {rounds}; apbd: the runner's duration; "
                                f"floor: the same builder command with output to /dev/null; "
                                + (problems[0] if problems else "build.log byte-exact")))
        peak = rss.max_rss[runner.name]
        start = rss.start_rss[runner.name]
    rows.append(Row("loud builds runner RSS", fmt_mb(peak), fmt_mb(start), "-", "<= 100 MB", peak <= GOAL_RSS,
                    "max RSS of the apbd-runner process during the loud builds; floor column: before them"))
    return rows
