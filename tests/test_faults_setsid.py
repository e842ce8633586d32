"""A build that starts a child in a new session (setsid) cannot leave it running.

The child renames itself (exec -a MARKER) so the test can find it from the
host, and in one case also drops its environment (env -i), so a runner that
finds build processes only by an environment tag would miss it.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.hostile import good_tarball, new_id, pkgbuild_with, regular, submit
from tests.support.servers import Runner, wait_for_status
from tests.test_faults_runner import TIME_SCALE, build_processes, wait_log, wait_no_processes

# Each child prints "child-alive MARKER" into the build's output before it becomes MARKER.
FORKS = {
    "setsid": "setsid -f bash -c 'echo child-alive {m}; exec -a {m} sleep 600'",
    "setsid-env-cleared": "env -i /usr/bin/setsid -f /bin/bash -c 'echo child-alive {m}; exec -a {m} sleep 600'",
    "double-fork-nohup": "( nohup bash -c 'echo child-alive {m}; exec -a {m} sleep 600' 2>&1 & ) ; sleep 1",
}


# The plain setsid case runs in every quick run; the variants are marked slow.
FORK_CASES = [pytest.param(name, marks=() if name == "setsid" else pytest.mark.slow) for name in sorted(FORKS)]


def wait_marker_alive(marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if build_processes("-", marker):
            return
        time.sleep(0.1)
    raise AssertionError(f"the build never started its child {marker}")


@pytest.mark.parametrize("fork", FORK_CASES)
def test_setsid_child_killed_at_end(web_server, spool, tmp_path, fork):
    marker = f"hostile-orphan-{new_id()[:8]}"
    body = f"{FORKS[fork].format(m=marker)}\n  echo 'forked {marker}'"
    runner = Runner(spool.root, tmp_path, env=TIME_SCALE)
    try:
        build_id = new_id()
        answer = submit(web_server.url, good_tarball(pkgbuild=pkgbuild_with(body)), build_id)
        assert answer.status_code == 200, answer.text
        status = wait_for_status(web_server.url, build_id, timeout=120)
        assert status["status"] in ("completed", "failed"), status
        wait_log(spool, build_id, f"child-alive {marker}".encode(), timeout=5)
        wait_no_processes(build_id, marker, timeout=15)
    finally:
        runner.stop()


@pytest.mark.parametrize("fork", FORK_CASES)
def test_setsid_child_killed_on_cancel(web_server, spool, tmp_path, fork):
    marker = f"hostile-orphan-{new_id()[:8]}"
    body = f"{FORKS[fork].format(m=marker)}\n  echo 'forked {marker}'\n  sleep 600"
    runner = Runner(spool.root, tmp_path, env=TIME_SCALE)
    try:
        build_id = new_id()
        answer = submit(web_server.url, good_tarball(pkgbuild=pkgbuild_with(body)), build_id)
        assert answer.status_code == 200, answer.text
        wait_log(spool, build_id, f"forked {marker}".encode())
        wait_marker_alive(marker)
        cancel = requests.post(f"{web_server.url}/build/{build_id}/cancel", timeout=10)
        assert cancel.status_code == 200, cancel.text
        status = wait_for_status(web_server.url, build_id, timeout=60)
        assert status["status"] == "cancelled", status
        wait_no_processes(build_id, marker, timeout=15)
    finally:
        runner.stop()
