"""Build jobs for the benchmarks: PKGBUILDs, tarballs, publishing into a spool, waiting for the end.

Jobs are published with the Spool API exactly as the web layer publishes them
(write under tmp/, rename into jobs/), so the runner cannot tell them apart
from uploads. publish_job() also returns the moment of the publishing rename.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
from pathlib import Path

from apbd import spool as spool_module
from apbd.spool import Spool

# A line the PKGBUILD's top-level code prints with the wall-clock time it ran.
START_MARK = "BENCH-START"

PKGBUILD_TEMPLATE = """\
pkgname={name}
pkgver=1
pkgrel=1
pkgdesc='apbd benchmark package'
arch=(any)
license=(MIT)
{top_level}
build() {{
{build}
}}
package() {{
  mkdir -p "$pkgdir/usr/share/{name}"
  echo {name} > "$pkgdir/usr/share/{name}/README"
}}
"""


def pkgbuild(name: str, build: str = "  :", top_level: str = "") -> str:
    """Return a PKGBUILD of an arch=(any) package whose build() runs the shell lines `build`."""
    return PKGBUILD_TEMPLATE.format(name=name, build=build, top_level=top_level)


def stamped_pkgbuild(name: str, build: str = "  :", top_level_after: str = "") -> str:
    """Return a PKGBUILD whose top-level code first prints START_MARK and the time, in seconds."""
    return pkgbuild(name, build, top_level=f'echo "{START_MARK} $EPOCHREALTIME"\n{top_level_after}')


def write_sources(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "PKGBUILD").write_text(text)
    return folder


def tarball_bytes(text: str) -> bytes:
    """Return a .tar.gz holding only PKGBUILD with text."""
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("PKGBUILD")
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _RenameClock:
    """Stand-in for the os module inside apbd.spool that notes when os.rename returns."""

    def __init__(self):
        self.renamed_at: float | None = None

    def __getattr__(self, name):
        return getattr(os, name)

    def rename(self, src, dst):
        os.rename(src, dst)
        self.renamed_at = time.time()


@contextlib.contextmanager
def rename_clock():
    """Let apbd.spool's renames be timed while the block runs (in this process only)."""
    clock = _RenameClock()
    saved = spool_module.os
    spool_module.os = clock
    try:
        yield clock
    finally:
        spool_module.os = saved


def publish_job(spool: Spool, text: str, name: str, *, build_timeout: int = 3600) -> tuple[str, float]:
    """Publish a job building PKGBUILD text; return (build id, wall-clock time of the publishing rename)."""
    build_id = spool_module.new_build_id()
    staging = spool.make_staging_dir(build_id)
    write_sources(staging / spool_module.SOURCES_DIR, text)
    now = time.time()
    request = {"build_id": build_id, "created_at": now, "sha256": "0" * 64, "source": "tarball",
               "remote_addr": "127.0.0.1", "build_timeout": build_timeout, "extra_repos": []}
    status = {"build_id": build_id, "status": spool_module.QUEUED, "created_at": now,
              "pkgname": name, "pkgbase": name, "pkgnames": [name], "pkgver": "1", "pkgrel": "1",
              "version": "1-1", "arch": ["any"], "build_timeout": build_timeout,
              "output_timeout": 1800, "source": "tarball", "extra_repos": []}
    with rename_clock() as clock:
        if not spool.publish(staging, request, status):
            raise RuntimeError(f"build id {build_id} exists already")
    return build_id, clock.renamed_at


def wait_status(spool: Spool, build_id: str, states=spool_module.TERMINAL_STATES,
                timeout: float = 600.0, interval: float = 0.005) -> dict:
    """Poll the job's status.json until its status is one of states; return it."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = spool.read_status(build_id)
        if status and status.get("status") in states:
            return status
        time.sleep(interval)
    raise TimeoutError(f"build {build_id} did not reach {states} within {timeout} s (last: {status})")


def start_stamp(log_text: str) -> float | None:
    """Return the time in the first START_MARK line of a build log, or None."""
    for line in log_text.splitlines():
        if line.startswith(START_MARK + " "):
            return float(line.split()[1].replace(",", "."))
    return None


def finished_status(build_id: str, name: str, created_at: float, state: str = spool_module.COMPLETED) -> dict:
    """Return the status.json of a build that ended in state, as the runner leaves it."""
    start = created_at + 0.5
    return {"build_id": build_id, "status": state, "created_at": created_at, "pkgname": name,
            "pkgbase": name, "pkgnames": [name], "pkgver": "1", "pkgrel": "1", "version": "1-1",
            "arch": ["any"], "build_timeout": 7200, "output_timeout": 1800, "source": "tarball",
            "extra_repos": [], "start_time": start, "end_time": start + 60.0, "duration": 60.0,
            "exit_code": 0 if state == spool_module.COMPLETED else 4, "builder": "makepkg",
            "clean_chroot": False, "runner_id": "bench-1"}


def add_finished_job(spool: Spool, name: str, files: dict[str, Path | bytes] = None,
                     state: str = spool_module.COMPLETED) -> str:
    """Publish a job and finish it at once, as if a runner had built it; return its id.

    files maps a name under the job folder (such as packages/NAME.pkg.tar.zst or
    build.log) to bytes, or to a file that is hard-linked there.
    """
    build_id, _ = publish_job(spool, pkgbuild(name), name)
    claim = spool.claim(build_id)
    job = spool.job_dir(build_id)
    for relative, content in (files or {}).items():
        path = job / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            os.link(content, path)
        else:
            path.write_bytes(content)
    status = finished_status(build_id, name, spool.created_at(build_id), state)
    for key in ("end_time", "status", "build_id"):
        status.pop(key)
    spool.finish(claim, state, **status)
    return build_id
