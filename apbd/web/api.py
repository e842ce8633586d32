"""The JSON routes of the APB server API for builds: submit, status, output, files, cancel, and GET /.

Every handler reads the spool, shapes one response and raises ApiError for
anything a client got wrong; app.py turns those into {"error", "detail"}.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import bottle

from apbd import API_VERSION, limits
from apbd import spool as spool_format
from apbd.errors import ApiError
from apbd.web import files, upload
from apbd.web.status import StatusBodies, read_status, status_api, status_with_artifacts_ready

log = logging.getLogger(__name__)

# Seconds GET / reuses its count of queued and running builds. The farm polls
# it often and caches the response for 90 s anyway.
QUEUE_COUNT_CACHE_S = 1.0
# A marker scan slower than this moves out of the request into a background thread.
SLOW_SCAN_S = 0.05
# A runner whose heartbeat is older than this is treated as gone.
RUNNER_ALIVE_S = 3 * limits.HEARTBEAT_INTERVAL_S
TIME_FIELDS = ("created_at", "start_time", "end_time")


# Parameters


def int_param(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    """Read an integer query parameter; raise 400 below minimum, clamp above maximum."""
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "Invalid parameter", f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ApiError(400, "Invalid parameter", f"{name} must be {minimum} or more, not {value}")
    return min(value, maximum) if maximum is not None else value


def bool_param(name: str, default: bool) -> bool:
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes", "on"):
        return True
    if raw.lower() in ("false", "0", "no", "off"):
        return False
    raise ApiError(400, "Invalid parameter", f"{name} must be true or false, not {raw!r}")


def prefers_html() -> bool:
    """Tell whether the client asked for HTML rather than JSON (a browser does)."""
    accept = bottle.request.get_header("Accept", "")
    if "text/html" not in accept:
        return False
    if "application/json" not in accept:
        return True
    return accept.index("text/html") < accept.index("application/json")


# GET /build/ID


def build_details(ctx, build_id: str) -> dict:
    """Build the GET /build/ID JSON: status-api with ISO times, plus the sources."""
    result = status_api(ctx, build_id)
    for name in TIME_FIELDS:
        if name in result:
            result[name] = files.iso_time(result[name])
    result["sources"] = files.short_items(files.list_files(ctx.spool, build_id)["sources"])
    return result


# GET /


class QueueCounter:
    """Counts queued and claimed jobs from their markers, at most once per QUEUE_COUNT_CACHE_S.

    On a small spool the count is made inside the request. Once a scan takes
    longer than SLOW_SCAN_S (about 100,000 jobs take 0.7 s), requests get the
    last count at once and a background thread makes the next one.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._at = 0.0
        self._counts = (0, 0)
        self._scan_seconds = 0.0
        self._refreshing = False

    def counts(self, spool) -> tuple[int, int]:
        with self._lock:
            if self._at and time.monotonic() - self._at < QUEUE_COUNT_CACHE_S:
                return self._counts
            if not self._at or self._scan_seconds < SLOW_SCAN_S:
                self._store(scan_markers(spool))
                return self._counts
            if not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, args=(spool,), name="apbd-queue-count", daemon=True).start()
            return self._counts

    def _refresh(self, spool) -> None:
        try:
            result = scan_markers(spool)
        finally:
            with self._lock:
                self._refreshing = False
        with self._lock:
            self._store(result)

    def _store(self, result: tuple[int, int, float]) -> None:
        queued, claimed, seconds = result
        self._counts = (queued, claimed)
        self._scan_seconds = seconds
        self._at = time.monotonic()


def scan_markers(spool) -> tuple[int, int, float]:
    """Count the jobs holding a `queued` and a `claimed` marker; also return the seconds it took."""
    started = time.monotonic()
    queued = claimed = 0
    with os.scandir(spool.jobs) as entries:
        for entry in entries:
            if not spool_format.is_build_id(entry.name):
                continue
            if os.path.exists(os.path.join(entry.path, spool_format.QUEUED_MARKER)):
                queued += 1
            elif os.path.exists(os.path.join(entry.path, spool_format.CLAIMED_MARKER)):
                claimed += 1
    return queued, claimed, time.monotonic() - started


def read_runners(spool) -> list[dict]:
    """Return the state files of the runners whose heartbeat is recent."""
    alive = []
    now = time.time()
    try:
        paths = sorted(spool.runners.glob("*.json"))
    except FileNotFoundError:
        return []
    for path in paths:
        try:
            state = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and now - number(state.get("heartbeat")) <= RUNNER_ALIVE_S:
            alive.append(state)
    return alive


