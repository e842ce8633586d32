"""A full disk during an upload and during a build: clear errors, a consistent spool, recovery.

The spool lives on a size-limited tmpfs mounted for the test (the tests run
as root), so "disk full" is real ENOSPC from the kernel. Growing the mount
with `mount -o remount,size=` is "space returns".
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from apbd.spool import Spool
from tests.support.hostile import error_shape, good_tarball, new_id, regular, submit
from tests.support.servers import Runner, WebServer, make_reachable, wait_for_status
from tests.test_faults_runner import TIME_SCALE

# apbd-web keeps 64 MiB free after an upload, so the small disk must be larger than that.
SMALL = "100m"
LARGE = "600m"
DISK_FULL_STATUSES = (413, 503, 507)  # 503 is what apbd-web sends; 507 would also be honest


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of SMALL size at tmp_path/disk, unmounted after the test."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL},mode=0755", "tmpfs", str(mount_point)],
                   check=True)
    make_reachable(mount_point)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def grow(mount_point: Path) -> None:
    subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(mount_point)], check=True)


def assert_spool_consistent(spool: Spool) -> None:
    """Every job has readable JSON files and exactly one state marker or a final state."""
    for build_id in spool.job_ids():
        job = spool.job_dir(build_id)
        status = json.loads((job / "status.json").read_text())
        json.loads((job / "request.json").read_text())
        markers = [m for m in ("queued", "claimed") if (job / m).exists()]
        if status["status"] in ("completed", "failed", "cancelled"):
            assert markers == [], (build_id, status["status"], markers)
        else:
            assert len(markers) == 1, (build_id, status["status"], markers)
    leftovers = [p for p in spool.root.rglob("*.tmp")]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_upload_disk_full(small_disk):
    spool = Spool(small_disk / "spool")
    spool.create()
    server = WebServer(spool.root, small_disk.parent)
    try:
        # 150 MB of zeros compress to about 150 KiB: the upload fits, its extraction does not.
        build_id = new_id()
        tarball = good_tarball([regular("zeros.bin", b"\0" * (90 * 1024 * 1024)),
                                regular("zeros2.bin", b"\0" * (60 * 1024 * 1024))])
        answer = submit(server.url, tarball, build_id)
        assert answer.status_code in DISK_FULL_STATUSES, (answer.status_code, answer.text[:300])
        body = error_shape(answer)
        assert "space" in (body["error"] + body["detail"]).lower(), body
        assert not (spool.jobs / build_id).exists()
        assert os.listdir(spool.staging) == []
        assert_spool_consistent(spool)

        # A body larger than the free space, which waitress buffers before apbd sees it.
        big_id = new_id()
        try:
            big = submit(server.url, b"\0" * (120 * 1024 * 1024), big_id)
        except requests.ConnectionError as e:
            pytest.fail(f"a body larger than the free disk space got no answer: {e}")
        assert big.status_code in DISK_FULL_STATUSES, (big.status_code, big.text[:300])
        error_shape(big)
        assert not (spool.jobs / big_id).exists()
        assert os.listdir(spool.staging) == []

        grow(small_disk)
        answer = submit(server.url, tarball, build_id)
        assert answer.status_code == 200, answer.text
        assert (spool.jobs / build_id / "src" / "zeros.bin").stat().st_size == 90 * 1024 * 1024
        assert_spool_consistent(spool)
    finally:
        server.stop()


@pytest.mark.slow
def test_build_disk_full(small_disk):
    spool = Spool(small_disk / "spool")
    spool.create()
    server = WebServer(spool.root, small_disk.parent)
    runner = None
    try:
        runner = Runner(spool.root, small_disk.parent, env=TIME_SCALE)
        pkgbuild = (b"pkgname=hostile-fill\npkgver=1.0\npkgrel=1\narch=(any)\nlicense=(MIT)\n"
                    b"package() {\n  mkdir -p \"$pkgdir/usr/share/fill\"\n"
                    b"  head -c 150000000 /dev/zero > \"$pkgdir/usr/share/fill/zeros\"\n}\n")
        build_id = new_id()
        answer = submit(server.url, good_tarball(pkgbuild=pkgbuild), build_id)
        assert answer.status_code == 200, answer.text
        status = wait_for_status(server.url, build_id, timeout=120)
        assert status["status"] == "failed", status
        full = spool.read_status(build_id)
        assert full.get("reason"), full
        assert not (spool.jobs / build_id / "claimed").exists()
        assert_spool_consistent(spool)
        assert runner.alive(), "apbd-runner died when the disk filled up"
        log_text = requests.get(f"{server.url}/build/{build_id}/download/build.log", timeout=10).text
        assert "No space left on device" in log_text or "space" in full["reason"].lower(), log_text[-2000:]

        # Space returns: the same runner builds the same package.
        grow(small_disk)
        again = new_id()
        answer = submit(server.url, good_tarball(pkgbuild=pkgbuild), again)
        assert answer.status_code == 200, answer.text
        status = wait_for_status(server.url, again, timeout=180)
        assert status["status"] == "completed", status
        assert len(status["packages"]) >= 1
        assert_spool_consistent(spool)
    finally:
        if runner is not None:
            runner.stop()
        server.stop()


@pytest.mark.slow
def test_full_disk_keeps_serving(small_disk):
    """With the spool's disk at 100 %, reads still work and status.json stays whole."""
    spool = Spool(small_disk / "spool")
    spool.create()
    server = WebServer(spool.root, small_disk.parent)
    try:
        build_id = new_id()
        answer = submit(server.url, good_tarball(), build_id)
        assert answer.status_code == 200, answer.text
        filler = small_disk / "filler"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * (1024 * 1024))
            except OSError:
                pass
        for path in ("/", f"/build/{build_id}/status-api", "/builds/latest", "/health",
                     f"/build/{build_id}/output"):
            reply = requests.get(server.url + path, headers={"Accept": "application/json"}, timeout=10)
            if path == "/health":
                # The API answers a critical check (the disk above 95 %) with status "error" and HTTP 500.
                assert reply.status_code == 500, reply.text[:300]
                assert reply.json()["status"] == "error"
                assert reply.json()["checks"]["disk"]["status"] == "error"
                continue
            assert reply.status_code == 200, (path, reply.status_code, reply.text[:200])
        cancel = requests.post(f"{server.url}/build/{build_id}/cancel", timeout=10)
        assert cancel.status_code in (200, 503, 507), cancel.text
        if cancel.status_code != 200:
            error_shape(cancel)
        assert_spool_consistent(spool)
        filler.unlink()
        cancel = requests.post(f"{server.url}/build/{build_id}/cancel", timeout=10)
        assert cancel.status_code == 200, cancel.text
        deadline = time.monotonic() + 10
        while spool.read_status(build_id)["status"] != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spool.read_status(build_id)["status"] == "cancelled"
        assert_spool_consistent(spool)
    finally:
        server.stop()
