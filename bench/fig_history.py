"""History at scale: /builds/latest and /builds/pkgname/{p} over 100,000 builds against 100 builds."""

from __future__ import annotations

import time

from bench import history_gen, procs
from bench.load import Prober
from bench.report import Row, fmt_ms, fmt_ratio
from bench.stats import percentile

GOAL_P50_S = 0.010
GOAL_RATIO = 2.0
SMALL_COUNT = 100
QUERIES = {
    "history /builds/latest?limit=10": "/builds/latest?limit=10",
    "history /builds/pkgname/{p}?limit=5": f"/builds/pkgname/{history_gen.TARGET_PKGNAME}?limit=5",
}
ROWS = [(label, "p50 <= 10 ms and <= 2x at 100 builds") for label in QUERIES] + \
       [("history GET /", "p50 <= 10 ms (as GET /)")]
# apbd-web caches its queue count for 1 s (api.QUEUE_COUNT_CACHE_S); polls further apart see a fresh count.
INDEX_PAUSE_S = 1.1
ROUNDS = 5


def run(ctx) -> list[Row]:
    large_count = ctx.pick(100_000, 300)
    folder = ctx.folder("history")
    large, small = ctx.spool(folder / "large"), ctx.spool(folder / "small")

    ctx.say(f"history: writing {large_count} finished builds")
    history_gen.fill(large, large_count)
    history_gen.fill(small, SMALL_COUNT)

    per_round = ctx.pick(40, 5)
    times = {(label, size): [] for label in QUERIES for size in ("large", "small")}
    ready = "/builds/latest?limit=1"
    index_times = {"large": [], "small": []}
    with procs.start_web(large.root, folder, ready_path=ready) as web_large, \
            procs.start_web(small.root, folder, ready_path=ready) as web_small:
        # apbd-web reads every job's status.json once at start for /metrics; measure after that.
        settle = {"large": web_large.wait_idle(), "small": web_small.wait_idle()}
        probers = {"large": Prober(web_large.url), "small": Prober(web_small.url)}

        for label, path in QUERIES.items():
            for size, prober in probers.items():
                _, status, body = prober.get(path)
                if status != 200 or b"build_id" not in body:
                    raise RuntimeError(f"GET {path} on {size} spool returned HTTP {status}: {body[:200]!r}")
                prober.timings(path, 3)
        for _ in range(ctx.pick(ROUNDS, 2)):
            for label, path in QUERIES.items():
                for size, prober in probers.items():
                    times[(label, size)] += prober.timings(path, per_round)
        for _ in range(ctx.pick(5, 1)):
            for size, prober in probers.items():
                time.sleep(INDEX_PAUSE_S)
                index_times[size] += prober.timings("/", 1)

    rows = []
    for label in QUERIES:
        a = percentile(times[(label, "large")], 0.5)
        f = percentile(times[(label, "small")], 0.5)
        p99 = percentile(times[(label, "large")], 0.99)
        rows.append(Row(label, fmt_ms(a), fmt_ms(f), fmt_ratio(a, f), "p50 <= 10 ms and <= 2x at 100 builds",
                        a <= GOAL_P50_S and a <= GOAL_RATIO * f,
                        f"p50 with {large_count} builds vs {SMALL_COUNT} builds (floor column); "
                        f"p99 {fmt_ms(p99)}; measured once the web was idle, {settle['large']:.0f} s after start "
                        f"({settle['small']:.0f} s at {SMALL_COUNT} builds)"))
    a, f = percentile(index_times["large"], 0.5), percentile(index_times["small"], 0.5)
    rows.append(Row(ROWS[-1][0], fmt_ms(a), fmt_ms(f), fmt_ratio(a, f),
                    ROWS[-1][1], a <= GOAL_P50_S,
                    f"p50 with {large_count} builds; {len(index_times['large'])} GETs each {INDEX_PAUSE_S} s "
                    f"apart (the queue count is cached for 1 s); floor column: the same at {SMALL_COUNT} builds"))
    return rows