def number(value) -> float:
    """Return value as a number, 0 for anything a runner state file should not contain."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def queue_status(ctx, counter: QueueCounter) -> dict:
    """Build queue_status with every field the farm reads for load balancing."""
    from apbd.web.history import history_count

    queued, claimed = counter.counts(ctx.spool)
    runners = read_runners(ctx.spool)
    running_ids = [build_id for r in runners for build_id in r.get("running", [])]
    recreation_builds = [b for r in runners for b in r.get("buildroot_recreation_builds", [])]
    max_concurrent = int(sum(number(r.get("max_concurrent")) for r in runners))
    if not max_concurrent:
        max_concurrent = getattr(ctx.args, "max_concurrent", None) or limits.MAX_CONCURRENT_DEFAULT
    current = len(running_ids) if runners else claimed

    current_build = None
    for build_id in running_ids:
        status = ctx.spool.read_status(build_id) if ctx.spool.exists(build_id) else None
        if status:
            current_build = {"build_id": build_id, "pkgname": status.get("pkgname"),
                             "status": status.get("status"), "start_time": status.get("start_time"),
                             "buildroot_recreation": build_id in recreation_builds}
            break
    return {
        "current_builds_count": current,
        "queued_builds": queued,
        "max_concurrent_builds": max_concurrent,
        "current_build": current_build,
        "total_active_builds": current + queued,
        "build_history_count": history_count(ctx.spool),
        "buildroot_recreation_count": int(sum(number(r.get("buildroot_recreation_count")) for r in runners)),
        "buildroot_recreation_builds": recreation_builds,
        "server_busy_with_buildroot": any(bool(r.get("server_busy_with_buildroot")) for r in runners),
    }


def builder_info(ctx) -> dict:
    """Describe the builder the runners use, from their state files."""
    runners = read_runners(ctx.spool)
    if not runners:
        return {"name": None, "runners": [],
                "note": "No runner is alive: builds stay queued until apbd-runner starts"}
    first = runners[0]
    info = {"name": first.get("builder"), "clean_chroot": bool(first.get("clean_chroot")),
            "sandbox": first.get("sandbox"), "runners": [r.get("runner_id") for r in runners]}
    if first.get("builder_note"):
        info["note"] = first["builder_note"]
    return info


def system_info(ctx) -> dict:
    """Return the resource monitor's last sample; nothing is measured inside the request."""
    monitor = getattr(ctx, "monitor", None)
    if monitor is not None:
        return monitor.snapshot()
    return {"architecture": ctx.architecture}


def server_info(ctx, counter: QueueCounter) -> dict:
    return {
        "status": "running",
        "version": API_VERSION,
        "supported_architecture": ctx.architecture,
        "system_info": system_info(ctx),
        "queue_status": queue_status(ctx, counter),
        "builder": builder_info(ctx),
    }


# Cancelling


def cancel_build(ctx, build_id: str) -> dict:
    """Cancel a queued build at once, or ask the runner to stop a running one.

    Cancelling a cancelled build returns 200 again, so a retried cancel succeeds.
    A completed or failed build cannot be cancelled: 409 with the reason.
    """
    status = read_status(ctx, build_id)
    state = status.get("status")
    if state == spool_format.CANCELLED:
        return {"success": True, "message": "Build was already cancelled"}
    if state in spool_format.TERMINAL_STATES:
        raise ApiError(409, "Build already finished",
                       f"Build '{build_id}' is already {state}; only queued or building builds can be cancelled")
    if ctx.spool.cancel_if_queued(build_id):
        log.info("build %s cancelled before it started", build_id)
        return {"success": True, "message": "Build cancelled successfully"}
    ctx.spool.request_cancel(build_id)
    log.info("build %s: cancel requested from the runner", build_id)
    return {"success": True, "message": "Build cancellation requested; the runner stops it within seconds"}


# Routes


def install(app: bottle.Bottle, ctx) -> None:
    """Add the build routes and GET / to app."""
    counter = QueueCounter()
    bodies = ctx.status_bodies = StatusBodies(ctx)

    @app.get("/")
    def get_index():
        info = server_info(ctx, counter)
        pages = getattr(ctx, "pages", None)
        if pages is not None and prefers_html():
            return pages.render_index(ctx, info)
        return info

    @app.post("/build")
    def post_build():
        return upload.submit_build(ctx)

    @app.get("/build/<build_id>")
    def get_build(build_id):
        info = build_details(ctx, build_id)
        pages = getattr(ctx, "pages", None)
        if pages is not None and prefers_html():
            return pages.render_build(ctx, build_id, info)
        return info

    # StatusPolls (see main.py) serves most GETs of these two routes before bottle sees them.
    @app.get("/build/<build_id>/status-api")
    def get_status_api(build_id):
        bottle.response.content_type = "application/json"
        return bodies.get(build_id).body

    @app.get("/build/<build_id>/status")
    def get_status(build_id):
        return status_with_artifacts_ready(ctx, bodies.get(build_id).result)

    @app.get("/build/<build_id>/output")
    def get_output(build_id):
        read_status(ctx, build_id)
        start_index = int_param("start_index", 0, 0)
        limit = int_param("limit", limits.OUTPUT_LIMIT_DEFAULT, 1, limits.OUTPUT_LIMIT_MAX)
        lines, total = files.read_output(ctx.spool, build_id, start_index, limit)
        return {"output": lines, "total_lines": total, "start_index": start_index, "returned_lines": len(lines)}

    @app.route("/build/<build_id>/download/<filename>", method=["GET", "HEAD"])
    def get_download(build_id, filename):
        read_status(ctx, build_id)
        path = files.resolve_file(ctx.spool, build_id, filename)
        if path is None:
            raise files.file_not_found(filename)
        return files.send_file(path, filename)

    @app.get("/build/<build_id>/packages")
    def get_packages(build_id):
        read_status(ctx, build_id)
        return {"build_id": build_id, "packages": files.list_files(ctx.spool, build_id)["packages"]}

    @app.post("/build/<build_id>/cancel")
    def post_cancel(build_id):
        return cancel_build(ctx, build_id)

    @app.post("/admin/cleanup")
    def post_cleanup():
        from apbd.cleanup import run_cleanup

        result = run_cleanup(ctx.spool)
        return {"success": result["success"], "message": result["message"], "cleanup_id": result["cleanup_id"],
                "removed_count": len(result.get("removed", [])), "errors": result.get("errors", [])}
