"""Turn a staged source folder into a published, queued job.

Both the web upload and the runner's drop importer end here: they stage the
sources under SPOOL/tmp/NAME/src/ and call create_job(), which reads the
PKGBUILD's metadata, writes request.json and the first status.json, and
publishes the folder with one rename.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from apbd import limits, metadata
from apbd import spool as spool_format
from apbd.errors import ApiError
from apbd.spool import Spool

log = logging.getLogger(__name__)


def conflict(build_id: str) -> ApiError:
    return ApiError(409, "Build ID already exists",
                    f"Build with ID '{build_id}' already exists with different content")


def existing_build(spool: Spool, build_id: str, sha256: str) -> dict | None:
    """Return the status of an existing build with the same upload (a retry), None if there is none.

    Raise ApiError 409 when the id exists with different content.
    """
    if not spool.exists(build_id):
        return None
    request = spool.read_request(build_id) or {}
    if request.get("sha256") != sha256:
        raise conflict(build_id)
    status = dict(spool.read_status(build_id) or {"build_id": build_id, "status": spool_format.QUEUED})
    status["retry"] = True
    return status


def read_metadata(src: Path, build_user: str | None) -> metadata.SrcInfo:
    try:
        return metadata.read_srcinfo(src, build_user)
    except metadata.InvalidPkgbuild as e:
        raise ApiError(400, "Invalid PKGBUILD file", e.detail) from None


def first_status(build_id: str, created_at: float, info: metadata.SrcInfo, *, source: str,
                 build_timeout: int, output_timeout: int, extra_repos: list) -> dict:
    status = {
        "build_id": build_id,
        "status": spool_format.QUEUED,
        "created_at": created_at,
        "pkgname": info.pkgbase,
        "pkgbase": info.pkgbase,
        "pkgnames": list(info.pkgnames),
        "pkgver": info.pkgver,
        "pkgrel": info.pkgrel,
        "version": info.version,
        "arch": list(info.arch),
        "build_timeout": build_timeout,
        "output_timeout": output_timeout,
        "validpgpkeys": list(info.validpgpkeys),
        "source": source,
        "extra_repos": extra_repos,
    }
    if info.epoch:
        status["epoch"] = info.epoch
    return status


def create_job(spool: Spool, staging: Path, *, build_id: str, source: str, build_timeout: int | None,
               extra_repos: list | None, sha256: str, remote_addr: str | None,
               build_user: str | None, before_publish: Callable[[], None] | None = None) -> dict:
    """Publish the job staged in `staging` (which contains src/PKGBUILD) and return its status.

    build_timeout None means the server default. When build_id exists with the
    same sha256 the existing status is returned with "retry": True; with a
    different sha256 ApiError 409 is raised. Raise ApiError 400 for a PKGBUILD
    makepkg cannot read. before_publish runs right before the publishing rename
    and may raise to stop it. On return or error `staging` is either published
    or removed.
    """
    try:
        retry = existing_build(spool, build_id, sha256)
        if retry is not None:
            log.info("build %s submitted again with the same content: returning the existing build",
                     build_id)
            shutil.rmtree(staging, ignore_errors=True)
            return retry

        info = read_metadata(staging / spool_format.SOURCES_DIR, build_user)
        output_timeout, warning = metadata.parse_output_timeout(info.output_timeout_raw)
        if warning:
            log.warning("build %s: %s", build_id, warning)
            note_in_log(staging, warning)

        created_at = time.time()
        timeout = build_timeout if build_timeout is not None else limits.BUILD_TIMEOUT_DEFAULT_S
        request = {
            "build_id": build_id,
            "created_at": created_at,
            "sha256": sha256,
            "source": source,
            "remote_addr": remote_addr,
            "build_timeout": build_timeout,
            "extra_repos": extra_repos or [],
        }
        status = first_status(build_id, created_at, info, source=source, build_timeout=timeout,
                              output_timeout=output_timeout, extra_repos=extra_repos or [])

        if before_publish is not None:
            before_publish()
        if not spool.publish(staging, request, status):
            # Another request with this id won the publishing rename a moment ago.
            retry = existing_build(spool, build_id, sha256)
            shutil.rmtree(staging, ignore_errors=True)
            if retry is None:
                raise conflict(build_id)
            return retry
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    log.info("build %s queued: %s %s (%s, from %s)", build_id, info.pkgbase, info.version, source,
             remote_addr or "local")
    return status


def note_in_log(staging: Path, text: str) -> None:
    """Start the build log with a line from apbd, in the format Spool.append_log uses."""
    with open(staging / spool_format.LOG_FILE, "ab") as f:
        f.write(f"==> apbd: {text}\n".encode())
