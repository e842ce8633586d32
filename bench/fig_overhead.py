"""Per-build overhead: a small package through apbd (upload to terminal status) against building it directly."""

from __future__ import annotations

import time
import uuid

import requests

from bench import direct, jobs, procs
from bench.report import Row, fmt_ratio, fmt_s
from bench.stats import median

GOAL_DIFF_S = 0.3
ROWS = [("per-build overhead", "median diff <= 0.3 s")]
POLL_S = 0.01
EXAMPLE = jobs.pkgbuild("bench-hello", '  printf "hello from build()\\n"\n  sleep 0.2')


def build_through_apbd(url: str, tarball: bytes) -> float:
    """Upload the tarball and poll status-api until the build ends; return the seconds taken."""
    build_id = str(uuid.uuid4())
    with requests.Session() as session:
        started = time.perf_counter()
        response = session.post(f"{url}/build", data={"build_id": build_id},
                              files={"build_tarball": ("build.tar.gz", tarball, "application/gzip")}, timeout=120)
        if response.status_code != 200:
            raise RuntimeError(f"POST /build returned HTTP {response.status_code}: {response.text[:300]}")
        deadline = started + 300
        while time.perf_counter() < deadline:
            status = session.get(f"{url}/build/{build_id}/status-api", timeout=30).json()
            if status.get("status") in ("completed", "failed", "cancelled"):
                if status["status"] != "completed":
                    raise RuntimeError(f"build {build_id} ended {status['status']}: {status.get('reason')}")
                return time.perf_counter() - started
            time.sleep(POLL_S)
    raise TimeoutError(f"build {build_id} did not end within 300 s")


def run(ctx) -> list[Row]:
    runs = ctx.pick(10, 1)
    folder = ctx.folder("overhead")
    spool = ctx.spool(folder)
    tarball = jobs.tarball_bytes(EXAMPLE)
    apbd_times, floor_times = [], []
    with procs.start_runner(spool.root, folder) as runner, procs.start_web(spool.root, folder) as web:
        for n in range(runs):
            apbd_times.append(build_through_apbd(web.url, tarball))
            seconds, code = direct.run(folder / f"direct-{n}", EXAMPLE, folder / f"direct-{n}.log")
            if code != 0:
                raise RuntimeError(f"direct build exited {code}; see {folder / f'direct-{n}.log'}")
            floor_times.append(seconds)
    a, f = median(apbd_times), median(floor_times)
    return [Row("per-build overhead", fmt_s(a), fmt_s(f), fmt_ratio(a, f), "median diff <= 0.3 s",
                a - f <= GOAL_DIFF_S,
                f"diff {a - f:+.2f} s; {runs} runs each, interleaved; apbd: POST /build to a terminal "
                f"status-api (polled every {POLL_S * 1000:.0f} ms); floor: the runner's makepkg command run directly")]
