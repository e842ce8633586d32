"""Start and stop the servers a benchmark measures: apbd-web, apbd-runner, a bare route, nginx.

Every process listens on 127.0.0.1 only, runs in its own session, writes its
output to a log file in the benchmark's temporary folder and is stopped by its
PID when the benchmark ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def child_env(extra: dict | None = None) -> dict:
    """Return an environment without inherited APB_* settings, with this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APB_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Child:
    """A process the benchmark started, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env or child_env(),
                                     cwd=str(REPO_ROOT), start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        """Return the resident set size of the process in bytes (0 once it ended)."""
        try:
            return psutil.Process(self.pid).memory_info().rss
        except psutil.NoSuchProcess:
            return 0

    def wait_idle(self, busy_fraction: float = 0.2, window: float = 1.0, timeout: float = 120.0) -> float:
        """Wait until the process uses less than busy_fraction of a core over window; return the seconds waited."""
        proc = psutil.Process(self.pid)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            before = sum(proc.cpu_times()[:2])
            time.sleep(window)
            if sum(proc.cpu_times()[:2]) - before < busy_fraction * window:
                break
        return time.monotonic() - started

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail_start(self, why: str) -> None:
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {why}\ncommand: {' '.join(self.argv)}\n"
                           f"--- last output ---\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process: SIGTERM, then SIGKILL to its own process group after a grace."""
        if self._log.closed:
            return
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_GRACE_S)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class HttpChild(Child):
    """A child serving HTTP on a loopback port, ready once `ready_path` returns 200."""

    def __init__(self, name, argv, log_path, port, env=None, ready_path="/"):
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        super().__init__(name, argv, log_path, env)
        try:
            self.wait_ready(ready_path)
        except BaseException:
            # The caller never gets this object, so nobody else would stop the process.
            self.stop()
            raise

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail_start(f"exited with status {self.proc.returncode}")
            try:
                answer = requests.get(self.url + path, headers={"Accept": "application/json"},
                                      timeout=START_TIMEOUT_S)
                if answer.status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.fail_start(f"GET {path} did not answer 200 within {START_TIMEOUT_S} s")


def start_web(spool_root: Path, log_dir: Path, args: list[str] = (), env: dict | None = None,
              ready_path: str = "/") -> HttpChild:
    """Start apbd-web on a free loopback port over spool_root; ready once GET ready_path returns 200."""
    port = free_port()
    argv = [sys.executable, "-m", "apbd.web", "--host", LOOPBACK, "--port", str(port),
            "--builds-dir", str(spool_root), *args]
    return HttpChild("apbd-web", argv, log_dir / f"web-{port}.log", port, child_env(env), ready_path)


class RunnerChild(Child):
    """apbd-runner over a spool, ready once its runners/HOSTNAME-PID.json state file exists."""

    def __init__(self, spool_root: Path, log_dir: Path, args: list[str] = (), env: dict | None = None):
        self.spool_root = Path(spool_root)
        argv = [sys.executable, "-m", "apbd.runner", "--builds-dir", str(spool_root), *args]
        super().__init__("apbd-runner", argv, log_dir / f"runner-{time.monotonic_ns()}.log", child_env(env))
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.state() is None:
            if not self.alive():
                self.fail_start(f"exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.fail_start(f"no runners/*-{self.pid}.json within {START_TIMEOUT_S} s")
            time.sleep(0.05)

    def state(self) -> dict | None:
        for path in (self.spool_root / "runners").glob(f"*-{self.pid}.json"):
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        return None

    def tree_rss(self) -> int:
        """Return the RSS of the runner process itself, without the builds it started."""
        return self.rss()


def start_runner(spool_root: Path, log_dir: Path, args: list[str] = (), env: dict | None = None) -> RunnerChild:
    return RunnerChild(spool_root, log_dir, args, env)


def start_bare(log_dir: Path, body_size: int, threads: int, args: list[str] = ()) -> HttpChild:
    """Start the bare Bottle-on-waitress route (bench/bare.py) serving a constant JSON of body_size bytes."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare", "--port", str(port), "--size", str(body_size),
            "--threads", str(threads), *args]
    return HttpChild("bare", argv, log_dir / f"bare-{port}.log", port, ready_path="/")


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def start_nginx(root: Path, tmp: Path) -> HttpChild:
    """Start nginx in the foreground on a loopback port, serving the files under root."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
    argv = ["nginx", "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")]
    probe = root / ".ready"
    probe.write_text("ok\n")
    return HttpChild("nginx", argv, tmp / "nginx.log", port, env=dict(os.environ), ready_path="/.ready")


class RssSampler:
    """Sample the RSS of some processes every `interval` seconds in a thread; keep the max."""

    def __init__(self, children: list[Child], interval: float = 0.05):
        self.children = children
        self.interval = interval
        self.start_rss = {c.name: c.rss() for c in children}
        self.max_rss = dict(self.start_rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for c in self.children:
                self.max_rss[c.name] = max(self.max_rss[c.name], c.rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
