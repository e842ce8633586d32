"""GET / latency with the resource monitor running, against a bare route of the same size."""

from __future__ import annotations

from bench import procs
from bench.load import Prober
from bench.report import Row, fmt_ms, fmt_ratio
from bench.stats import percentile

GOAL_P50_S = 0.010
ROWS = [("GET / p50", "<= 10 ms"), ("GET / p99", "(no goal)")]
ROUNDS = 5


def run(ctx) -> list[Row]:
    folder = ctx.folder("index")
    spool = ctx.spool(folder)
    per_round = ctx.pick(60, 10)
    with procs.start_runner(spool.root, folder) as runner, procs.start_web(spool.root, folder) as web:
        apbd = Prober(web.url)
        _, _, body = apbd.get("/")
        with procs.start_bare(folder, len(body), threads=8) as bare:
            floor = Prober(bare.url)
            apbd.timings("/", 5)
            floor.timings("/", 5)
            apbd_times, floor_times = [], []
            for _ in range(ctx.pick(ROUNDS, 2)):
                apbd_times += apbd.timings("/", per_round)
                floor_times += floor.timings("/", per_round)
    rows = []
    for label, fraction in (("GET / p50", 0.5), ("GET / p99", 0.99)):
        a, f = percentile(apbd_times, fraction), percentile(floor_times, fraction)
        goal, passed = ("<= 10 ms", a <= GOAL_P50_S) if fraction == 0.5 else ("(no goal)", True)
        rows.append(Row(label, fmt_ms(a), fmt_ms(f), fmt_ratio(a, f), goal, passed))
    rows[0].note = f"{len(apbd_times)} sequential keep-alive GETs each; floor: bare Bottle route, {len(body)} B JSON"
    return rows
