"""The status-api object of a build, and the cache of its JSON body that serves status polls.

The farm polls GET /build/ID/status-api for every build it placed, and the APB
client polls GET /build/ID/status every 5 s, so these two routes receive most
of apbd-web's requests. Both responses are built from three entries of the
job folder: status.json, packages/ and build.log (whose size is part of them).

StatusBodies keeps, per build, the last status-api object and its JSON bytes
together with the stat() fields of those three entries, and serves the stored
body for as long as stat() shows no change. Each stat() releases the GIL.
Under 8 concurrent polls, getting it back cost about 25 us of CPU per call,
while the rest of a cached poll's WSGI call takes about 7 us. Both were
measured with wrk on a 2-core VM, as in the bench's status-api figure. So a
poll stats only what can still change in the build's state:

- status.json, always. Every writer replaces it by an atomic rename and gives
  each new version a later mtime than the one it replaces
  (apbd.spool.next_mtime_ns). So no two versions share a key, even when the
  filesystem reuses an inode number within one tick of the kernel's clock.
- build.log, while the build is queued or building. A runner notes a cancel
  in build.log before it writes the cancelled status, and the build appends
  to it while it runs.
- packages/, while the build is building: the runner renames each package
  into it, which changes the folder's mtime and ctime.

Once status.json shows completed, failed or cancelled, none of the three
changes again: the runner moves the packages and writes its last log line
before it writes the final status, and cleanup removes the job folder whole.
A poll of a finished build therefore costs one stat(), a queued build two and
a running build three. The stat() calls come before any read, so a stored
body is never older than its key: a change that lands between them makes the
next poll rebuild the body.

NOTE: mtime and ctime can have the resolution of the kernel's coarse clock,
a few milliseconds. Within one tick, a poll between two packages renamed into
packages/ misses the second one until status.json changes, which the final
status does.

StatusPolls is the WSGI layer that serves both polls from this cache before
bottle sees the request. Every other request, and every poll it does not
handle (an unknown build, HEAD, a build id in upper case), goes on to the
bottle app, whose routes use the same cache.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass

from apbd import spool as spool_format
from apbd.errors import ApiError, not_found
from apbd.web import files

log = logging.getLogger(__name__)

# Fields copied into status-api, when status.json has them, besides the file lists.
STATUS_API_FIELDS = ("build_id", "pkgname", "status", "created_at", "start_time", "end_time", "duration",
                     "exit_code", "build_timeout", "arch", "pkgbase", "pkgnames", "pkgver", "pkgrel", "epoch",
                     "version", "output_timeout", "reason", "builder", "clean_chroot")
# Builds whose status-api body is kept. An entry of a finished build with one
# package takes about 3.5 KB (measured with tracemalloc), so the cache stays
# near 15 MB. A build pushed out by newer ones costs one rebuild at its next poll.
MAX_CACHED_BUILDS = 4096
# The two status polls, with the build id in its canonical lower-case form.
POLL_PATH_RE = re.compile(r"/build/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                          r"/(status-api|status)")
JSON_HEADER = ("Content-Type", "application/json")


# Building the status-api object


def read_status(ctx, build_id: str) -> dict:
    """Return the status.json of build_id, or raise 404."""
    if not spool_format.is_build_id(build_id):
        raise not_found(build_id)
    try:
        status = ctx.spool.read_status(build_id)
    except NotADirectoryError:
        status = None
    if status is None:
        raise not_found(build_id)
    return status


def build_arch(pkgbuild_arch, host_arch: str) -> list[str]:
    """Return the architectures this build is for, as the list the API reports.

    A PKGBUILD lists every architecture it supports, but a server builds for
    its own: the APB client files downloads under the first item, so the
    host's architecture comes alone when the PKGBUILD supports it.
    """
    arch = pkgbuild_arch or []
    if not isinstance(arch, list):
        arch = [arch]
    if host_arch in arch:
        return [host_arch]
    return arch


def status_api(ctx, build_id: str) -> dict:
    """Build the status-api object: numbers for times, arch as a list, never a null field."""
    status = read_status(ctx, build_id)
    result = {k: status[k] for k in STATUS_API_FIELDS if status.get(k) is not None}
    result["arch"] = build_arch(result.get("arch"), ctx.architecture)
    result["packages"], result["logs"] = files.list_packages_and_log(ctx.spool, build_id)
    return result


def artifacts_ready(ctx, status: dict) -> bool:
    """Tell whether a build is finished and its files are in place for downloading."""
    if status.get("status") not in spool_format.TERMINAL_STATES:
        return False
    job = ctx.spool.job_dir(status["build_id"])
    if (job / spool_format.CLAIMED_MARKER).exists():
        return False
    return status["status"] == spool_format.CANCELLED or bool(status["logs"])


def status_with_artifacts_ready(ctx, result: dict) -> dict:
    """Return a copy of a status-api object with artifacts_ready added, the body of GET /build/ID/status."""
    answer = dict(result)
    answer["artifacts_ready"] = artifacts_ready(ctx, answer)
    return answer


# The cache


def stat_key(path: str, follow_symlinks: bool = True) -> tuple | None:
    """Return the stat() fields that change with a file's content, or None when it does not exist."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True)
