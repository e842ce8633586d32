"""Removing old builds from the spool.

A build folder whose build ended more than limits.CLEANUP_MAX_AGE_S ago is
removed whole, and its lines are dropped from the history index, so the
history endpoints list only builds that still exist. Builds that are queued,
building or claimed are never touched: a folder is removed only while this
process holds the job's lock, and only when its final status is terminal.

Cleanup goes on past a folder it cannot remove and reports each failure.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from apbd import limits
from apbd.spool import (CLAIMED_MARKER, HISTORY_FILE, LOCK_FILE, QUEUED_MARKER, STATUS_FILE,
                        TERMINAL_STATES, Spool, fsync_dir, read_json, write_json_atomic)

log = logging.getLogger(__name__)

# At the top of the spool: when cleanup last ran and what it did.
LAST_CLEANUP_FILE = "last-cleanup.json"
# At the top of the spool: held while a cleanup runs, so two never overlap.
CLEANUP_LOCK_FILE = ".cleanup.lock"


def disk_usage(path: Path) -> dict:
    """Return total, used and free bytes and the used percentage of path's filesystem."""
    usage = shutil.disk_usage(path)
    percentage = round(usage.used / usage.total * 100, 1) if usage.total else 0.0
    return {"total": usage.total, "used": usage.used, "free": usage.free, "percentage": percentage}


