"""GET /health against a real apbd-web and a real apbd-runner: the executor check follows the runner's life."""

import time

import requests

from apbd import health


def executor(url):
    return requests.get(url + "/health", timeout=10).json()["checks"]["executor"]


def test_executor_follows_real_runner(web_server, runner):
    check = executor(web_server.url)
    assert check["status"] == "ok", check
    assert check["runners"] == 1
    assert check["heartbeat_age_s"] < health.EXECUTOR_HEARTBEAT_MAX_AGE_S

    # A killed runner leaves its state file behind; only the heartbeat's age tells it is gone.
    runner.proc.kill()
    runner.proc.wait(timeout=10)
    assert runner.state() is not None
    deadline = time.monotonic() + health.EXECUTOR_HEARTBEAT_MAX_AGE_S + 10
    while time.monotonic() < deadline:
        check = executor(web_server.url)
        if check["status"] == "error":
            break
        time.sleep(0.5)
    assert check["status"] == "error", check
    assert "No runner heartbeat" in check["error"]
    body = requests.get(web_server.url + "/health", timeout=10).json()
    assert body["status"] == "degraded"
