"""Real makepkg builds by a real apbd-runner process on a tmp spool."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from apbd import spool as spool_format
from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import build_log, make_spool, publish, runner_state, trivial_pkgbuild, wait_for
from tests.support.servers import Runner


def package_members(path) -> list[str]:
    result = subprocess.run(["bsdtar", "-tf", str(path)], capture_output=True, check=True)
    return result.stdout.decode().split()


def test_package_built_end_to_end(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        build_id = publish(spool, trivial_pkgbuild("apbd-hello"))
        status = wait_for(spool, build_id)
    finally:
        runner.stop()

    job = spool.job_dir(build_id)
    assert status["status"] == "completed", build_log(spool, build_id)
    assert status["exit_code"] == 0
    assert status["builder"] == "makepkg"
    assert status["clean_chroot"] is False
    assert status["runner_id"].endswith(f"-{runner.pid}")
    assert status["duration"] > 0
    assert os.listdir(job / "packages") == ["apbd-hello-1.0-1-any.pkg.tar.zst"]
    members = package_members(job / "packages" / "apbd-hello-1.0-1-any.pkg.tar.zst")
    assert ".PKGINFO" in members
    assert "usr/share/apbd-hello/hello.txt" in members
    assert not (job / "work").exists()
    assert (job / "src" / "PKGBUILD").is_file()
    assert not (job / "claimed").exists()
    assert not (job / "queued").exists()


def test_log_opens_with_builder_lines(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        build_id = publish(spool, trivial_pkgbuild("apbd-logged"))
        wait_for(spool, build_id)
    finally:
        runner.stop()
    lines = build_log(spool, build_id).splitlines()
    assert lines[0] == "==> apbd: builder: makepkg (devtools/makechrootpkg is not used on this server)"
    assert lines[1].startswith("==> apbd: WARNING: no clean chroot: ")
    assert lines[2].startswith("==> apbd: sandbox: bubblewrap")
    assert "==> Finished making: apbd-logged 1.0-1" in lines[-3]
    assert lines[-1].startswith("==> apbd: Build completed in ")


SPLIT_PKGBUILD = """pkgbase=apbd-split
pkgname=(apbd-split-tool apbd-split-data)
pkgver=2.0
pkgrel=3
epoch=1
arch=(x86_64 aarch64 powerpc64le)
license=(MIT)
build() {
  printf 'int main(void) { return 0; }\\n' > tool.c
  cc $CFLAGS -g -o tool tool.c
}
package_apbd-split-tool() {
  install -Dm755 tool "$pkgdir/usr/bin/apbd-split-tool"
}
package_apbd-split-data() {
  arch=(any)
  mkdir -p "$pkgdir/usr/share/apbd-split"
  echo data > "$pkgdir/usr/share/apbd-split/data.txt"
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this host for the debug package")
def test_split_epoch_and_debug_packages(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        build_id = publish(spool, SPLIT_PKGBUILD, {"tool.c": ""})
        status = wait_for(spool, build_id)
    finally:
        runner.stop()
    assert status["status"] == "completed", build_log(spool, build_id)
    machine = runner_arch = runner_state_arch(status)
    names = sorted(os.listdir(spool.job_dir(build_id) / "packages"))
    assert names == sorted([
        f"apbd-split-tool-1:2.0-3-{machine}.pkg.tar.zst",
        f"apbd-split-debug-1:2.0-3-{machine}.pkg.tar.zst",
        "apbd-split-data-1:2.0-3-any.pkg.tar.zst",
    ])
    assert runner_arch == machine


def runner_state_arch(status: dict) -> str:
    # makepkg names packages with CARCH from the host's makepkg.conf.
    result = subprocess.run(["bash", "-c", "source /etc/makepkg.conf; echo $CARCH"], capture_output=True)
    return result.stdout.decode().strip()


def test_failed_build_reports_exit_status(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        build_id = publish(spool, trivial_pkgbuild("apbd-broken", "build() { echo about to fail; false; }"))
        status = wait_for(spool, build_id)
    finally:
        runner.stop()
    assert status["status"] == "failed"
    assert status["exit_code"] == 4
    assert status["reason"] == "makepkg exited with status 4"
    assert os.listdir(spool.job_dir(build_id) / "packages") == []
    text = build_log(spool, build_id)
    assert "about to fail" in text
    assert "==> apbd: makepkg exited with status 4" in text
    assert not (spool.job_dir(build_id) / "work").exists()


def test_fifo_by_created_at(build_tmp):
    spool = make_spool(build_tmp)
    ids = [publish(spool, trivial_pkgbuild(f"apbd-fifo-{n}")) for n in range(3)]
    # Give the last published job the oldest request time: it must build first.
    for build_id, created in zip(ids, [300.0, 200.0, 100.0]):
        path = spool.job_dir(build_id) / "request.json"
        request = spool.read_request(build_id)
        request["created_at"] = created
        spool_format.write_json_atomic(path, request)
    runner = Runner(spool.root, build_tmp, ["--max-concurrent", "1"])
    try:
        statuses = {i: wait_for(spool, i) for i in ids}
    finally:
        runner.stop()
    order = sorted(ids, key=lambda i: statuses[i]["start_time"])
    assert order == list(reversed(ids))
    for build_id in ids:
        assert statuses[build_id]["status"] == "completed"


def test_max_concurrent_respected(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp, ["--max-concurrent", "2"])
    try:
        ids = [publish(spool, trivial_pkgbuild(f"apbd-slow-{n}", "build() { sleep 3; }")) for n in range(4)]
        most_claimed, most_listed = 0, 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            claimed = sum((spool.job_dir(i) / "claimed").exists() for i in ids)
            listed = len(runner_state(spool)[0]["running"])
            most_claimed = max(most_claimed, claimed)
            most_listed = max(most_listed, listed)
            if all((spool.read_status(i) or {}).get("status") == "completed" for i in ids):
                break
            time.sleep(0.05)
        statuses = [wait_for(spool, i) for i in ids]
    finally:
        runner.stop()
    assert most_claimed == 2
    assert most_listed == 2
    assert [s["status"] for s in statuses] == ["completed"] * 4
