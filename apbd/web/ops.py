"""Routes for operators: GET /health and GET /metrics.

install() also starts the background work these routes read from: the
resource monitor (its samples feed GET / as well) and the spool statistics.
The monitor's threshold callback runs a cleanup of old builds.
"""

from __future__ import annotations

import gc
import logging
import threading

import bottle

from apbd import cleanup, health, metrics
from apbd.monitor import ResourceMonitor

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def start_threshold_cleanup(spool):
    """Return a callback that runs a cleanup in its own thread, so sampling goes on meanwhile."""

    def on_threshold(reason: str) -> None:
        # Under memory pressure, free what this process no longer uses before cleaning up.
        gc.collect()

        def run() -> None:
            result = cleanup.run_cleanup(spool, reason=reason)
            log.info("threshold cleanup %s: %s", result["cleanup_id"], result["message"])

        threading.Thread(target=run, name="apbd-threshold-cleanup", daemon=True).start()

    return on_threshold


def ensure_monitor(ctx) -> ResourceMonitor:
    """Return ctx.monitor, creating and starting it when the web app has none yet."""
    monitor = getattr(ctx, "monitor", None)
    if monitor is None:
        monitor = ResourceMonitor(ctx.spool, ctx.architecture, on_threshold=start_threshold_cleanup(ctx.spool))
        monitor.start()
        ctx.monitor = monitor
    return monitor


def ensure_stats(ctx) -> metrics.SpoolStats:
    """Return ctx.spool_stats, creating it and starting its refresh thread when missing."""
    stats = getattr(ctx, "spool_stats", None)
    if stats is None:
        stats = metrics.SpoolStats(ctx.spool)
        stats.start()
        ctx.spool_stats = stats
    return stats


def install(app: bottle.Bottle, ctx) -> None:
    """Add GET /health and GET /metrics to app, and start the monitor and the spool statistics."""
    ensure_monitor(ctx)
    stats = ensure_stats(ctx)

    @app.get("/health")
    def get_health():
        status, body = health.run_checks(ctx.spool, stats)
        bottle.response.status = status
        bottle.response.set_header("Cache-Control", "no-store")
        return body

    @app.get("/metrics")
    def get_metrics():
        snapshot = stats.snapshot()
        if not snapshot.taken_at:
            # The first background scan has not finished yet; count once now.
            snapshot = stats.refresh()
        bottle.response.content_type = METRICS_CONTENT_TYPE
        bottle.response.set_header("Cache-Control", "no-store")
        return metrics.render_metrics(ctx.spool, snapshot)
