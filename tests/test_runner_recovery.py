"""A runner killed with SIGKILL mid-build: the next runner fails the build exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from apbd import spool as spool_format
from apbd.runner import recovery
from apbd.runner.process import BUILD_ID_ENV, tagged_processes
from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import build_log, make_spool, publish, publish_raw, trivial_pkgbuild, wait_for
from tests.support.servers import Runner

REASON_START = "The runner stopped during the build (runner "


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


def test_killed_runner_build_failed_once(build_tmp):
    spool = make_spool(build_tmp)
    first = Runner(spool.root, build_tmp)
    build_id = publish(spool, trivial_pkgbuild("apbd-orphan", "build() { setsid sleep 1000 & echo started; sleep 1000; }"))
    wait_for_log(spool, build_id, "started")
    procs = tagged_processes(build_id)
    assert procs
    dead_runner = spool.read_status(build_id)["runner_id"]

    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    first.stop()
    assert spool.read_status(build_id)["status"] == "building"

    assert (spool.runners / f"{dead_runner}.json").exists()
    second = Runner(spool.root, build_tmp)
    try:
        status = wait_for(spool, build_id, timeout=60)
        state_files = sorted(p.name for p in spool.runners.iterdir())
    finally:
        second.stop()
    third = Runner(spool.root, build_tmp)
    third.stop()

    assert state_files == [f"{status['runner_id'].rsplit('-', 1)[0]}-{second.pid}.json"]
    assert status["status"] == "failed"
    assert status["reason"] == f"{REASON_START}{dead_runner} died)"
    assert status["duration"] == round(status["end_time"] - status["start_time"], 3)
    assert spool.read_status(build_id) == status
    assert build_log(spool, build_id).count(REASON_START) == 1
    assert not (spool.job_dir(build_id) / "claimed").exists()
    for proc in procs:
        assert not (proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    assert tagged_processes(build_id) == []


def test_recovery_kills_leftover_outside_sandbox(build_tmp):
    """A build process that called setsid outside bwrap is found by its APBD_BUILD_ID tag."""
    spool = make_spool(build_tmp)
    build_id = publish_raw(spool, "apbd-leftover")
    claim = spool.claim(build_id)
    env = dict(os.environ, **{BUILD_ID_ENV: build_id})
    leader = subprocess.Popen(["setsid", "sleep", "1000"], env=env, start_new_session=True)
    spool.update_status(claim, status="building", runner_id="gone-1", build_pid=leader.pid,
                        build_pgid=leader.pid, build_started=psutil.Process(leader.pid).create_time())
    # A stray process of the same build that left the group, as setsid does.
    stray = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(1000)"], env=env)
    claim.release()

    assert recovery.recover_orphan(spool, build_id, "test-runner", scale=0.1)
    assert not recovery.recover_orphan(spool, build_id, "test-runner", scale=0.1)
    leader.wait(timeout=5)
    stray.wait(timeout=5)

    status = spool.read_status(build_id)
    assert status["status"] == "failed"
    assert status["reason"] == "The runner stopped during the build (runner gone-1 died)"
    text = build_log(spool, build_id)
    assert "Killed processes left by the stopped runner" in text
    assert str(stray.pid) in text
    assert text.count(REASON_START) == 1
    assert not (spool.job_dir(build_id) / spool_format.CLAIMED_MARKER).exists()


def test_live_claim_not_recovered(build_tmp):
    spool = make_spool(build_tmp)
    build_id = publish_raw(spool, "apbd-alive")
    claim = spool.claim(build_id)
    try:
        assert not recovery.recover_orphan(spool, build_id, "test-runner")
        assert spool.read_status(build_id)["status"] == "queued"
    finally:
        claim.release()
