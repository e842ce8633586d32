"""The checks behind GET /health.

Each check tests its subject itself: memory and disk are measured now, the
filesystem check writes, reads back and removes a file in the spool, and the
executor check looks for a runner heartbeat younger than
EXECUTOR_HEARTBEAT_MAX_AGE_S in runners/*.json, which only a live
apbd-runner writes (the web process cannot prove that builds run).

Overall status: `error` (HTTP 500) when the spool cannot be written;
`degraded` when any check has an error or the checks took longer than
SLOW_RESPONSE_S; `warning` when any check warns; `healthy` otherwise.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import time
import uuid

import psutil

import apbd
from apbd import limits
from apbd.metrics import SpoolStats, read_runner_states
from apbd.spool import Spool, read_json

log = logging.getLogger(__name__)

# A runner heartbeat older than this means no runner is alive.
EXECUTOR_HEARTBEAT_MAX_AGE_S = 3 * limits.HEARTBEAT_INTERVAL_S
# Checks taking longer than this make the service degraded.
SLOW_RESPONSE_S = 2.0
# Memory use that earns a warning, in percent; cleanup starts at the same mark.
MEMORY_WARNING_PERCENT = limits.MEMORY_CLEANUP_PERCENT
# Disk use of the spool's filesystem: a warning first, an error at the cleanup mark.
DISK_WARNING_PERCENT = 90.0
DISK_ERROR_PERCENT = limits.DISK_CLEANUP_PERCENT

OK, WARNING, ERROR = "ok", "warning", "error"


def check_memory() -> dict:
    memory = psutil.virtual_memory()
    result = {"status": OK, "usage_percent": memory.percent, "available_mb": memory.available // (1024 * 1024)}
    if memory.percent > MEMORY_WARNING_PERCENT:
        result["status"] = WARNING
        result["warning"] = f"Memory usage above {MEMORY_WARNING_PERCENT:.0f}%"
    return result


def check_disk(spool: Spool) -> dict:
    usage = shutil.disk_usage(spool.root)
    percent = round(usage.used / usage.total * 100, 1) if usage.total else 0.0
    result = {"status": OK, "usage_percent": percent, "free_gb": usage.free // (1024 ** 3)}
    if percent > DISK_ERROR_PERCENT:
        result["status"] = ERROR
        result["error"] = f"Disk usage above {DISK_ERROR_PERCENT:.0f}%"
    elif percent > DISK_WARNING_PERCENT:
        result["status"] = WARNING
        result["warning"] = f"Disk usage above {DISK_WARNING_PERCENT:.0f}%"
    return result


def check_executor(spool: Spool, now: float | None = None) -> dict:
    """Prove that a runner is alive by the age of the newest heartbeat in runners/."""
    now = time.time() if now is None else now
    states = read_runner_states(spool)
    alive = [s for s in states if now - s["heartbeat"] < EXECUTOR_HEARTBEAT_MAX_AGE_S]
    if not states:
        return {"status": ERROR, "error": "No runner is running: runners/ holds no state file; start apbd-runner",
                "runners": 0}
    newest = max(states, key=lambda s: s["heartbeat"])
    age = round(max(0.0, now - newest["heartbeat"]), 1)
    if not alive:
        return {"status": ERROR, "runners": 0, "heartbeat_age_s": age,
                "error": f"No runner heartbeat for {age:.0f} s (runner {newest['runner_id']}); "
                         "check that apbd-runner is running"}
    return {"status": OK, "test_result": "test", "runners": len(alive), "heartbeat_age_s": age,
            "builder": newest.get("builder")}


def check_build_queue(spool: Spool, stats: SpoolStats | None = None) -> dict:
    """Count queued and running builds; running processes are the runners' build pids that still exist.

    A refresh of the spool statistics reads only unfinished builds, so it
    stays cheap on a spool with many kept builds.
    """
    queue_size = (stats or SpoolStats(spool)).refresh().queued
    states = read_runner_states(spool)
    running_ids = [build_id for s in states for build_id in (s.get("running") or [])]
    processes = 0
    for build_id in running_ids:
        try:
            status = read_json(spool.job_dir(build_id) / "status.json") or {}
        except (OSError, ValueError):
            continue
        pid = status.get("build_pid")
        if isinstance(pid, int) and psutil.pid_exists(pid):
            processes += 1
    return {"status": OK, "queue_size": queue_size, "active_builds": len(running_ids),
            "running_processes": processes}


def check_filesystem(spool: Spool) -> dict:
    """Write a file under the spool's tmp/, read it back and remove it."""
    probe = spool.staging / f".health.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().hex.encode()
    try:
        with open(probe, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        with open(probe, "rb") as f:
            read_back = f.read()
    except OSError as e:
        return {"status": ERROR, "error": f"Cannot write to the build folder {spool.root}: {e.strerror or e}"}
    finally:
        try:
            probe.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("health check could not remove %s: %s", probe, e)
    if read_back != payload:
        return {"status": ERROR, "error": f"A file written to {spool.staging} read back different bytes"}
    return {"status": OK}


def run_checks(spool: Spool, stats: SpoolStats | None = None) -> tuple[int, dict]:
    """Run every check; return the HTTP status and the /health body."""
    started = time.monotonic()
    checks = {}
    for name, check in (("memory", check_memory),
                        ("disk", lambda: check_disk(spool)),
                        ("executor", lambda: check_executor(spool)),
                        ("build_queue", lambda: check_build_queue(spool, stats)),
                        ("filesystem", lambda: check_filesystem(spool))):
        try:
            checks[name] = check()
        except Exception as e:
            # One broken check must not hide the others; it counts as an error.
            log.exception("health check %s failed", name)
            checks[name] = {"status": ERROR, "error": f"{type(e).__name__}: {e}"}
    elapsed = time.monotonic() - started

    body = {
        "status": "healthy",
        "version": apbd.API_VERSION,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "response_time_ms": round(elapsed * 1000, 1),
        "checks": checks,
    }
    statuses = {c["status"] for c in checks.values()}
    http_status = 200
    if checks["filesystem"]["status"] == ERROR:
        body["status"] = "error"
        http_status = 500
    elif ERROR in statuses or elapsed > SLOW_RESPONSE_S:
        body["status"] = "degraded"
    elif WARNING in statuses:
        body["status"] = "warning"
    if elapsed > SLOW_RESPONSE_S:
        body["warning"] = "High response time"
    failing = sorted(name for name, c in checks.items() if c["status"] != OK)
    if failing:
        log.info("health %s: %s", body["status"], ", ".join(f"{n}={checks[n]['status']}" for n in failing))
    return http_status, body
