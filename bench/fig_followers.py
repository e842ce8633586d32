"""Live followers: many SSE clients following one build that prints lines at a steady rate."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time

from bench import jobs, procs
from bench.load import BackgroundProber
from bench.report import Row, fmt_mb, fmt_ms, fmt_ratio
from bench.sse_clients import BUCKET_S
from bench.stats import percentile

GOAL_P50_S = 0.100
GOAL_P99_S = 0.500
GOAL_RSS = 300e6
GOAL_STATUS_P99_S = 0.050
ROWS = [("followers: every line, in order", "all clients"),
        ("followers delivery p50", "<= 100 ms"), ("followers delivery p99", "<= 500 ms"),
        ("followers web RSS", "<= 300 MB"), ("followers status-api p99", "<= 50 ms")]

GENERATOR = """\
  # The benchmark creates work/go once every follower is connected.
  local go="$startdir/../go" i
  for ((i = 0; i < 2400; i++)); do [[ -e $go ]] && break; sleep 0.05; done
  python3 - <<'PY'
import sys, time
rate, seconds = {rate}, {seconds}
start = time.time()
for seq in range(rate * seconds):
    delay = start + seq / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    sys.stdout.write(f"BENCH-LINE {{seq}} {{time.time():.6f}}\\n")
    sys.stdout.flush()
PY"""


def histogram_percentile(histogram: list[int], fraction: float) -> float:
    """Return the latency (seconds, bucket upper edge) below which fraction of the counts lie."""
    total = sum(histogram)
    wanted = max(1, int(fraction * total + 0.999999))
    seen = 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= wanted:
            return (bucket + 1) * BUCKET_S
    return len(histogram) * BUCKET_S


def wait_port(port: int, child: procs.Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((procs.LOOPBACK, port), timeout=1).close()
            return
        except OSError:
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} does not listen on port {port}:\n{child.log_tail()}")
            time.sleep(0.05)


def follow_build(ctx, folder, spool, build_id: str, url: str, path: str, clients: int, lines: int,
                 seconds: int, tag: str, during=contextlib.nullcontext) -> dict:
    """Connect the followers to url+path, let the build print, and return their merged result.

    during() is entered once every follower is connected and left when they are done.
    """
    processes = ctx.pick(4, 1)
    job = spool.job_dir(build_id)
    timeout = seconds + 180
    children = []
    for n in range(processes):
        share = clients // processes + (1 if n < clients % processes else 0)
        argv = [sys.executable, "-m", "bench.sse_clients", "--url", url, "--path", path,
                "--clients", str(share), "--lines", str(lines), "--timeout", str(timeout),
                "--ready", str(folder / f"ready-{tag}-{n}"), "--out", str(folder / f"result-{tag}-{n}.json")]
        children.append(subprocess.Popen(argv, cwd=procs.REPO_ROOT, env=procs.child_env()))
    deadline = time.monotonic() + 180
    while not all((folder / f"ready-{tag}-{n}").exists() for n in range(processes)) or \
            not (job / "work" / "build" / "PKGBUILD").exists():
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            raise RuntimeError(f"{tag}: followers did not all connect, or the build did not start, within 180 s")
        time.sleep(0.05)
    ctx.say(f"followers ({tag}): {clients} clients connected; the build prints {lines} lines")
    with during():
        (job / "work" / "go").touch()
        for child in children:
            child.wait(timeout=timeout + 30)
    status = jobs.wait_status(spool, build_id, timeout=120)
    results = [json.loads((folder / f"result-{tag}-{n}.json").read_text()) for n in range(processes)]
    return {"histogram": [sum(h) for h in zip(*(r["histogram"] for r in results))],
            "complete": sum(r["complete"] for r in results),
            "errors": [e for r in results for e in r["errors"]],
            "status": status.get("status"), "processes": processes}


def run(ctx) -> list[Row]:
    clients = ctx.pick(500, 10)
    rate, seconds = ctx.pick((1000, 30), (100, 2))
    lines = rate * seconds
    folder = ctx.folder("followers")
    spool = ctx.spool(folder)
    text = jobs.pkgbuild("bench-followers", GENERATOR.format(rate=rate, seconds=seconds))
    with procs.start_runner(spool.root, folder) as runner:
        with procs.start_web(spool.root, folder, ["--threads", str(clients + 16)]) as web:
            build_id, _ = jobs.publish_job(spool, text, "bench-followers")
            rss = procs.RssSampler([web])
            status_probe = BackgroundProber(web.url, f"/build/{build_id}/status-api", 0.05)

            @contextlib.contextmanager
            def measured():
                with rss, status_probe:
                    yield

            apbd = follow_build(ctx, folder, spool, build_id, web.url, f"/build/{build_id}/stream",
                                clients, lines, seconds, "apbd", measured)

        build_id, _ = jobs.publish_job(spool, text, "bench-followers")
        port = procs.free_port()
        floor_argv = [sys.executable, "-m", "bench.sse_floor", "--port", str(port),
                      "--log", str(spool.job_dir(build_id) / "build.log")]
        with procs.Child("sse-floor", floor_argv, folder / "sse-floor.log") as floor_server:
            wait_port(port, floor_server)
            floor = follow_build(ctx, folder, spool, build_id, f"http://{procs.LOOPBACK}:{port}", "/stream",
                                 clients, lines, seconds, "floor")

    p50, p99 = histogram_percentile(apbd["histogram"], 0.5), histogram_percentile(apbd["histogram"], 0.99)
    f50, f99 = histogram_percentile(floor["histogram"], 0.5), histogram_percentile(floor["histogram"], 0.99)
    status_p99 = percentile(status_probe.timings, 0.99) if status_probe.timings else float("inf")
    status_p50 = percentile(status_probe.timings, 0.5) if status_probe.timings else float("inf")
    errors = apbd["errors"]
    return [
        Row("followers: every line, in order", f"{apbd['complete']}/{clients} clients",
            f"{floor['complete']}/{clients} clients", "-", "all clients", apbd["complete"] == clients,
            f"{clients} SSE clients in {apbd['processes']} processes, {rate} lines/s for {seconds} s; build "
            f"{apbd['status']}; floor: the same clients on a minimal asyncio server that reads build.log "
            f"once and sends each line to all" + (f"; first errors: {errors[:3]}" if errors else "")),
        Row("followers delivery p50", fmt_ms(p50), fmt_ms(f50), fmt_ratio(p50, f50), "<= 100 ms", p50 <= GOAL_P50_S),
        Row("followers delivery p99", fmt_ms(p99), fmt_ms(f99), fmt_ratio(p99, f99), "<= 500 ms", p99 <= GOAL_P99_S,
            f"latencies are capped at {len(apbd['histogram']) * BUCKET_S:.0f} s"),
        Row("followers web RSS", fmt_mb(rss.max_rss[web.name]), fmt_mb(rss.start_rss[web.name]), "-",
            "<= 300 MB", rss.max_rss[web.name] <= GOAL_RSS, "max during the run; floor column: before it"),
        Row("followers status-api p99", fmt_ms(status_p99), "-", "-", "<= 50 ms", status_p99 <= GOAL_STATUS_P99_S,
            f"one GET every 50 ms during the run: {len(status_probe.timings)} responses, "
            f"{len(status_probe.failures)} failures, p50 {fmt_ms(status_p50)}"),
    ]
