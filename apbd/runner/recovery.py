"""Builds orphaned by a runner that died: fail them once and end their processes.

A job with a `claimed` marker whose lock nobody holds was being built by a
runner that is gone (the kernel drops a flock when its holder dies). The first
runner to take the lock stops whatever is left of the build, writes the reason
into build.log and status.json, and removes the marker, so each orphan is
failed exactly once.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

from apbd import limits
from apbd import spool as spool_format
from apbd.runner.process import kill_build
from apbd.spool import Spool

log = logging.getLogger(__name__)

# build.log is checked this far from its end for a reason already written.
_LOG_TAIL_BYTES = 4096


def recover_orphan(spool: Spool, build_id: str, runner_id: str, scale: float = 1.0) -> bool:
    """Fail build_id if its runner died; return True when this call failed it."""
    claim = spool.lock_orphan(build_id)
    if claim is None:
        return False
    try:
        status = spool.read_status(build_id) or {}
        dead_runner = status.get("runner_id") or "unknown"
        reason = f"The runner stopped during the build (runner {dead_runner} died)"

        found = kill_build(build_id, status.get("build_pid"), status.get("build_pgid"),
                           status.get("build_started"), grace_s=limits.KILL_GRACE_S * scale)
        if found:
            spool.append_log(build_id, f"Killed processes left by the stopped runner: {', '.join(found)}")
        # A runner that crashed between these two writes must not log the reason twice.
        if reason not in _log_tail(spool, build_id):
            spool.append_log(build_id, reason)
        end = time.time()
        timing = {"end_time": end}
        if isinstance(status.get("start_time"), (int, float)):
            timing["duration"] = round(end - status["start_time"], 3)
        spool.finish(claim, spool_format.FAILED, reason=reason, **timing)
        log.warning("build %s: %s; marked failed by runner %s%s", build_id, reason, runner_id,
                    f", killed {', '.join(found)}" if found else "")
    finally:
        claim.release()
    work = spool.job_dir(build_id) / spool_format.WORK_DIR
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
    return True


def recover_orphans(spool: Spool, build_ids: list[str], runner_id: str, scale: float = 1.0) -> list[str]:
    """Fail every orphaned build among build_ids; return the ids failed by this call."""
    failed = []
    for build_id in build_ids:
        try:
            if recover_orphan(spool, build_id, runner_id, scale):
                failed.append(build_id)
        except OSError as e:
            log.error("build %s: cannot recover the orphaned build: %s", build_id, e)
    return failed


def _log_tail(spool: Spool, build_id: str) -> str:
    path = spool.job_dir(build_id) / spool_format.LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
