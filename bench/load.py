"""HTTP load: sequential latency probes on one keep-alive connection, and wrk for throughput."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

JSON_HEADERS = {"Accept": "application/json"}


class Prober:
    """One keep-alive HTTP connection that times GET requests, reading each whole body."""

    def __init__(self, url: str, timeout: float = 30.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.timeout = timeout
        self.conn = None

    def get(self, path: str, headers: dict | None = None) -> tuple[float, int, bytes]:
        """GET path; return (seconds from sending to the last body byte, HTTP status, body)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        start = time.perf_counter()
        try:
            self.conn.request("GET", path, headers=headers or JSON_HEADERS)
            answer = self.conn.getresponse()
            body = answer.read()
        except (http.client.HTTPException, OSError):
            self.close()
            raise
        elapsed = time.perf_counter() - start
        if answer.getheader("Connection", "").lower() == "close":
            self.close()
        return elapsed, answer.status, body

    def timings(self, path: str, count: int, headers: dict | None = None) -> list[float]:
        """Time count GETs of path; raise unless every one returns 200."""
        results = []
        for _ in range(count):
            elapsed, status, body = self.get(path, headers)
            if status != 200:
                raise RuntimeError(f"GET {path} returned HTTP {status}: {body[:200]!r}")
            results.append(elapsed)
        return results

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class BackgroundProber:
    """Time GETs of one path every `interval` seconds in a thread until stopped."""

    def __init__(self, url: str, path: str, interval: float):
        self.prober = Prober(url)
        self.path = path
        self.interval = interval
        self.timings: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                elapsed, status, body = self.prober.get(self.path)
                if status == 200:
                    self.timings.append(elapsed)
                else:
                    self.failures.append(f"status {status}")
            except (http.client.HTTPException, OSError) as e:
                self.failures.append(str(e))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.prober.close()


_RATE_RE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_ERRORS_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def load_generator() -> str:
    """Return the load generator rate() uses: wrk, or bench.pyload where wrk is not installed."""
    return "wrk" if shutil.which("wrk") else "bench.pyload"


def rate(url: str, connections: int, seconds: float) -> float:
    """Return the requests per second of GET url with connections concurrent keep-alive connections."""
    if load_generator() == "wrk":
        return wrk_rate(url, connections, seconds)
    argv = [sys.executable, "-m", "bench.pyload", url, str(connections), str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"bench.pyload failed against {url}: {out.stderr.strip()}")
    return float(out.stdout)


def wrk_rate(url: str, connections: int, seconds: float, threads: int = 2) -> float:
    """Run wrk against url and return requests per second; raise when any response was not 2xx."""
    argv = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
            "-H", "Accept: application/json", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    errors = _ERRORS_RE.search(out)
    if errors and int(errors.group(1)):
        raise RuntimeError(f"wrk got {errors.group(1)} non-2xx responses from {url}:\n{out}")
    match = _RATE_RE.search(out)
    if not match:
        raise RuntimeError(f"wrk printed no rate for {url}:\n{out}")
    return float(match.group(1))
