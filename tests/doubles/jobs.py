"""Publish jobs into a test spool the way the web layer does, and wait for their end."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from apbd import intake, spool as spool_format
from apbd.spool import Spool
from tests.doubles.builduser import open_for_build_user, write_tree

BUILD_USER = "apbd-build"
TERMINAL = spool_format.TERMINAL_STATES

TRIVIAL_PKGBUILD = """pkgname={name}
pkgver=1.0
pkgrel=1
pkgdesc="apbd test package"
arch=(any)
license=(MIT)
{extra}
package() {{
  mkdir -p "$pkgdir/usr/share/{name}"
  echo hello > "$pkgdir/usr/share/{name}/hello.txt"
}}
"""


def trivial_pkgbuild(name: str = "apbd-hello", extra: str = "") -> str:
    return TRIVIAL_PKGBUILD.format(name=name, extra=extra)


def make_spool(tmp_path: Path) -> Spool:
    """Return a created spool under tmp_path that the build user can reach."""
    open_for_build_user(tmp_path)
    spool = Spool(tmp_path / "spool")
    spool.create()
    for folder in (spool.root, spool.jobs, spool.staging):
        os.chmod(folder, 0o755)
    return spool


def publish(spool: Spool, pkgbuild: str, files: dict[str, str] | None = None,
            build_timeout: int | None = None, extra_repos: list[dict] | None = None) -> str:
    """Publish a job through apbd.intake.create_job (real makepkg metadata); return its id."""
    build_id = spool_format.new_build_id()
    staging = spool.make_staging_dir(build_id)
    write_tree(staging / spool_format.SOURCES_DIR, {"PKGBUILD": pkgbuild, **(files or {})})
    intake.create_job(spool, staging, build_id=build_id, source="tarball", build_timeout=build_timeout,
                      extra_repos=extra_repos or [], sha256=build_id, remote_addr="127.0.0.1", build_user=BUILD_USER)
    return build_id


def publish_raw(spool: Spool, name: str, created_at: float | None = None) -> str:
    """Publish a job without reading its PKGBUILD (for the test-only builder); return its id."""
    build_id = spool_format.new_build_id()
    staging = spool.make_staging_dir(build_id)
    write_tree(staging / spool_format.SOURCES_DIR, {"PKGBUILD": trivial_pkgbuild(name)})
    created = time.time() if created_at is None else created_at
    request = {"build_id": build_id, "created_at": created, "sha256": build_id, "source": "tarball",
               "build_timeout": None, "extra_repos": []}
    status = {"build_id": build_id, "status": "queued", "created_at": created, "pkgname": name,
              "pkgbase": name, "pkgnames": [name]}
    assert spool.publish(staging, request, status)
    return build_id


def wait_for(spool: Spool, build_id: str, states=TERMINAL, timeout: float = 120.0) -> dict:
    """Poll status.json until the job reaches one of states; return the status."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = spool.read_status(build_id)
        if status and status.get("status") in states:
            return status
        time.sleep(0.05)
    raise TimeoutError(f"build {build_id} did not reach {states} within {timeout} s; status: {status}")


def build_log(spool: Spool, build_id: str) -> str:
    return (spool.job_dir(build_id) / spool_format.LOG_FILE).read_text(errors="replace")


def runner_state(spool: Spool) -> list[dict]:
    return [json.loads(p.read_text()) for p in spool.runners.glob("*.json")]
