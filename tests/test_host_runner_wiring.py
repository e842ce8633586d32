"""The host steps inside real runner builds: PGP keys for signed sources, and buildroot recreation."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from apbd import gpgkeys
from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import build_log, make_spool, publish, runner_state, trivial_pkgbuild, wait_for
from tests.support.servers import Runner

DOUBLES = Path(__file__).resolve().parent / "doubles"

# Records its argv to $APBD_DOUBLE_LOG and makes the chroot folder, as mkarchroot would.
MKARCHROOT_DOUBLE = """#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["APBD_DOUBLE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
while args[0].startswith("-"):
    args = args[2:]
os.makedirs(os.path.join(args[0], "etc"))
"""


def signed_sources(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Return a fingerprint and the files of an upload whose source is signed by it."""
    home = tmp_path / "signer"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--no-tty"]
    try:
        subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", "apbd runner test <t@example.invalid>",
                        "ed25519", "sign", "never"], check=True, capture_output=True, timeout=120)
        listed = subprocess.run([*gpg, "--list-keys", "--with-colons"], check=True, capture_output=True,
                                text=True, timeout=60).stdout
        fpr = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
        data = tmp_path / "data.txt"
        data.write_text("signed data\n")
        signature = subprocess.run([*gpg, "--armor", "--local-user", fpr, "--detach-sign", "-o", "-", str(data)],
                                   check=True, capture_output=True, text=True, timeout=60).stdout
        public = subprocess.run([*gpg, "--armor", "--export", fpr], check=True, capture_output=True, text=True,
                                timeout=60).stdout
    finally:
        gpgkeys.stop_gpg_daemons(home)
    return fpr, {"data.txt": "signed data\n", "data.txt.asc": signature, f"keys/pgp/{fpr}.asc": public}


def signed_pkgbuild(name: str, fpr: str) -> str:
    return (f"pkgname={name}\npkgver=1\npkgrel=1\narch=(any)\nlicense=(MIT)\n"
            "source=(data.txt data.txt.asc)\nsha256sums=(SKIP SKIP)\n"
            f"validpgpkeys=({fpr})\n"
            f"package() {{ install -Dm644 data.txt \"$pkgdir/usr/share/{name}/data.txt\"; }}\n")


def test_signed_source_builds_with_shipped_key(build_tmp):
    fpr, files = signed_sources(build_tmp)
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp, ["--builder", "makepkg"])
    try:
        good = publish(spool, signed_pkgbuild("signed-ok", fpr), files)
        # The shipped key is found, so nothing is fetched; the altered file must fail the check.
        tampered = publish(spool, signed_pkgbuild("signed-tampered", fpr), {**files, "data.txt": "altered\n"})
        good_status = wait_for(spool, good)
        tampered_status = wait_for(spool, tampered)
    finally:
        runner.stop()
    assert good_status["status"] == "completed", build_log(spool, good)
    assert "    data.txt ... Passed" in build_log(spool, good)
    assert tampered_status["status"] == "failed"
    assert "    data.txt ... FAILED" in build_log(spool, tampered)


def test_runner_recreates_buildroot(build_tmp):
    spool = make_spool(build_tmp)
    bin_dir = build_tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "mkarchroot").write_text(MKARCHROOT_DOUBLE)
    (bin_dir / "mkarchroot").chmod(0o755)
    calls = build_tmp / "mkarchroot.jsonl"
    buildroot = build_tmp / "buildroot"
    runner = Runner(spool.root, build_tmp, ["--builder", "makechrootpkg", "--buildroot", str(buildroot),
                                           "--buildroot-autorecreate", "2", "--max-concurrent", "1"],
                    env={"PATH": f"{bin_dir}{os.pathsep}{DOUBLES}{os.pathsep}{os.environ['PATH']}",
                         "APBD_DOUBLE_LOG": str(calls)})
    try:
        first = [json.loads(line) for line in calls.read_text().splitlines()]
        ids = [publish(spool, trivial_pkgbuild(f"chroot-{i}")) for i in range(3)]
        statuses = [wait_for(spool, build_id) for build_id in ids]
        state = runner_state(spool)[0]
    finally:
        runner.stop()
    assert first == [["-C", "/etc/pacman.conf", "-M", "/etc/makepkg.conf", str(buildroot / "root"),
                      "base-devel", "ccache"]]
    assert [s["status"] for s in statuses] == ["completed"] * 3
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert recorded[1:] == [["-C", "/etc/pacman.conf", "-M", "/etc/makepkg.conf",
                             str(build_tmp / "buildroot.new" / "root"), "base-devel", "ccache"]]
    assert "recreating the buildroot" in build_log(spool, ids[2])
    assert state["buildroot_recreation_count"] == 0
    assert state["server_busy_with_buildroot"] is False
