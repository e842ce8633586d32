"""contrib/arch/PKGBUILD, built by apbd itself: a real apbd-web and apbd-runner build apbd's own package.

The upload holds the PKGBUILD and the source tarball it names, made from the
files git tracks in this checkout. CI needs the Debian packages python3-build,
python3-installer and python3-wheel (makepkg builds the wheel with them).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import apbd
from tests.support.packages import bsdtar_list, download, pkginfo, submit_tarball
from tests.support.servers import wait_for_status

REPO = Path(__file__).resolve().parents[1]
PKGBUILD = REPO / "contrib" / "arch" / "PKGBUILD"
BUILD_WAIT_S = 300


def pkgbuild_value(name: str) -> str:
    for line in PKGBUILD.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip("'\"")
    raise AssertionError(f"{name}= not in {PKGBUILD}")


def source_tarball(version: str) -> bytes:
    """Return apbd-VERSION.tar.gz of the tracked files, as `git archive --prefix` makes it."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in sorted(n for n in listed.stdout.decode().split("\0") if n):
            path = REPO / name
            if path.is_file():
                archive.add(path, arcname=f"apbd-{version}/{name}", recursive=False)
    return buffer.getvalue()


def upload_tarball(version: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(PKGBUILD, arcname="PKGBUILD")
        data = source_tarball(version)
        info = tarfile.TarInfo(f"apbd-{version}.tar.gz")
        info.size = len(data)
        info.mode = 0o644
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_pkgver_matches_package_version():
    assert pkgbuild_value("pkgver") == apbd.__version__


def test_apbd_builds_its_own_package(apbd_server, tmp_path):
    version = pkgbuild_value("pkgver")
    answer = submit_tarball(apbd_server.url, upload_tarball(version))
    assert answer.status_code == 200, answer.text
    status = wait_for_status(apbd_server.url, answer.json()["build_id"], timeout=BUILD_WAIT_S)
    log = download(apbd_server.url, {"filename": "build.log",
                                     "download_url": f"/build/{status['build_id']}/download/build.log"}, tmp_path)
    assert status["status"] == "completed", log.read_text(errors="replace")[-4000:]

    packages = [entry for entry in status["packages"] if entry["filename"].startswith("apbd-")]
    assert len(packages) == 1
    package = download(apbd_server.url, packages[0], tmp_path)
    info = pkginfo(package)
    assert info["pkgname"] == ["apbd"]
    assert info["pkgver"] == [f"{version}-1"]
    assert info["arch"] == ["any"]

    members = set(bsdtar_list(package))
    for expected in ("usr/lib/systemd/system/apbd-web.service",
                     "usr/lib/systemd/system/apbd-runner.service",
                     "usr/lib/sysusers.d/apbd.conf",
                     "usr/lib/tmpfiles.d/apbd.conf",
                     "etc/sudoers.d/apbd",
                     "usr/share/doc/apbd/nginx-apbd.conf",
                     "usr/bin/apbd-web",
                     "usr/bin/apbd-runner"):
        assert expected in members, expected
    modules = [m for m in members if m.endswith("/apbd/monitor.py")]
    assert len(modules) == 1
    templates = [m for m in members if "/share/apbd/www/templates/" in m]
    assert templates, "www/templates is missing from the package"
