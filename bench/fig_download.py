"""Download of a large artifact through /build/{id}/download/{file} against nginx serving the same file."""

from __future__ import annotations

from bench import bigfile, jobs, procs
from bench.curl import download
from bench.report import Row, fmt_mb, fmt_rate, fmt_ratio
from bench.stats import median

GOAL_RATIO = 0.50
GOAL_RSS_GROWTH = 20e6
ROWS = [("download throughput", ">= 50 % of nginx"), ("download web RSS growth", "<= 20 MB")]
FILENAME = "bench-download-1-1-any.pkg.tar.zst"


def run(ctx) -> list[Row]:
    size = ctx.pick(1 << 30, 8 << 20)
    folder = ctx.folder("download")
    spool = ctx.spool(folder)

    big = bigfile.write_big_file(folder / "big.bin", size)
    build_id = jobs.add_finished_job(spool, "bench-download", {f"packages/{FILENAME}": big,
                                                               "build.log": b"==> Finished\n"})
    www = folder / "www"
    www.mkdir()
    (www / FILENAME).hardlink_to(big)

    apbd_times, floor_times = [], []
    with procs.start_web(spool.root, folder) as web, procs.start_nginx(www, folder / "nginx") as nginx:
        with procs.RssSampler([web]) as rss:
            for _ in range(ctx.pick(3, 1)):
                got, seconds = download(f"{nginx.url}/{FILENAME}")
                if got != size:
                    raise RuntimeError(f"nginx sent {got} of {size} bytes")
                floor_times.append(seconds)

                got, seconds = download(f"{web.url}/build/{build_id}/download/{FILENAME}")
                if got != size:
                    raise RuntimeError(f"apbd sent {got} of {size} bytes")
                apbd_times.append(seconds)
        growth = rss.max_rss[web.name] - rss.start_rss[web.name]
        start_rss = rss.start_rss[web.name]

    a, f = size / median(apbd_times), size / median(floor_times)
    return [
        Row("download throughput", fmt_rate(a), fmt_rate(f), fmt_ratio(a, f), ">= 50 % of nginx",
            a >= GOAL_RATIO * f, f"{fmt_mb(size)} artifact, curl to /dev/null, median of {len(apbd_times)}"),
        Row("download web RSS growth", fmt_mb(growth), fmt_mb(start_rss), "-", "<= 20 MB",
            growth <= GOAL_RSS_GROWTH, "floor column: web RSS before the first download"),
    ]
