"""Many builds: concurrent builds that each print tens of MB, against the same builds run directly."""

from __future__ import annotations

import os
import time

from bench import direct, jobs, loud, procs
from bench.report import Row, fmt_mb, fmt_ratio, fmt_s

GOAL_RSS = 100e6
# A build whose log does not grow for this long while it prints has stalled.
STALL_S = 2.0
PRINTING_FROM = 64 * 1024
ROWS = [("many builds runner RSS", "<= 100 MB"), ("many builds: longest output gap", "no stall (< 2 s)"),
        ("many builds wall time", "(no goal)")]


def run(ctx) -> list[Row]:
    count = ctx.pick(10, 2)
    size = ctx.pick(50 * 1024 * 1024, 2 * 1024 * 1024)
    folder = ctx.folder("many")
    spool = ctx.spool(folder)
    texts = [loud.loud_pkgbuild(f"bench-many-{n}", "short", size) for n in range(count)]
    exact = texts[0][1]
    digest = loud.expected_digest("short", exact)

    with procs.start_runner(spool.root, folder, ["--max-concurrent", str(count)]) as runner:
        with procs.RssSampler([runner]) as rss:
            started = time.perf_counter()
            ids = [jobs.publish_job(spool, text, f"bench-many-{n}")[0] for n, (text, _) in enumerate(texts)]
            logs = {i: spool.job_dir(i) / "build.log" for i in ids}
            last_size = {i: 0 for i in ids}
            last_growth = {i: None for i in ids}
            longest_gap = 0.0
            pending = set(ids)
            deadline = time.monotonic() + 900
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pending)} of {count} builds did not end within 900 s")
                now = time.monotonic()
                for build_id in list(pending):
                    try:
                        size_now = os.path.getsize(logs[build_id])
                    except FileNotFoundError:
                        size_now = 0
                    # Between the first 64 KiB (past the header lines) and the whole payload.
                    printing = PRINTING_FROM < last_size[build_id] < exact
                    if size_now != last_size[build_id]:
                        if printing:
                            longest_gap = max(longest_gap, now - last_growth[build_id])
                        last_size[build_id] = size_now
                        last_growth[build_id] = now
                    status = spool.read_status(build_id) or {}
                    if status.get("status") in ("completed", "failed", "cancelled"):
                        if status["status"] != "completed":
                            raise RuntimeError(f"build {build_id} ended {status['status']}: {status.get('reason')}")
                        pending.discard(build_id)
                time.sleep(0.1)
            apbd_wall = time.perf_counter() - started
        problems = [p for p in (loud.check_log(logs[i], "short", exact, digest) for i in ids) if p]

    started = time.perf_counter()
    children = []
    for n, (text, _) in enumerate(texts):
        paths = direct.prepare_work(folder / f"direct-{n}", text)
        children.append(direct.start(paths, open(os.devnull, "wb")))
    codes = [c.wait() for c in children]
    floor_wall = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"direct builds exited {codes}")

    peak, start = rss.max_rss[runner.name], rss.start_rss[runner.name]
    return [
        Row("many builds runner RSS", fmt_mb(peak), fmt_mb(start), "-", "<= 100 MB", peak <= GOAL_RSS,
            f"{count} concurrent builds, {fmt_mb(exact)} of output each; floor column: runner RSS before them"),
        Row("many builds: longest output gap", fmt_s(longest_gap), "-", "-", "no stall (< 2 s)",
            longest_gap < STALL_S and not problems,
            "longest time a build.log did not grow while its build printed (sampled every 0.1 s); "
            + (problems[0] if problems else "every build.log byte-exact")),
        Row("many builds wall time", fmt_s(apbd_wall), fmt_s(floor_wall), fmt_ratio(apbd_wall, floor_wall),
            "(no goal)", True, "first publish to last terminal status; floor: the same builds started at once, "
            "output to /dev/null"),
    ]