class StatusEntry:
    """The status-api of one build, and the stat() fields its files had before it was read."""

    status_key: tuple
    packages_key: tuple | None
    log_key: tuple | None
    result: dict  # shared by every request: copy it before changing anything
    body: bytes  # result as JSON


class StatusBodies:
    """Cache of the status-api object and body of each polled build, checked with stat() on every poll."""

    def __init__(self, ctx, max_entries: int = MAX_CACHED_BUILDS):
        self.ctx = ctx
        self.max_entries = max_entries
        self.jobs = str(ctx.spool.jobs)
        self._entries: dict[str, StatusEntry] = {}
        # Held only to add and evict entries; a lookup is one atomic dict.get().
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, build_id: str) -> bool:
        return build_id in self._entries

    def get(self, build_id: str) -> StatusEntry:
        """Return the status-api of build_id, rebuilt only when its files changed.

        Raise ApiError 404 when the build does not exist.
        """
        if not spool_format.is_build_id(build_id):
            raise not_found(build_id)
        job = f"{self.jobs}/{build_id}/"
        status_key = stat_key(job + spool_format.STATUS_FILE)
        if status_key is None:
            self.forget(build_id)
            raise not_found(build_id)
        entry = self._entries.get(build_id)
        if entry is not None and entry.status_key == status_key and self.files_unchanged(job, entry):
            return entry

        packages_key = stat_key(job + spool_format.PACKAGES_DIR)
        log_key = stat_key(job + spool_format.LOG_FILE, follow_symlinks=False)
        try:
            result = status_api(self.ctx, build_id)
        except ApiError:
            self.forget(build_id)
            raise
        entry = StatusEntry(status_key, packages_key, log_key, result, json.dumps(result).encode())
        self.store(build_id, entry)
        return entry

    @staticmethod
    def files_unchanged(job: str, entry: StatusEntry) -> bool:
        """Tell whether build.log and packages/ are as entry saw them, where the build's state lets them change."""
        state = entry.result.get("status")
        if state in spool_format.TERMINAL_STATES:
            return True
        if stat_key(job + spool_format.LOG_FILE, follow_symlinks=False) != entry.log_key:
            return False
        return state == spool_format.QUEUED or stat_key(job + spool_format.PACKAGES_DIR) == entry.packages_key

    def store(self, build_id: str, entry: StatusEntry) -> None:
        with self._lock:
            self._entries.pop(build_id, None)
            self._entries[build_id] = entry
            # dicts keep insertion order: the first key is the build stored longest ago.
            while len(self._entries) > self.max_entries:
                del self._entries[next(iter(self._entries))]

    def forget(self, build_id: str) -> None:
        with self._lock:
            self._entries.pop(build_id, None)


# The WSGI layer


class StatusPolls:
    """WSGI layer that serves GET /build/ID/status-api and /build/ID/status from StatusBodies.

    It skips bottle's request and response objects, its router and its
    plugins, which cost more CPU than sending the cached body. A request it
    cannot serve with 200 goes to app unchanged, so errors keep the API's
    JSON shape and are logged there.
    """

    def __init__(self, app, bodies: StatusBodies):
        self.app = app
        self.bodies = bodies

    def __call__(self, environ, start_response):
        match = POLL_PATH_RE.fullmatch(environ.get("PATH_INFO", ""))
        if match is None or environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        try:
            body = self.poll_body(match.group(1), match.group(2))
        except ApiError:
            # An unknown build: the app responds 404 in the API's words.
            return self.app(environ, start_response)
        except Exception:
            # The app's route runs the same lookup again, and logs a failure
            # and reports it as JSON 500 like any other route does.
            return self.app(environ, start_response)
        start_response("200 OK", [JSON_HEADER, ("Content-Length", str(len(body)))])
        return [body]

    def poll_body(self, build_id: str, route: str) -> bytes:
        entry = self.bodies.get(build_id)
        if route == "status-api":
            return entry.body
        return json.dumps(status_with_artifacts_ready(self.bodies.ctx, entry.result)).encode()
