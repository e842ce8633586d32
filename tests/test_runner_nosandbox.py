"""makepkg without bubblewrap, as on hosts where user namespaces are off.

The runner runs in-process here with a MakepkgBuilder told that bwrap does not
work, so the builds are real makepkg runs as the build user without a sandbox.
Without bwrap's PID namespace, a child that called setsid is found only by its
APBD_BUILD_ID tag, which this checks.
"""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from apbd import sandbox
from apbd.runner.builders import MakepkgBuilder
from apbd.runner.daemon import Runner
from apbd.runner.process import tagged_processes
from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import BUILD_USER, build_log, make_spool, publish, trivial_pkgbuild, wait_for


@pytest.fixture
def runner_without_sandbox(build_tmp):
    spool = make_spool(build_tmp)
    user = sandbox.resolve_build_user(BUILD_USER)
    builder = MakepkgBuilder(user, use_bwrap=False, locale_dir=sandbox.ensure_locale())
    stop = threading.Event()
    runner = Runner(spool, builder, architecture="x86_64", max_concurrent=2, build_timeout=7200,
                    build_user=BUILD_USER, stop_event=stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    yield spool, runner
    runner.stop()
    thread.join(timeout=60)
    assert not thread.is_alive()


def wait_for_log(spool, build_id, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = spool.job_dir(build_id) / "build.log"
        if path.exists() and text in path.read_text(errors="replace"):
            return
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


def test_build_without_sandbox(runner_without_sandbox):
    spool, runner = runner_without_sandbox
    build_id = publish(spool, trivial_pkgbuild("apbd-plain"))
    status = wait_for(spool, build_id)
    assert status["status"] == "completed", build_log(spool, build_id)
    assert os.listdir(spool.job_dir(build_id) / "packages") == ["apbd-plain-1.0-1-any.pkg.tar.zst"]
    lines = build_log(spool, build_id).splitlines()
    assert lines[1].startswith("==> apbd: WARNING: no clean chroot: ")
    assert lines[2].startswith("==> apbd: WARNING: no sandbox: bubblewrap does not work here")
    assert runner.builder.sandbox == "none"


def test_setsid_child_killed_by_tag(runner_without_sandbox):
    spool, _ = runner_without_sandbox
    build_id = publish(spool, trivial_pkgbuild(
        "apbd-escape", "build() { setsid sleep 1000 & echo started; sleep 1000; }"))
    wait_for_log(spool, build_id, "started")
    procs = sleepers_of(build_id)
    sessions = {os.getsid(p.pid) for p in procs if p.name() == "sleep"}
    assert len(sessions) == 2, "the setsid child should be in a session of its own"

    spool.request_cancel(build_id)
    status = wait_for(spool, build_id, timeout=30)
    assert status["status"] == "cancelled"
    for proc in procs:
        assert not (proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE), proc
    assert tagged_processes(build_id) == []


@pytest.mark.parametrize("redirect", ["", ">/dev/null 2>&1"], ids=["holding-pipe", "detached"])
def test_leftover_daemon_killed_after_success(runner_without_sandbox, redirect):
    spool, _ = runner_without_sandbox
    build_id = publish(spool, trivial_pkgbuild(
        "apbd-daemon", f"build() {{ setsid sleep 1000 {redirect} & echo forked; }}"))
    status = wait_for(spool, build_id, timeout=60)
    assert status["status"] == "completed", build_log(spool, build_id)
    assert tagged_processes(build_id) == []
    text = build_log(spool, build_id)
    if redirect:
        assert "==> apbd: Killed processes left behind by the build" in text
    else:
        assert "==> apbd: The build left 1 process(es) running; stopping them" in text
