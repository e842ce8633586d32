"""Per-package locks in the shared SRCDEST.

Builds share one SRCDEST (the folder makepkg downloads sources into), so two
builds of the same pkgbase must not download the same files at once, while
builds of different packages never wait for each other. Each pkgbase has its
own lock file, SRCDEST/.apb-PKGBASE.lock, locked with flock. A flock belongs to
the open file, so the kernel drops it when its holder exits or crashes, and
two threads of one runner exclude each other as two processes do.

A build waits at most limits.SRCDEST_LOCK_TIMEOUT_S for the lock and then goes
on without it, with a warning in its log: a slow download elsewhere must not
fail the build.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

from apbd import limits

log = logging.getLogger(__name__)

LOCK_PREFIX = ".apb-"
LOCK_SUFFIX = ".lock"
# Seconds between attempts while another build holds the lock.
POLL_INTERVAL_S = 0.2

_PKGBASE_RE = re.compile(r"^[a-zA-Z0-9@_+][a-zA-Z0-9@._+-]*$")


def read_srcdest(makepkg_conf: str | os.PathLike = "/etc/makepkg.conf") -> Path | None:
    """Return the SRCDEST that makepkg.conf sets, or None when it sets none.

    makepkg.conf is bash, so bash reads it, in an empty environment.
    """
    script = 'source "$1" >/dev/null 2>&1; printf %s "${SRCDEST:-}"'
    try:
        proc = subprocess.run(["bash", "-c", script, "bash", str(makepkg_conf)], env={"PATH": "/usr/bin:/bin"},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not read SRCDEST from %s: %s", makepkg_conf, e)
        return None
    value = proc.stdout.strip()
    return Path(value) if value else None


def lock_path(srcdest: str | os.PathLike, pkgbase: str) -> Path:
    """Return SRCDEST/.apb-PKGBASE.lock; raise ValueError for a name that is not a pkgbase."""
    if not _PKGBASE_RE.match(pkgbase):
        raise ValueError(f"not a valid pkgbase for a SRCDEST lock: {pkgbase!r}")
    return Path(srcdest) / f"{LOCK_PREFIX}{pkgbase}{LOCK_SUFFIX}"


class SrcdestLock:
    """The lock of one pkgbase in SRCDEST, or the record that the build went on without it."""

    def __init__(self, path: Path, fd: int | None, waited: float, warning: str | None):
        self.path = path
        self.fd = fd
        self.waited = waited
        self.warning = warning

    @property
    def acquired(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "SrcdestLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(path: Path) -> int | None:
    """Take the flock on path without waiting; return the fd, or None if it is held.

    Orphan removal may unlink the file between our open and our flock. A lock
    on an unlinked file excludes no other build, so after locking check that path
    still names the file we locked, and start again when it does not.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def acquire_srcdest_lock(srcdest: str | os.PathLike, pkgbase: str, *,
                         timeout: float = limits.SRCDEST_LOCK_TIMEOUT_S,
                         on_wait: Callable[[str], None] | None = None,
                         build_id: str = "-") -> SrcdestLock:
    """Wait up to timeout seconds for the SRCDEST lock of pkgbase.

    on_wait, when given, receives one plain sentence for the build log when
    the build has to wait, and another when it goes on without the lock.
    The returned SrcdestLock has acquired False and a warning after a
    timeout, or when SRCDEST cannot hold a lock file at all.
    """
    path = lock_path(srcdest, pkgbase)
    started = time.monotonic()
    told = False
    while True:
        try:
            fd = _try_lock(path)
        except OSError as e:
            warning = f"could not lock {path}: {e}; downloading sources without the SRCDEST lock"
            log.warning("build %s: %s", build_id, warning)
            if on_wait:
                on_wait(warning)
            return SrcdestLock(path, None, time.monotonic() - started, warning)
        waited = time.monotonic() - started
        if fd is not None:
            if told:
                log.info("build %s: got SRCDEST lock for %s after %.1f s", build_id, pkgbase, waited)
            return SrcdestLock(path, fd, waited, None)
        if waited >= timeout:
            warning = (f"another build of {pkgbase} held the SRCDEST lock for {timeout:.0f} s; "
                       "going on without it")
            log.warning("build %s: %s", build_id, warning)
            if on_wait:
                on_wait(warning)
            return SrcdestLock(path, None, waited, warning)
        if not told:
            told = True
            message = f"waiting for another build of {pkgbase} to finish with SRCDEST"
            log.info("build %s: %s", build_id, message)
            if on_wait:
                on_wait(message)
        time.sleep(min(POLL_INTERVAL_S, max(0.0, timeout - waited)))


def remove_orphaned_locks(srcdest: str | os.PathLike) -> list[str]:
    """Remove SRCDEST lock files that no process holds; return their names.

    Called at runner startup. A lock file that no process holds is what a stopped
    runner left behind; one that is held belongs to a build still running
    (of this or another runner) and stays.
    """
    removed = []
    root = Path(srcdest)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(LOCK_PREFIX) and entry.name.endswith(LOCK_SUFFIX)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("cannot open SRCDEST lock %s: %s", entry.path, e)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        # Unlink while holding the lock, so that no build can be inside its
        # critical section on this file while it disappears.
        try:
            os.unlink(entry.path)
            removed.append(entry.name)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d orphaned SRCDEST locks in %s: %s", len(removed), root, ", ".join(removed))
    return removed
