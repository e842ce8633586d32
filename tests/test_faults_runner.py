"""kill -9 of apbd-runner at each stage of a build: after a restart every job is in one definite state.

A runner killed with SIGKILL leaves exactly what these tests leave or cause:
a `claimed` marker whose flock nobody holds, status.json as last written, and
possibly build processes and a half-written package in work/. The next runner
must fail such a job once, end its processes, and publish no partial package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from apbd import spool as spool_format
from apbd.spool import Spool, write_json_atomic
from tests.support.hostile import PKGBUILD, new_id, pkgbuild_with
from tests.support.servers import Runner

TERMINAL = ("completed", "failed", "cancelled")
TIME_SCALE = {"APBD_TEST_TIME_SCALE": "0.1"}


def publish_job(spool: Spool, pkgbuild: bytes = PKGBUILD, build_id: str | None = None) -> str:
    """Publish a queued job the way apbd-web does, with the metadata written by hand."""
    build_id = build_id or new_id()
    staging = spool.make_staging_dir(build_id)
    (staging / "src").mkdir()
    (staging / "src" / "PKGBUILD").write_bytes(pkgbuild)
    now = time.time()
    request = {"build_id": build_id, "created_at": now, "sha256": "0" * 64, "source": "tarball",
               "remote_addr": "127.0.0.1", "build_timeout": 7200, "extra_repos": []}
    status = {"build_id": build_id, "status": "queued", "created_at": now, "pkgname": "hostile-probe",
              "pkgbase": "hostile-probe", "pkgnames": ["hostile-probe"], "pkgver": "1.0", "pkgrel": "1",
              "version": "1.0-1", "arch": ["any"], "build_timeout": 7200, "output_timeout": 1800,
              "source": "tarball", "extra_repos": [], "validpgpkeys": []}
    assert spool.publish(staging, request, status)
    return build_id


def orphan(spool: Spool, build_id: str, **status_fields) -> Path:
    """Leave build_id as a runner killed after claiming it leaves it: claimed, lock free."""
    job = spool.job_dir(build_id)
    os.rename(job / "queued", job / "claimed")
    if status_fields:
        status = json.loads((job / "status.json").read_text())
        status.update(status_fields)
        write_json_atomic(job / "status.json", status)
    return job


def wait_status(spool: Spool, build_id: str, states=TERMINAL, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = spool.read_status(build_id)
        if status and status.get("status") in states and not (spool.job_dir(build_id) / "claimed").exists():
            return status
        time.sleep(0.1)
    raise AssertionError(f"build {build_id} did not reach {states} in {timeout} s: {status}")


def wait_log(spool: Spool, build_id: str, text: bytes, timeout: float = 120) -> None:
    path = spool.job_dir(build_id) / "build.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_bytes():
            return
        time.sleep(0.02)
    tail = path.read_bytes()[-2000:] if path.exists() else b"(no build.log)"
    raise AssertionError(f"{text!r} never appeared in build.log:\n{tail.decode(errors='replace')}")


def build_processes(build_id: str, marker: str | None = None) -> list[psutil.Process]:
    """Return live processes tagged with build_id or carrying marker in their command line."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("APBD_BUILD_ID") == build_id:
                found.append(proc)
            elif marker and marker in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def wait_no_processes(build_id: str, marker: str | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    left = build_processes(build_id, marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = build_processes(build_id, marker)
    assert left == [], [(p.pid, p.cmdline()) for p in left]


def kill_runner(runner: Runner) -> None:
    os.kill(runner.pid, signal.SIGKILL)
    runner.proc.wait(timeout=10)


def assert_definite(spool: Spool, build_id: str, status: dict) -> None:
    """One terminal state, no markers, a free lock, no work/ and only whole packages."""
    job = spool.job_dir(build_id)
    assert status["status"] in TERMINAL
    assert not (job / "claimed").exists()
    assert not (job / "queued").exists()
    claim = spool.lock_orphan(build_id)
    assert claim is None  # nothing claimed is left to take over
    assert not (job / "work").exists(), os.listdir(job / "work")
    for package in (job / "packages").glob("*") if (job / "packages").exists() else []:
        check = subprocess.run(["bsdtar", "-tf", str(package)], capture_output=True)
        assert check.returncode == 0, f"half-written package published: {package.name}: {check.stderr[:200]}"
    history = (spool.history / "builds.log").read_text()
    assert history.count(build_id) == 1


def assert_stays(spool: Spool, tmp_path: Path, build_id: str, status: dict) -> None:
    """Another runner start changes nothing about a finished job."""
    log_before = (spool.job_dir(build_id) / "build.log").read_bytes()
    again = Runner(spool.root, tmp_path, env=TIME_SCALE)
    try:
        time.sleep(3)
        assert spool.read_status(build_id) == status
        assert (spool.job_dir(build_id) / "build.log").read_bytes() == log_before
    finally:
        again.stop()


def test_kill_after_claim(spool, tmp_path):
    build_id = publish_job(spool)
    orphan(spool, build_id)
    runner = Runner(spool.root, tmp_path, env=TIME_SCALE)
    try:
        status = wait_status(spool, build_id)
    finally:
        runner.stop()
    assert status["status"] == "failed", status
    assert "runner" in status["reason"], status
    assert_definite(spool, build_id, status)
    assert_stays(spool, tmp_path, build_id, status)


def test_kill_while_building(spool, tmp_path):
    marker = f"hostile-sleep-{new_id()[:8]}"
    pkgbuild = pkgbuild_with(f'echo "build started {marker}"\n  exec -a {marker} sleep 300')
    runner = Runner(spool.root, tmp_path, env=TIME_SCALE)
    build_id = publish_job(spool, pkgbuild)
    try:
        wait_log(spool, build_id, f"build started {marker}".encode())
        assert spool.read_status(build_id)["status"] == "building"
    finally:
        kill_runner(runner)

    restarted = Runner(spool.root, tmp_path, env=TIME_SCALE)
    try:
        status = wait_status(spool, build_id, timeout=60)
        wait_no_processes(build_id, marker)
    finally:
        restarted.stop()
    assert status["status"] == "failed", status
    assert "runner" in status["reason"], status
    assert "died" in status["reason"], status
    log_text = (spool.job_dir(build_id) / "build.log").read_text(errors="replace")
    assert log_text.count(status["reason"]) == 1
    assert list((spool.job_dir(build_id) / "packages").glob("*")) == []
    assert_definite(spool, build_id, status)
    assert_stays(spool, tmp_path, build_id, status)


@pytest.mark.slow
def test_kill_while_packaging(spool, tmp_path):
    """Kill the runner while makepkg compresses a large package into work/."""
    marker = f"hostile-pack-{new_id()[:8]}"
    pkgbuild = (f"pkgname=hostile-probe\npkgver=1.0\npkgrel=1\narch=(any)\nlicense=(MIT)\n"
                f"package() {{\n  echo 'packaging {marker}'\n  mkdir -p \"$pkgdir/usr/share/big\"\n"
                f"  head -c 150000000 /dev/urandom > \"$pkgdir/usr/share/big/noise\"\n}}\n").encode()
    runner = Runner(spool.root, tmp_path, env=TIME_SCALE)
    build_id = publish_job(spool, pkgbuild)
    try:
        wait_log(spool, build_id, b"Creating package")
        time.sleep(0.3)
    finally:
        kill_runner(runner)
    job = spool.job_dir(build_id)
    assert not (job / "packages").exists() or list((job / "packages").glob("*.pkg.tar*")) == [], \
        "the package was published before the build finished"

    restarted = Runner(spool.root, tmp_path, env=TIME_SCALE)
    try:
        status = wait_status(spool, build_id, timeout=90)
        wait_no_processes(build_id, marker)
    finally:
        restarted.stop()
    assert status["status"] == "failed", status
    assert list((job / "packages").glob("*")) == []
    assert_definite(spool, build_id, status)


def test_orphan_with_partial_package(spool, tmp_path):
    """A runner died while packages were being collected: half-written files stay unpublished."""
    build_id = publish_job(spool)
    job = orphan(spool, build_id, status="building", runner_id="deadhost-4194399", start_time=time.time(),
                 build_pid=4194399, build_pgid=4194399)
    pkgdest = job / "work" / "pkgdest"
    pkgdest.mkdir(parents=True)
    (pkgdest / "hostile-probe-1.0-1-any.pkg.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd truncated")
    runner = Runner(spool.root, tmp_path, env=TIME_SCALE)
    try:
        status = wait_status(spool, build_id)
    finally:
        runner.stop()
    assert status["status"] == "failed"
    assert "deadhost-4194399" in status["reason"], status
    assert not (job / "packages").exists() or list((job / "packages").iterdir()) == []
    assert_definite(spool, build_id, status)


def test_two_runners_recover_once(spool, tmp_path):
    """Two runners starting at once over the same orphans fail each exactly once."""
    ids = [publish_job(spool) for _ in range(4)]
    for build_id in ids:
        orphan(spool, build_id, status="building", runner_id="deadhost-1", start_time=time.time())
    first = Runner(spool.root, tmp_path, env=TIME_SCALE)
    second = Runner(spool.root, tmp_path, env=TIME_SCALE)
    try:
        statuses = [wait_status(spool, build_id) for build_id in ids]
        time.sleep(2)
    finally:
        first.stop()
        second.stop()
    for build_id, status in zip(ids, statuses):
        assert status["status"] == "failed"
        log_text = (spool.job_dir(build_id) / "build.log").read_text()
        assert log_text.count("The runner stopped during the build") == 1, log_text
        assert_definite(spool, build_id, status)
