"""Upload of a large tarball through POST /build against cp of the same file on the same disk."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

from bench import bigfile, jobs, procs
from bench.curl import upload
from bench.report import Row, fmt_mb, fmt_rate, fmt_ratio
from bench.stats import median

GOAL_RATIO = 0.50
GOAL_RSS_GROWTH = 50e6
ROWS = [("upload throughput", ">= 50 % of cp"), ("upload web RSS growth", "<= 50 MB")]


def copy_seconds(src, dest) -> float:
    """Time `cp src dest` including the final fsync-free close, the way a user would copy."""
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dest)], check=True)
    return time.perf_counter() - start


def run(ctx) -> list[Row]:
    size = ctx.pick(1 << 30, 8 << 20)
    folder = ctx.folder("upload")
    spool = ctx.spool(folder)
    tarball = bigfile.write_big_tarball(folder / "big.tar.gz", jobs.pkgbuild("bench-upload"), size)
    total = tarball.stat().st_size
    limit = str(4 * total)
    web_args = ["--max-file-size", limit, "--max-request-size", limit]
    apbd_times, floor_times, bare_times = [], [], []
    bare_args = ["--upload-dir", str(folder), "--max-request-size", limit]
    with procs.start_web(spool.root, folder, web_args) as web, \
            procs.start_bare(folder, 100, threads=4, args=bare_args) as bare:
        with procs.RssSampler([web]) as rss:
            for n in range(ctx.pick(3, 1)):
                copy = folder / f"copy-{n}.tar.gz"
                floor_times.append(copy_seconds(tarball, copy))
                copy.unlink()

                build_id = str(uuid.uuid4())
                status, body, seconds = upload(f"{web.url}/build", {"build_id": build_id}, "build_tarball",
                                               tarball, "application/gzip")
                if status != 200:
                    raise RuntimeError(f"POST /build returned HTTP {status}: {body[:300]!r}")
                answer = json.loads(body)
                if answer.get("build_id") != build_id:
                    raise RuntimeError(f"POST /build returned {answer}")
                apbd_times.append(seconds)
                shutil.rmtree(spool.job_dir(build_id), ignore_errors=True)

                status, body, seconds = upload(f"{bare.url}/build", {"build_id": build_id}, "build_tarball",
                                               tarball, "application/gzip")
                if status != 200:
                    raise RuntimeError(f"POST to the bare route returned HTTP {status}: {body[:300]!r}")
                bare_times.append(seconds)
        growth = rss.max_rss[web.name] - rss.start_rss[web.name]
        start_rss = rss.start_rss[web.name]
    a, f = total / median(apbd_times), total / median(floor_times)
    return [
        Row("upload throughput", fmt_rate(a), fmt_rate(f), fmt_ratio(a, f), ">= 50 % of cp", a >= GOAL_RATIO * f,
            f"{fmt_mb(total)} tarball, median of {len(apbd_times)}; apbd time is curl's whole POST "
            f"(transfer, extraction, metadata) until the response; a bare waitress route storing the same "
            f"POST: {fmt_rate(total / median(bare_times))}"),
        Row("upload web RSS growth", fmt_mb(growth), fmt_mb(start_rss), "-", "<= 50 MB",
            growth <= GOAL_RSS_GROWTH, "floor column: web RSS before the first upload"),
    ]
