"""Build history from the spool's index: the newest builds, overall or per package name.

history/builds.log and history/pkgname/NAME.log get one JSON line per
published build, oldest first. Reading them backwards in blocks from the end
makes a query cost grow with the number of builds it returns, not with the
size of the history. Lines whose job folder is gone (removed by cleanup) are
skipped, and a build listed twice appears once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Iterator

import bottle

from apbd import limits
from apbd import spool as spool_format
from apbd.errors import ApiError
from apbd.spool import Spool
from apbd.web import files
from apbd.web.api import bool_param, int_param
from apbd.web.files import iso_time

log = logging.getLogger(__name__)

BLOCK_BYTES = 64 * 1024
_REBUILD_LOCK = threading.Lock()
# history/builds.log path -> ((inode, size, mtime), line count).
_COUNT_CACHE: dict[str, tuple] = {}
# The package names makepkg accepts; any other name has no index file.
PKGNAME_RE = re.compile(r"^[a-zA-Z0-9@_+][a-zA-Z0-9@._+-]*$")


def lines_backwards(path: Path, block: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Yield the lines of a file from the last to the first, reading blocks from the end."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    except OSError as e:
        # A package name longer than the filesystem allows has no index file.
        if e.errno == errno.ENAMETOOLONG:
            return
        raise
    with f:
        position = f.seek(0, os.SEEK_END)
        tail = b""
        while position > 0:
            step = min(block, position)
            position -= step
            f.seek(position)
            data = f.read(step) + tail
            lines = data.split(b"\n")
            tail = lines.pop(0)
            for line in reversed(lines):
                if line:
                    yield line
        if tail:
            yield tail


def index_path(spool: Spool, pkgname: str | None) -> Path | None:
    if pkgname is None:
        return spool.history / spool_format.HISTORY_FILE
    if not PKGNAME_RE.match(pkgname):
        return None
    return spool.history / "pkgname" / f"{pkgname}.log"


def ensure_index(spool: Spool) -> None:
    """Rebuild the history index from the job folders when it is missing and jobs exist."""
    if (spool.history / spool_format.HISTORY_FILE).exists():
        return
    # Spool.rebuild_history stages in a folder named by the process id, so two
    # threads of this process must not rebuild at once.
    with _REBUILD_LOCK:
        if (spool.history / spool_format.HISTORY_FILE).exists():
            return
        with os.scandir(spool.jobs) as entries:
            if not any(spool_format.is_build_id(e.name) for e in entries):
                return
        count = spool.rebuild_history()
    log.warning("history index was missing: rebuilt it from %d job folders", count)


def newest_builds(spool: Spool, pkgname: str | None = None) -> Iterator[dict]:
    """Yield the status of each build in the index, newest first, once each, skipping removed ones."""
    ensure_index(spool)
    path = index_path(spool, pkgname)
    if path is None:
        return
    seen = set()
    for line in lines_backwards(path):
        try:
            build_id = json.loads(line)["build_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("skipping an unreadable line in %s", path)
            continue
        if build_id in seen or not spool_format.is_build_id(build_id):
            continue
        seen.add(build_id)
        try:
            status = spool.read_status(build_id)
        except ValueError:
            # A status.json being replaced is never torn, so this is a damaged file.
            log.warning("build %s: status.json is not valid JSON", build_id)
            continue
        if status is None:
            continue
        yield status


def history_item(status: dict) -> dict:
    """Shape one build for the history endpoints: ISO times, duration in seconds."""
    item = {
        "build_id": status["build_id"],
        "pkgname": status.get("pkgname"),
        "status": status.get("status"),
        "version": status.get("version"),
        "created_at": iso_time(status.get("created_at")),
        "start_time": iso_time(status.get("start_time")),
        "end_time": iso_time(status.get("end_time")),
        "duration": status.get("duration"),
    }
    if "exit_code" in status:
        item["exit_code"] = status["exit_code"]
    return item


def latest_builds(spool: Spool, limit: int, status_filter: str | None = None,
                  pkgname: str | None = None) -> list[dict]:
    """Return up to limit builds, newest first, optionally only those in one state."""
    found = []
    for status in newest_builds(spool, pkgname):
        if status_filter and status.get("status") != status_filter:
            continue
        found.append(history_item(status))
        if len(found) >= limit:
            break
    return found


def latest_build(spool: Spool, pkgname: str, successful_only: bool) -> dict | None:
    """Return the status of the newest build of pkgname (the newest completed one if asked)."""
    for status in newest_builds(spool, pkgname):
        if not successful_only or status.get("status") == spool_format.COMPLETED:
            return status
    return None


def history_count(spool: Spool) -> int:
    """Return the number of lines in history/builds.log, counted again only when the file changed."""
    path = spool.history / spool_format.HISTORY_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _COUNT_CACHE.get(str(path))
    if cached is None or cached[0] != key:
        count = 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1024 * 1024), b""):
                count += block.count(b"\n")
        cached = (key, count)
        _COUNT_CACHE[str(path)] = cached
    return cached[1]


# Routes

# File types of /builds/pkgname/NAME/latest/download/TYPE.
FILE_TYPES = ("package", "debug", "log", "pkgbuild")


def package_name(filename: str) -> str:
    """Return the pkgname part of a package file name NAME-PKGVER-PKGREL-ARCH.pkg.tar.*."""
    parts = filename.split("-")
    return "-".join(parts[:-3]) if len(parts) >= 4 else filename


def pick_file(listing: dict, pkgname: str, file_type: str) -> str | None:
    """Choose the file of one type among a build's files; the package named pkgname goes first."""
    if file_type == "log":
        names = [f["filename"] for f in listing["logs"]]
    elif file_type == "pkgbuild":
        names = [f["filename"] for f in listing["sources"] if f["filename"] == "PKGBUILD"]
    else:
        wanted_debug = file_type == "debug"
        names = [f["filename"] for f in listing["packages"]
                 if package_name(f["filename"]).endswith("-debug") == wanted_debug]
        preferred = f"{pkgname}-debug" if wanted_debug else pkgname
        names.sort(key=lambda n: package_name(n) != preferred)
    return names[0] if names else None