def folder_size(path: Path) -> int:
    """Return the bytes of the regular files under path, not following symlinks."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return total


def build_age_reference(job: Path, status: dict) -> float:
    """Return the time a build's age counts from: its end, else its creation, else status.json's mtime."""
    for field in ("end_time", "created_at"):
        value = status.get(field)
        if isinstance(value, (int, float)):
            return float(value)
    try:
        return (job / STATUS_FILE).stat().st_mtime
    except FileNotFoundError:
        return job.stat().st_mtime


def is_removable(job: Path, status: dict | None) -> bool:
    """Tell whether a job is finished by every sign the spool gives."""
    if status is None or status.get("status") not in TERMINAL_STATES:
        return False
    return not (job / QUEUED_MARKER).exists() and not (job / CLAIMED_MARKER).exists()


def plan_cleanup(spool: Spool, now: float | None = None, *, with_sizes: bool = True) -> dict:
    """List what a cleanup would remove, without changing anything.

    Returns the disk use of the spool's filesystem, build counts, the
    builds to remove (oldest first, each with build_id, pkgname, status,
    ended_at, age_days and size in bytes) and the last cleanup's record.
    """
    now = time.time() if now is None else now
    cutoff = now - limits.CLEANUP_MAX_AGE_S
    candidates = []
    total = active = 0
    for build_id in spool.job_ids():
        job = spool.jobs / build_id
        total += 1
        try:
            status = read_json(job / STATUS_FILE)
        except (OSError, ValueError):
            continue
        if not is_removable(job, status):
            active += 1
            continue
        try:
            reference = build_age_reference(job, status)
        except FileNotFoundError:
            continue
        if reference >= cutoff:
            continue
        candidate = {
            "build_id": build_id,
            "pkgname": status.get("pkgname"),
            "status": status.get("status"),
            "ended_at": reference,
            "age_days": round((now - reference) / 86400, 1),
        }
        if with_sizes:
            candidate["size"] = folder_size(job)
        candidates.append(candidate)
    candidates.sort(key=lambda c: c["ended_at"])
    return {
        "disk": disk_usage(spool.root),
        "max_age_days": limits.CLEANUP_MAX_AGE_S / 86400,
        "total_builds": total,
        "active_builds": active,
        "builds_to_remove": candidates,
        "bytes_to_free": sum(c.get("size", 0) for c in candidates),
        "last_cleanup": read_last_cleanup(spool),
    }


def read_last_cleanup(spool: Spool) -> dict | None:
    try:
        return read_json(spool.root / LAST_CLEANUP_FILE)
    except (OSError, ValueError):
        return None


def remove_build(spool: Spool, build_id: str) -> None:
    """Remove one finished build's folder, holding its lock so no runner can claim it meanwhile.

    The folder is first renamed into tmp/, so readers see it either whole or
    gone. Raises RuntimeError when the build is not (or no longer) finished.
    """
    job = spool.job_dir(build_id)
    fd = os.open(job / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError("its lock is held by a runner or a request") from None
        if not is_removable(job, read_json(job / STATUS_FILE)):
            raise RuntimeError("it is no longer finished")
        # The staging name carries our pid, so a crash mid-removal leaves a
        # folder that the web layer's stale-staging sweep deletes.
        doomed = spool.staging / f"{build_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.removing"
        os.rename(job, doomed)
    finally:
        os.close(fd)
    fsync_dir(spool.jobs)
    shutil.rmtree(doomed)


def filter_history_file(path: Path, removed: set[str]) -> int:
    """Drop the lines of removed builds from one history file; return how many were dropped.

    Lines appended while the file is rewritten are copied over just before
    the rename.
    """
    # NOTE: a line appended between the final read and the rename is lost;
    # the window is a few microseconds and rebuild_history() restores it.
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    kept = []
    dropped = 0
    for line in data.splitlines(keepends=True):
        try:
            build_id = json.loads(line).get("build_id")
        except (ValueError, AttributeError):
            build_id = None
        if build_id in removed:
            dropped += 1
        else:
            kept.append(line)
    if not dropped:
        return 0
    fresh = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(fresh, "wb") as out:
        out.writelines(kept)
        with open(path, "rb") as f:
            f.seek(len(data))
            out.write(f.read())
        out.flush()
        os.fsync(out.fileno())
    if kept or fresh.stat().st_size:
        os.rename(fresh, path)
    else:
        fresh.unlink()
        path.unlink(missing_ok=True)
    return dropped


def compact_history(spool: Spool, removed: set[str]) -> list[str]:
    """Drop removed builds from history/builds.log and every per-package file; return errors."""
    errors = []
    paths = [spool.history / HISTORY_FILE]
    pkgname_dir = spool.history / "pkgname"
    if pkgname_dir.is_dir():
        paths.extend(sorted(pkgname_dir.glob("*.log")))
    for path in paths:
        try:
            filter_history_file(path, removed)
        except OSError as e:
            errors.append(f"history file {path.name}: {e}")
            log.error("cleanup could not rewrite %s: %s", path, e)
    return errors


def run_cleanup(spool: Spool, now: float | None = None, *, reason: str = "request") -> dict:
    """Remove builds older than the cleanup age and compact the history index.

    Returns {"success", "message", "cleanup_id", "removed", "errors"}.
    success is False when any build could not be removed or another
    cleanup was running; the other builds are removed regardless.
    """
    now = time.time() if now is None else now
    cleanup_id = f"cleanup_{int(now)}"
    lock_fd = os.open(spool.root / CLEANUP_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"success": False, "message": "Another cleanup is running; try again when it ends",
                    "cleanup_id": cleanup_id, "removed": [], "errors": ["another cleanup is running"]}
        return _cleanup_locked(spool, now, cleanup_id, reason)
    finally:
        os.close(lock_fd)


def _cleanup_locked(spool: Spool, now: float, cleanup_id: str, reason: str) -> dict:
    started = time.monotonic()
    plan = plan_cleanup(spool, now, with_sizes=False)
    removed = []
    errors = []
    for candidate in plan["builds_to_remove"]:
        build_id = candidate["build_id"]
        try:
            remove_build(spool, build_id)
        except (OSError, RuntimeError) as e:
            errors.append(f"build {build_id}: {e}")
            log.warning("cleanup %s could not remove build %s: %s", cleanup_id, build_id, e)
            continue
        removed.append(build_id)
        log.info("cleanup %s removed build %s (%s, %s, %.1f days old)", cleanup_id, build_id,
                 candidate["pkgname"], candidate["status"], candidate["age_days"])

    if removed:
        errors.extend(compact_history(spool, set(removed)))

    message = f"Cleanup completed: removed {len(removed)} old builds"
    if errors:
        message += f"; {len(errors)} errors"
    record = {"cleanup_id": cleanup_id, "time": now, "reason": reason, "removed_count": len(removed),
              "error_count": len(errors), "duration": round(time.monotonic() - started, 3)}
    try:
        write_json_atomic(spool.root / LAST_CLEANUP_FILE, record)
    except OSError as e:
        errors.append(f"could not record the cleanup: {e}")
    log.info("cleanup %s (%s): removed %d builds, %d errors", cleanup_id, reason, len(removed), len(errors))
    return {"success": not errors, "message": message, "cleanup_id": cleanup_id,
            "removed": removed, "errors": errors}
