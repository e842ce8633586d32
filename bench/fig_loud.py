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
    # Under --smoke the kinds build at the same time, to keep the smoke run short.
    batches = [list(KINDS)] if ctx.smoke else [[kind] for kind in KINDS]
    texts = {kind: loud.loud_pkgbuild(f"bench-loud-{kind}", kind, size) for kind in KINDS}
    digests = {kind: loud.expected_digest(kind, exact) for kind, (_, exact) in texts.items()}
    apbd_times = {kind: [] for kind in KINDS}
    floor_times = {kind: [] for kind in KINDS}
    file_times = {kind: [] for kind in KINDS}
    problems = {kind: [] for kind in KINDS}
    with procs.start_runner(spool.root, folder) as runner:
        with procs.RssSampler([runner]) as rss:
            for n in range(rounds):
                for batch in batches:
                    ids = {kind: jobs.publish_job(spool, texts[kind][0], f"bench-loud-{kind}")[0] for kind in batch}
                    for kind, build_id in ids.items():
                        status = jobs.wait_status(spool, build_id, timeout=600)
                        if status["status"] != "completed":
                            raise RuntimeError(f"loud build {build_id} ended {status['status']}: {status.get('reason')}")
                        apbd_times[kind].append(build_seconds(status))
                        problem = loud.check_log(spool.job_dir(build_id) / "build.log", kind, texts[kind][1],
                                                 digests[kind])
                        if problem:
                            problems[kind].append(problem)
                        shutil.rmtree(spool.job_dir(build_id), ignore_errors=True)

                    folders = [folder / f"direct-{kind}-{n}" for kind in batch]
                    results = direct.run_together([(f, texts[kind][0]) for f, kind in zip(folders, batch)])
                    for kind, (seconds, code) in zip(batch, results):
                        if code != 0:
                            raise RuntimeError(f"direct loud build exited {code}")
                        floor_times[kind].append(seconds)
                    for f in folders:
                        shutil.rmtree(f, ignore_errors=True)

                    # Not the goal's floor, but what writing the log costs without apbd in the way.
                    for kind in batch:
                        target = folder / f"file-{kind}-{n}"
                        seconds, code = direct.run(target, texts[kind][0], folder / f"file-{kind}-{n}.log")
                        if code != 0:
                            raise RuntimeError(f"direct loud build into a file exited {code}")
                        file_times[kind].append(seconds)
                        shutil.rmtree(target, ignore_errors=True)
                        (folder / f"file-{kind}-{n}.log").unlink()
        peak = rss.max_rss[runner.name]
        start = rss.start_rss[runner.name]
    rows = []
    for kind, label in KINDS.items():
        a, f = median(apbd_times[kind]), median(floor_times[kind])
        rows.append(Row(f"loud build, {label}: wall time", fmt_s(a), fmt_s(f), fmt_ratio(a, f),
                        "<= 1.1x /dev/null, log byte-exact", a <= GOAL_RATIO * f and not problems[kind],
                        f"{fmt_mb(texts[kind][1])} printed, median of {rounds}; apbd: the runner's duration; "
                        f"floor: the same builder command with output to /dev/null; the same with output to "
                        f"a file: {fmt_s(median(file_times[kind]))}; "
                        + (problems[kind][0] if problems[kind] else "build.log byte-exact")))
    rows.append(Row("loud builds runner RSS", fmt_mb(peak), fmt_mb(start), "-", "<= 100 MB", peak <= GOAL_RSS,
                    "max RSS of the apbd-runner process during the loud builds; floor column: before them"))
    return rows
