"""Stopping builds: cancel while queued or running, the build timeout and the output timeout.

The timeout tests set APBD_TEST_TIME_SCALE for the runner: it multiplies every
timeout and the kill grace, so a 300 s build timeout (the smallest the API
allows) takes 6 s and a 60 s output timeout 3 s. The status and the log still
name the configured values.
"""

from __future__ import annotations

import os
import time

import psutil

from apbd.runner.process import tagged_processes
from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import build_log, make_spool, publish, trivial_pkgbuild, wait_for
from tests.support.servers import Runner


def wait_for_log(spool, build_id, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in build_log(spool, build_id):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in the log of {build_id}")


def sleepers_of(build_id: str, count: int = 2, timeout: float = 20.0) -> list[psutil.Process]:
    """Wait until the build runs count `sleep` processes; return all its tagged processes."""
    deadline = time.monotonic() + timeout
    while True:
        procs = tagged_processes(build_id)
        sleeping = []
        for proc in procs:
            try:
                if proc.name() == "sleep":
                    sleeping.append(proc)
            except psutil.Error:
                continue
        if len(sleeping) >= count or time.monotonic() > deadline:
            return procs
        time.sleep(0.05)


def assert_all_gone(procs: list[psutil.Process], build_id: str) -> None:
    for proc in procs:
        alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        assert not alive, f"process {proc.pid} of build {build_id} is still running"
    assert tagged_processes(build_id) == []


def test_cancel_queued_job(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp, ["--max-concurrent", "1"])
    try:
        busy = publish(spool, trivial_pkgbuild("apbd-busy", "build() { echo busy; sleep 1000; }"))
        wait_for_log(spool, busy, "busy")
        waiting = publish(spool, trivial_pkgbuild("apbd-waiting"))
        spool.request_cancel(waiting)
        status = wait_for(spool, waiting, timeout=30)
        spool.request_cancel(busy)
        wait_for(spool, busy, timeout=30)
    finally:
        runner.stop()
    assert status["status"] == "cancelled"
    assert status["reason"] == "Cancelled before the build started"
    assert "start_time" not in status
    assert "builder:" not in build_log(spool, waiting)


def test_cancel_running_kills_setsid_child(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        build_id = publish(spool, trivial_pkgbuild(
            "apbd-cancel", "build() { setsid sleep 1000 & echo started; sleep 1000; }"))
        wait_for_log(spool, build_id, "started")
        procs = sleepers_of(build_id)
        sessions = {p.pid: (p.name(), _sid(p)) for p in procs if p.is_running()}
        sleepers = [pid for pid, (name, _) in sessions.items() if name == "sleep"]
        assert len(sleepers) == 2, sessions
        assert len({sessions[pid][1] for pid in sleepers}) == 2, "the setsid child shares a session"

        started = time.monotonic()
        spool.request_cancel(build_id)
        status = wait_for(spool, build_id, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        runner.stop()
    assert status["status"] == "cancelled"
    assert status["reason"] == "Cancelled by request"
    assert elapsed < 5
    assert_all_gone(procs, build_id)
    assert "==> apbd: Stopping the build: Cancelled by request" in build_log(spool, build_id)


def _sid(proc: psutil.Process) -> int:
    return os.getsid(proc.pid)


def test_build_timeout(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp, env={"APBD_TEST_TIME_SCALE": "0.02"})
    try:
        build_id = publish(spool, trivial_pkgbuild(
            "apbd-endless", "build() { while true; do echo tick; sleep 0.3; done; }"), build_timeout=300)
        wait_for_log(spool, build_id, "tick")
        procs = tagged_processes(build_id)
        status = wait_for(spool, build_id, timeout=60)
    finally:
        runner.stop()
    assert status["status"] == "failed"
    assert status["reason"] == "Build timeout of 300 s exceeded"
    assert status["build_timeout"] == 300
    assert 5.5 < status["duration"] < 20
    assert_all_gone(procs, build_id)
    assert "==> apbd: Build timeout of 300 s exceeded" in build_log(spool, build_id)


def test_output_timeout(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp, env={"APBD_TEST_TIME_SCALE": "0.05"})
    try:
        build_id = publish(spool, trivial_pkgbuild(
            "apbd-silent", "apb_output_timeout=60\nbuild() { echo quiet-now; sleep 1000; }"))
        wait_for_log(spool, build_id, "quiet-now")
        procs = tagged_processes(build_id)
        status = wait_for(spool, build_id, timeout=60)
    finally:
        runner.stop()
    assert status["status"] == "failed"
    assert status["reason"] == "No output for 60 s"
    assert status["output_timeout"] == 60
    assert status["duration"] < 14
    assert_all_gone(procs, build_id)


def test_invalid_output_timeout_warned(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        build_id = publish(spool, trivial_pkgbuild("apbd-badtimeout", "apb_output_timeout=5"))
        status = wait_for(spool, build_id)
    finally:
        runner.stop()
    assert status["status"] == "completed"
    assert status["output_timeout"] == 1800
    assert "apb_output_timeout=5 is outside 60-86400 s" in build_log(spool, build_id)


def test_runner_shutdown_fails_running_build(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    build_id = publish(spool, trivial_pkgbuild("apbd-shutdown", "build() { echo running; sleep 1000; }"))
    wait_for_log(spool, build_id, "running")
    procs = tagged_processes(build_id)
    exit_status = runner.stop()

    status = spool.read_status(build_id)
    assert exit_status == 0
    assert status["status"] == "failed"
    assert status["reason"] == f"The runner stopped during the build (runner {status['runner_id']} was shut down)"
    assert not (spool.job_dir(build_id) / "claimed").exists()
    assert list(spool.runners.iterdir()) == []
    assert_all_gone(procs, build_id)