def install(app, ctx) -> None:
    """Add the /builds history routes to app."""
    def latest_or_404(pkgname: str) -> dict:
        status = latest_build(ctx.spool, pkgname, bool_param("successful_only", True))
        if status is None:
            raise ApiError(404, "Build not found", f"No matching build of package '{pkgname}' exists")
        return status

    @app.get("/builds/latest")
    def get_latest():
        limit = int_param("limit", limits.LATEST_LIMIT_DEFAULT, 1, limits.LATEST_LIMIT_MAX)
        status_filter = bottle.request.query.get("status") or None
        if status_filter is not None and status_filter not in spool_format.STATES:
            raise ApiError(400, "Invalid parameter",
                           f"status must be one of {', '.join(spool_format.STATES)}, not {status_filter!r}")
        builds = latest_builds(ctx.spool, limit, status_filter)
        return {"builds": builds, "total": len(builds)}

    @app.get("/builds/pkgname/<pkgname>")
    def get_by_pkgname(pkgname):
        limit = int_param("limit", limits.PKGNAME_LIMIT_DEFAULT, 1, limits.PKGNAME_LIMIT_MAX)
        builds = latest_builds(ctx.spool, limit, pkgname=pkgname)
        return {"pkgname": pkgname, "builds": builds, "total": len(builds)}

    @app.get("/builds/pkgname/<pkgname>/latest")
    def get_latest_of_pkgname(pkgname):
        status = latest_or_404(pkgname)
        item = history_item(status)
        item["packages"] = files.short_items(files.list_files(ctx.spool, status["build_id"])["packages"])
        return item

    @app.get("/builds/pkgname/<pkgname>/latest/download/<file_type>")
    def get_latest_file(pkgname, file_type):
        if file_type not in FILE_TYPES:
            raise ApiError(400, "Invalid file type", f"file_type must be one of {', '.join(FILE_TYPES)}, "
                                                     f"not {file_type!r}")
        status = latest_or_404(pkgname)
        build_id = status["build_id"]
        filename = pick_file(files.list_files(ctx.spool, build_id), pkgname, file_type)
        path = files.resolve_file(ctx.spool, build_id, filename) if filename else None
        if path is None:
            raise ApiError(404, "File not found", f"The latest build of '{pkgname}' ({build_id}) has no "
                                                  f"{file_type} file")
        return files.send_file(path, filename)
