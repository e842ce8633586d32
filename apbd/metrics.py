"""Spool statistics for GET /metrics and /health, and their Prometheus text form.

Walking every job folder on each scrape would cost seconds on a spool with
100,000 builds. A finished build never changes again (cleanup only removes
it), so SpoolStats reads each finished build's status and sizes once and
keeps them; a refresh lists the job folder names and reads only builds it has
not seen finished. The web layer refreshes it in the background every
STATS_REFRESH_S.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from apbd import cleanup, limits
from apbd.spool import (CLAIMED_MARKER, LOG_FILE, PACKAGES_DIR, QUEUED_MARKER, STATUS_FILE,
                        TERMINAL_STATES, Spool, read_json)

log = logging.getLogger(__name__)

# Seconds between background refreshes of the spool statistics.
STATS_REFRESH_S = 15.0
# Upper bounds of the build duration histogram, in seconds: 30 s to the 4-hour maximum build timeout.
DURATION_BUCKETS_S = (30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, limits.BUILD_TIMEOUT_MAX_S)


@dataclass
class FinishedBuild:
    status: str
    duration: float | None
    log_bytes: int
    artifact_bytes: int


@dataclass
class StatsSnapshot:
    """Counts over the spool at one moment."""

    taken_at: float = 0.0
    finished_by_status: dict = field(default_factory=dict)
    durations: list = field(default_factory=list)
    queued: int = 0
    claimed: int = 0
    log_bytes: int = 0
    artifact_bytes: int = 0
    total_builds: int = 0
    refresh_seconds: float = 0.0


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return 0


def packages_size(job: Path) -> int:
    total = 0
    try:
        with os.scandir(job / PACKAGES_DIR) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except (FileNotFoundError, NotADirectoryError):
        pass
    return total


class SpoolStats:
    """Cached counts of the spool's builds, refreshed incrementally."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self._finished: dict[str, FinishedBuild] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._snapshot = StatsSnapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> StatsSnapshot:
        """Scan the spool, reading only builds not yet known to be finished."""
        with self._refresh_lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> StatsSnapshot:
        started = time.monotonic()
        snap = StatsSnapshot(taken_at=time.time())
        seen = set()
        for build_id in self.spool.job_ids():
            seen.add(build_id)
            job = self.spool.jobs / build_id
            known = self._finished.get(build_id)
            if known is None:
                known = self.read_finished(job)
                if known is not None:
                    self._finished[build_id] = known
            if known is not None:
                snap.finished_by_status[known.status] = snap.finished_by_status.get(known.status, 0) + 1
                if known.duration is not None:
                    snap.durations.append(known.duration)
                snap.log_bytes += known.log_bytes
                snap.artifact_bytes += known.artifact_bytes
                continue
            # Queued or running: its markers and sizes still change.
            if (job / QUEUED_MARKER).exists():
                snap.queued += 1
            elif (job / CLAIMED_MARKER).exists():
                snap.claimed += 1
            snap.log_bytes += file_size(job / LOG_FILE)
            snap.artifact_bytes += packages_size(job)
        for gone in set(self._finished) - seen:
            del self._finished[gone]
        snap.total_builds = len(seen)
        snap.refresh_seconds = time.monotonic() - started
        with self._lock:
            self._snapshot = snap
        return snap

    @staticmethod
    def read_finished(job: Path) -> FinishedBuild | None:
        """Return the facts of a finished build, or None while it is queued or running."""
        try:
            status = read_json(job / STATUS_FILE)
        except (OSError, ValueError):
            return None
        if not status or status.get("status") not in TERMINAL_STATES:
            return None
        # The runner writes the final status before it removes `claimed`,
        # and moves packages in before either; wait for the marker to go.
        if (job / CLAIMED_MARKER).exists() or (job / QUEUED_MARKER).exists():
            return None
        duration = status.get("duration")
        return FinishedBuild(status=status["status"],
                             duration=float(duration) if isinstance(duration, (int, float)) else None,
                             log_bytes=file_size(job / LOG_FILE),
                             artifact_bytes=packages_size(job))

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return self._snapshot

    def start(self, interval: float = STATS_REFRESH_S) -> "SpoolStats":
        """Refresh in a daemon thread now and every interval seconds."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(interval,), name="apbd-spool-stats",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self, interval: float) -> None:
        missing_reported = False
        while True:
            try:
                self.refresh()
                missing_reported = False
            except FileNotFoundError as e:
                # The spool is gone (unmounted, or a test's folder removed); log it once.
                if not missing_reported:
                    log.warning("spool statistics: %s is missing: %s", self.spool.jobs, e)
                    missing_reported = True
            except Exception:
                # A failed scan must not end the statistics; the next refresh tries again.
                log.exception("refreshing the spool statistics failed")
            if self._stop.wait(interval):
                return


def read_runner_states(spool: Spool) -> list[dict]:
    """Return every runners/*.json state that parses, skipping half-written or foreign files."""
    states = []
    try:
        paths = sorted(spool.runners.glob("*.json"))
    except FileNotFoundError:
        return states
    for path in paths:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("heartbeat"), (int, float)):
            state.setdefault("runner_id", path.stem)
            states.append(state)
    return states


def escape_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class MetricsWriter:
    """Collects lines of the Prometheus text exposition format."""

    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict | None = None) -> None:
        if labels:
            inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {format_number(value)}")
        else:
            self.lines.append(f"{name} {format_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(spool: Spool, stats: StatsSnapshot, now: float | None = None) -> str:
    """Return the metrics of the spool, its builds and its runners in the Prometheus text format."""
    now = time.time() if now is None else now
    out = MetricsWriter()

    out.family("apbd_builds", "gauge", "Finished builds kept in the spool, by final status.")
    for state in TERMINAL_STATES:
        out.sample("apbd_builds", stats.finished_by_status.get(state, 0), {"status": state})

    out.family("apbd_build_duration_seconds", "histogram", "Duration of the finished builds kept in the spool.")
    for bound in DURATION_BUCKETS_S:
        count = sum(1 for d in stats.durations if d <= bound)
        out.sample("apbd_build_duration_seconds_bucket", count, {"le": format_number(bound)})
    out.sample("apbd_build_duration_seconds_bucket", len(stats.durations), {"le": "+Inf"})
    out.sample("apbd_build_duration_seconds_sum", round(sum(stats.durations), 3))
    out.sample("apbd_build_duration_seconds_count", len(stats.durations))

    out.family("apbd_queue_length", "gauge", "Builds waiting for a runner.")
    out.sample("apbd_queue_length", stats.queued)
    states = read_runner_states(spool)
    running = sum(len(s.get("running") or []) for s in states)
    out.family("apbd_running_builds", "gauge", "Builds running now, as the runners report them.")
    out.sample("apbd_running_builds", running)
    out.family("apbd_claimed_builds", "gauge", "Jobs with a claimed marker: running, or orphaned by a crash.")
    out.sample("apbd_claimed_builds", stats.claimed)

    out.family("apbd_spool_log_bytes", "gauge", "Bytes of build.log files in the spool.")
    out.sample("apbd_spool_log_bytes", stats.log_bytes)
    out.family("apbd_spool_artifact_bytes", "gauge", "Bytes of package files in the spool.")
    out.sample("apbd_spool_artifact_bytes", stats.artifact_bytes)
    out.family("apbd_spool_builds", "gauge", "Job folders in the spool.")
    out.sample("apbd_spool_builds", stats.total_builds)
    out.family("apbd_spool_stats_age_seconds", "gauge", "Age of the cached spool counts above.")
    out.sample("apbd_spool_stats_age_seconds", round(max(0.0, now - stats.taken_at), 3) if stats.taken_at else -1)

    record = cleanup.read_last_cleanup(spool) or {}
    out.family("apbd_last_cleanup_timestamp_seconds", "gauge", "Unix time of the last cleanup, 0 if none ran.")
    out.sample("apbd_last_cleanup_timestamp_seconds", record.get("time", 0))
    out.family("apbd_last_cleanup_removed_builds", "gauge", "Builds the last cleanup removed.")
    out.sample("apbd_last_cleanup_removed_builds", record.get("removed_count", 0))

    out.family("apbd_runners", "gauge", "Runner state files in the spool.")
    out.sample("apbd_runners", len(states))
    out.family("apbd_runner_heartbeat_age_seconds", "gauge", "Seconds since each runner's last heartbeat.")
    for state in states:
        out.sample("apbd_runner_heartbeat_age_seconds", round(max(0.0, now - state["heartbeat"]), 3),
                   {"runner_id": state["runner_id"]})
    return out.text()
