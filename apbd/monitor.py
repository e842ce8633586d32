"""Background sampling of the host's resources for GET / and /health.

GET / must return fast, so nothing is measured inside a request: a thread
samples CPU, memory, the spool's disk, load, uptime and this process every
limits.MONITOR_INTERVAL_S, and snapshot() returns the last sample. CPU usage
comes from psutil.cpu_percent(None), which compares against the previous
call instead of sleeping.

When memory use passes limits.MEMORY_CLEANUP_PERCENT or the spool's disk
passes limits.DISK_CLEANUP_PERCENT, the monitor calls its threshold callback
(cleanup of old builds), at most once per CLEANUP_TRIGGER_MIN_INTERVAL_S.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

from apbd import limits

log = logging.getLogger(__name__)

# Builds only become removable with age, so a cleanup triggered by pressure
# is not repeated more than once an hour.
CLEANUP_TRIGGER_MIN_INTERVAL_S = 3600
# An upload is accepted only if this much space stays free after it.
MIN_FREE_AFTER_UPLOAD_BYTES = 64 * 1024 * 1024
# An upload needs room for the tarball and about as much again for its extraction.
UPLOAD_SPACE_FACTOR = 2


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo, else the machine name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86 kernels name the field "model name", POWER and ARM ones "cpu" or "Hardware".
                if key.strip() in ("model name", "cpu", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_uptime(seconds: float) -> str:
    """Format seconds as "2 days, 5 hours, 30 minutes"."""
    minutes_total = int(max(0, seconds)) // 60
    days, rest = divmod(minutes_total, 24 * 60)
    hours, minutes = divmod(rest, 60)

    def unit(count: int, name: str) -> str:
        return f"{count} {name}" if count == 1 else f"{count} {name}s"

    return f"{unit(days, 'day')}, {unit(hours, 'hour')}, {unit(minutes, 'minute')}"


def spool_root(spool) -> Path:
    """Accept a Spool or a path and return the folder whose filesystem is measured."""
    return Path(getattr(spool, "root", spool))


def disk_info(path: Path) -> dict:
    usage = shutil.disk_usage(path)
    percentage = round(usage.used / usage.total * 100, 1) if usage.total else 0.0
    return {"total": usage.total, "used": usage.used, "free": usage.free, "percentage": percentage}


def process_info(process: psutil.Process) -> dict:
    with process.oneshot():
        try:
            open_files = len(process.open_files())
        except psutil.Error:
            open_files = 0
        return {
            "pid": process.pid,
            "thread_count": process.num_threads(),
            "open_files": open_files,
            "memory_usage": process.memory_info().rss,
        }


def collect_system_info(spool, architecture: str, process: psutil.Process | None = None) -> dict:
    """Measure the host once, in the system_info shape of GET /. Never sleeps."""
    memory = psutil.virtual_memory()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = [0.0, 0.0, 0.0]
    return {
        "architecture": architecture,
        "cpu": {
            "model": cpu_model(),
            "cores": psutil.cpu_count() or 1,
            "usage_percent": psutil.cpu_percent(None),
            "load_average": load,
        },
        "memory": {
            "total": memory.total,
            "available": memory.available,
            "used": memory.total - memory.available,
            "percentage": memory.percent,
        },
        "disk": disk_info(spool_root(spool)),
        "uptime": format_uptime(time.time() - psutil.boot_time()),
        "process_info": process_info(process or psutil.Process()),
    }


def threshold_reason(info: dict) -> str | None:
    """Return why cleanup should run for this sample, or None when no threshold is passed."""
    memory = info["memory"]["percentage"]
    disk = info["disk"]["percentage"]
    if memory > limits.MEMORY_CLEANUP_PERCENT:
        return f"memory use {memory:.1f}% is above {limits.MEMORY_CLEANUP_PERCENT:.0f}%"
    if disk > limits.DISK_CLEANUP_PERCENT:
        return f"disk use {disk:.1f}% of the spool's filesystem is above {limits.DISK_CLEANUP_PERCENT:.0f}%"
    return None


def low_disk_reason(spool, needed_bytes: int) -> str | None:
    """Return why an upload of needed_bytes cannot be stored safely now, or None if it can."""
    root = spool_root(spool)
    usage = shutil.disk_usage(root)
    required = needed_bytes * UPLOAD_SPACE_FACTOR + MIN_FREE_AFTER_UPLOAD_BYTES
    if usage.free < required:
        return (f"Not enough free disk space for this upload: {usage.free // (1024 * 1024)} MiB free in the "
                f"build folder, {required // (1024 * 1024)} MiB needed; try again after old builds are cleaned up")
    return None


def disk_has_room(spool, needed_bytes: int) -> bool:
    """Tell whether the spool's filesystem can take an upload of needed_bytes (POST /build returns 503 if not)."""
    return low_disk_reason(spool, needed_bytes) is None


class ResourceMonitor:
    """A daemon thread that samples the host every interval seconds; snapshot() returns the last sample."""

    def __init__(self, spool, architecture: str, *, interval: float = limits.MONITOR_INTERVAL_S,
                 on_threshold: Callable[[str], object] | None = None,
                 trigger_min_interval: float = CLEANUP_TRIGGER_MIN_INTERVAL_S):
        self.spool = spool
        self.architecture = architecture
        self.interval = interval
        self.on_threshold = on_threshold
        self.trigger_min_interval = trigger_min_interval
        self.sample_count = 0
        self.last_trigger: float | None = None
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict | None = None
        self._sampled_at = 0.0
        # The first cpu_percent(None) call only starts the measurement.
        psutil.cpu_percent(None)

    def sample(self) -> dict:
        """Measure once, store the result for snapshot() and act on thresholds."""
        info = collect_system_info(self.spool, self.architecture, self._process)
        with self._lock:
            self._last = info
            self._sampled_at = time.time()
            self.sample_count += 1
        self.check_thresholds(info)
        return info

    def check_thresholds(self, info: dict) -> None:
        reason = threshold_reason(info)
        if reason is None or self.on_threshold is None:
            return
        now = time.monotonic()
        if self.last_trigger is not None and now - self.last_trigger < self.trigger_min_interval:
            return
        self.last_trigger = now
        log.warning("resource monitor: %s; starting cleanup", reason)
        try:
            self.on_threshold(reason)
        except Exception:
            # The monitor must outlive a failed cleanup; the error is logged in full.
            log.exception("cleanup triggered by the resource monitor failed")

    def snapshot(self) -> dict:
        """Return the last sample; sample once only if none was ever taken."""
        with self._lock:
            last = self._last
        if last is None:
            return self.sample()
        return last

    @property
    def sampled_at(self) -> float:
        return self._sampled_at

    def start(self) -> "ResourceMonitor":
        """Take a first sample now, then keep sampling in a daemon thread."""
        if self._thread is not None:
            return self
        self.sample()
        self._thread = threading.Thread(target=self._run, name="apbd-resource-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        missing_reported = False
        while not self._stop.wait(self.interval):
            try:
                self.sample()
                missing_reported = False
            except FileNotFoundError as e:
                # The spool's folder is gone (unmounted, or a test's folder removed); say so once.
                if not missing_reported:
                    log.warning("resource monitor: the spool folder is missing: %s", e)
                    missing_reported = True
            except Exception:
                # A failed sample must not end monitoring; the next one tries again.
                log.exception("resource monitor sample failed")
