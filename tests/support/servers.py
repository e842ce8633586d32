"""Start real apbd-web and apbd-runner processes on loopback for tests.

Each helper starts `python -m apbd.web` or `python -m apbd.runner` as a child
process in its own session, on a tmp spool, waits until it is ready, and stops
it by its PID (SIGTERM, then SIGKILL after a grace) when the test ends. The
process's output goes to a log file whose tail is shown when startup fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (bind port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def make_reachable(path: Path) -> None:
    """Let every user enter path and the folders above it that this process owns.

    The runner starts makepkg and bwrap as the build user, which must be able
    to reach the spool, but pytest makes its temporary folders private (mode
    0700). Only the search (x) bit is added, so nobody can list these folders.
    """
    path = Path(path).absolute()
    for folder in [path, *path.parents]:
        info = folder.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o011 != 0o011:
            folder.chmod(info.st_mode & 0o7777 | 0o011)


def child_env(extra: dict | None = None) -> dict:
    """Return the environment for a child: no inherited APB_* settings, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APB_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ChildProcess:
    """One apbd process started by a test, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT),
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail_start(self, why: str) -> None:
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {why}\n"
                           f"command: {' '.join(self.argv)}\n--- last output ---\n{self.log_tail()}")

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """Stop the process by PID: SIGTERM, then SIGKILL to its session after grace seconds."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                # The child leads its own process group (start_new_session), so
                # this reaches only what this test started.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace)
        self._log.close()
        return self.proc.returncode


class WebServer(ChildProcess):
    """A real apbd-web (waitress) process on a loopback port."""

    def __init__(self, spool_root: Path, log_dir: Path, extra_args: list[str] = (), env: dict | None = None):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        argv = [sys.executable, "-m", "apbd.web", "--host", LOOPBACK, "--port", str(self.port),
                "--builds-dir", str(spool_root), *extra_args]
        super().__init__("apbd-web", argv, log_dir / f"web-{self.port}.log", child_env(env))
        self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail_start(f"exited with status {self.proc.returncode}")
            try:
                answer = requests.get(self.url + "/", headers={"Accept": "application/json"}, timeout=5)
            except requests.ConnectionError:
                time.sleep(0.1)
                continue
            if answer.status_code == 200:
                return
            time.sleep(0.1)
        self.fail_start(f"GET / did not answer 200 within {timeout} s")


class Runner(ChildProcess):
    """A real apbd-runner process on a spool, ready once its state file appears."""

    def __init__(self, spool_root: Path, log_dir: Path, extra_args: list[str] = (), env: dict | None = None):
        self.spool_root = Path(spool_root)
        argv = [sys.executable, "-m", "apbd.runner", "--builds-dir", str(spool_root), *extra_args]
        log_path = log_dir / f"runner-{time.monotonic_ns()}.log"
        super().__init__("apbd-runner", argv, log_path, child_env(env))
        self.wait_ready()

    def state(self) -> dict | None:
        """Return this runner's state file (runners/HOSTNAME-PID.json), or None."""
        folder = self.spool_root / "runners"
        for path in folder.glob(f"*-{self.pid}.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if state.get("pid") == self.pid:
                return state
        return None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail_start(f"exited with status {self.proc.returncode}")
            if self.state() is not None:
                return
            time.sleep(0.1)
        self.fail_start(f"no runners/*-{self.pid}.json state file within {timeout} s")


TERMINAL = ("completed", "failed", "cancelled")


def wait_for_status(url: str, build_id: str, states=TERMINAL, timeout: float = 300.0) -> dict:
    """Poll status-api until the build reaches one of states; return that status object."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        answer = requests.get(f"{url}/build/{build_id}/status-api", timeout=10)
        if answer.status_code == 200:
            last = answer.json()
            if last.get("status") in states:
                return last
        time.sleep(0.25)
    raise TimeoutError(f"build {build_id} did not reach {states} within {timeout} s; last status: {last}")
