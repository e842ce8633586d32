"""status-api throughput under wrk (8 connections) against a bare Bottle route of the same size."""

from __future__ import annotations

from bench import jobs, procs
from bench.load import Prober, load_generator, rate
from bench.report import Row, fmt_ratio
from bench.stats import median

CONNECTIONS = 8
GOAL_RATIO = 0.70
ROWS = [("status-api throughput", ">= 70 % of bare")]


def run(ctx) -> list[Row]:
    folder = ctx.folder("status-api")
    spool = ctx.spool(folder)
    build_id, _ = jobs.publish_job(spool, jobs.pkgbuild("bench-status"), "bench-status")
    threads = ctx.pick(8, 8)
    seconds = ctx.pick(3, 1)
    path = f"/build/{build_id}/status-api"
    with procs.start_web(spool.root, folder, ["--threads", str(threads)]) as web:
        _, status, body = Prober(web.url).get(path)
        if status != 200:
            raise RuntimeError(f"GET {path} returned HTTP {status}: {body[:200]!r}")
        with procs.start_bare(folder, len(body), threads=threads) as bare:
            apbd_rates, floor_rates = [], []
            for _ in range(ctx.pick(3, 1)):
                apbd_rates.append(rate(web.url + path, CONNECTIONS, seconds))
                floor_rates.append(rate(bare.url + path, CONNECTIONS, seconds))
    a, f = median(apbd_rates), median(floor_rates)
    return [Row("status-api throughput", f"{a:.0f} req/s", f"{f:.0f} req/s", fmt_ratio(a, f),
                ">= 70 % of bare", a >= GOAL_RATIO * f,
                f"{load_generator()} -c{CONNECTIONS} {seconds} s x{len(apbd_rates)} interleaved, {threads} waitress threads "
                f"both, {len(body)} B body; queued build")]
