"""The HTML pages: index, build, confirm-cancel, file view, cleanup; and /static.

GET / and GET /build/<id> belong to the JSON API; when a browser requests
HTML, those routes call render_index and render_build with the very dict
they would send as JSON. The other pages are routes of this module.

The confirm-cancel page posts a plain HTML form to POST /build/<id>/confirm-cancel,
so cancelling works without JavaScript. That route cancels through the API's
own cancel_build and responds with 303 See Other to the build page, which then
shows a one-time notice about the outcome.

Templates live in www/templates with autoescaping on, so text from a build
(package names, log lines, file contents) is always escaped. Pages load
scripts only from /static and send a Content-Security-Policy that forbids
inline scripts, so even a missed escape could not run one.
"""

from __future__ import annotations

import itertools
import json
import logging
import mimetypes
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import bottle
import jinja2
import psutil

from apbd import cleanup, limits, paths, spool as spool_format
from apbd.errors import ApiError, not_found
from apbd.web import api, chart, files, history
from apbd.web.logfile import read_lines

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
ACTIVE_STATES = (spool_format.QUEUED, spool_format.BUILDING)
# Builds in the index page's table and chart.
INDEX_BUILDS = 30
# Lines of a file shown on one page of /view.
VIEW_PAGE_LINES = 5000
# Bytes of a file read to tell text from binary.
SNIFF_BYTES = 8192
# A runner whose heartbeat is older than this many intervals counts as dead.
RUNNER_STALE_INTERVALS = 3

# The build page shows a notice once after the cancel form. The cookie carries only
# a key of BUILD_NOTICES, so no text from a request ever reaches the page.
NOTICE_COOKIE = "apbd_notice"
NOTICE_MAX_AGE_S = 60
NOTICE_CANCELLED = "cancelled"
NOTICE_CANCEL_REQUESTED = "cancel-requested"
NOTICE_NOT_CANCELLED = "not-cancelled"
BUILD_NOTICES = {
    NOTICE_CANCELLED: "The build was cancelled.",
    NOTICE_CANCEL_REQUESTED: "Cancel requested: the runner stops the build within seconds.",
    NOTICE_NOT_CANCELLED: "The build had already finished, so it was not cancelled.",
}

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def visible_text(text: str) -> str:
    """Drop ANSI colour sequences and show other control characters as their symbols (NUL as U+2400)."""
    text = _ANSI_ESCAPE.sub("", text)
    return _CONTROL_CHARS.sub(lambda m: "\u2421" if m.group() == "\x7f" else chr(0x2400 + ord(m.group())), text)


def format_time(value) -> str:
    """Format a Unix time or an ISO 8601 string as "2024-01-20 10:00:00 UTC"; "–" when unknown."""
    if value is None or value == "":
        return "–"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return value
    return datetime.fromtimestamp(float(value), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_size(size) -> str:
    if not isinstance(size, (int, float)):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def make_templates() -> jinja2.Environment:
    """Create the jinja2 environment over www/templates with apbd's filters."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(paths.www_dir() / "templates")),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(time=format_time, duration=chart.format_duration, size=format_size,
                       visible=visible_text, urlpart=lambda s: quote(str(s), safe=files.URL_SAFE_CHARS))
    return env


_default_templates: jinja2.Environment | None = None


def templates(ctx) -> jinja2.Environment:
    """Return ctx.templates when the app made one, else this module's own environment."""
    global _default_templates
    env = getattr(ctx, "templates", None)
    if env is not None:
        for name, function in make_templates().filters.items():
            env.filters.setdefault(name, function)
        return env
    if _default_templates is None:
        _default_templates = make_templates()
    return _default_templates


def render(ctx, name: str, **values) -> str:
    bottle.response.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return templates(ctx).get_template(name).render(**values)


def html_response(body: str, status: int = 200) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(body, status, headers={"Content-Type": "text/html; charset=utf-8",
                                                      "Content-Security-Policy": CONTENT_SECURITY_POLICY})


def error_response(error: ApiError) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(json.dumps(error.to_json()), error.status,
                               headers={"Content-Type": "application/json"})


# Facts the pages show beside the JSON

def read_runners(spool: spool_format.Spool, now: float | None = None) -> list[dict]:
    """Return the runner state files, each with `alive` set from its heartbeat's age."""
    now = time.time() if now is None else now
    runners = []
    for path in sorted(spool.runners.glob("*.json")):
        try:
            state = spool_format.read_json(path)
        except (OSError, ValueError) as e:
            log.warning("unreadable runner state file %s: %s", path, e)
            continue
        if not isinstance(state, dict):
            continue
        heartbeat = state.get("heartbeat")
        state["alive"] = (isinstance(heartbeat, (int, float))
                          and now - heartbeat < RUNNER_STALE_INTERVALS * limits.HEARTBEAT_INTERVAL_S)
        runners.append(state)
    return runners


def builder_sentence(runners: list[dict]) -> str:
    """Describe in one sentence how builds run here, saying plainly when no clean chroot is used."""
    alive = [r for r in runners if r.get("alive")]
    if not alive:
        return "No runner is running, so builds stay queued until apbd-runner starts."
    runner = alive[0]
    if runner.get("builder_note"):
        return runner["builder_note"]
    if runner.get("clean_chroot"):
        return f"Builds run with {runner.get('builder', 'makechrootpkg')} in a clean chroot."
    return f"Builds run with {runner.get('builder', 'makepkg')} without a clean chroot."


def recent_builds(spool: spool_format.Spool, limit: int) -> list[dict]:
    """Return the newest builds, newest first, read through the history index."""
    builds = [summarize_build(status) for status in itertools.islice(history.newest_builds(spool), limit)]
    now = time.time()
    for build in builds:
        build["elapsed"] = chart.build_duration(build, now)
    return builds


def summarize_build(status: dict) -> dict:
    return {
        "build_id": status.get("build_id"),
        "pkgname": status.get("pkgname"),
        "version": status.get("version"),
        "status": status.get("status"),
        "created_at": status.get("created_at"),
        "start_time_unix": status.get("start_time"),
        "duration": status.get("duration"),
    }


# The two pages rendered for the API's routes

def render_index(ctx, info: dict) -> str:
    """Render the index page from the dict GET / returns as JSON."""
    builds = recent_builds(ctx.spool, INDEX_BUILDS)
    runners = read_runners(ctx.spool)
    return render(ctx, "index.html", info=info, builds=builds, runners=runners,
                  builder=builder_sentence(runners), chart=chart.render_duration_chart(builds),
                  now=time.time())


def render_build(ctx, build_id: str, info: dict) -> str:
    """Render the build page from the dict GET /build/<id> returns as JSON.

    The Arch row shows info's arch, the one status-api reports, and adds the
    PKGBUILD's whole arch array from status.json when that differs.
    """
    status = ctx.spool.read_status(build_id) or {}
    return render(ctx, "build.html", build_id=build_id, info=info, status=status,
                  active=info.get("status") in ACTIVE_STATES, pkgbuild_arch=as_list(status.get("arch")),
                  notice=take_notice(build_id))


def as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def take_notice(build_id: str) -> str | None:
    """Return the text of the notice cookie the cancel form set for this build, and delete the cookie."""
    key = bottle.request.get_cookie(NOTICE_COOKIE)
    if key is None:
        return None
    bottle.response.delete_cookie(NOTICE_COOKIE, path=build_path(build_id))
    return BUILD_NOTICES.get(key)


def build_path(build_id: str) -> str:
    return f"/build/{build_id}"


# The pages this module serves itself

def is_text_file(path: Path, filename: str) -> bool:
    """Tell text from binary by the first bytes: NUL or invalid UTF-8 means binary; build.log is text."""
    if filename == spool_format.LOG_FILE:
        return True
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut at the end of the sample is still text.
        return e.start >= len(head) - 3
    return True


def view_file(ctx, build_id: str, filename: str):
    path = files.resolve_file(ctx.spool, build_id, filename)
    if path is None:
        if not ctx.spool.exists(build_id):
            return error_response(not_found(build_id))
        return error_response(files.file_not_found(filename))
    if not is_text_file(path, filename):
        bottle.redirect(files.download_url(build_id, filename), 302)
    try:
        start = max(0, int(bottle.request.query.get("start", "0")))
    except ValueError:
        return error_response(ApiError(400, "Invalid start", "start must be a line number (0 or more)"))
    lines, total = read_lines(path, start, VIEW_PAGE_LINES)
    return html_response(render(ctx, "view.html", build_id=build_id, filename=filename, lines=lines,
                                start=start, total=total, page=VIEW_PAGE_LINES,
                                download_url=files.download_url(build_id, filename)))


def confirm_cancel(ctx, build_id: str):
    status = ctx.spool.read_status(build_id) if ctx.spool.exists(build_id) else None
    if status is None:
        return error_response(not_found(build_id))
    return html_response(render(ctx, "confirm_cancel.html", build_id=build_id, status=status,
                                active=status.get("status") in ACTIVE_STATES))


def cancel_from_form(ctx, build_id: str):
    """Cancel the build with the API's cancel_build, then redirect (303) to the build page with a notice.

    A build that already finished is not an error here: the browser goes back
    to the build page, which shows a notice about it. Other errors stay JSON,
    as on every page.
    """
    try:
        api.cancel_build(ctx, build_id)
    except ApiError as e:
        if e.status != 409:
            return error_response(e)
        log.info("build %s: not cancelled from the web form: %s", build_id, e.detail)
        notice = NOTICE_NOT_CANCELLED
    else:
        status = ctx.spool.read_status(build_id) or {}
        notice = NOTICE_CANCELLED if status.get("status") == spool_format.CANCELLED else NOTICE_CANCEL_REQUESTED
    response = bottle.HTTPResponse(status=303, headers={"Location": build_path(build_id)})
    response.set_cookie(NOTICE_COOKIE, notice, path=build_path(build_id), max_age=NOTICE_MAX_AGE_S,
                        httponly=True, samesite="strict")
    return response


def cleanup_page(ctx):
    plan = cleanup.plan_cleanup(ctx.spool)
    memory = psutil.virtual_memory()
    return html_response(render(ctx, "cleanup.html", plan=plan, max_age_days=plan["max_age_days"],
                                memory={"percentage": memory.percent, "available": memory.available,
                                        "total": memory.total},
                                memory_threshold=limits.MEMORY_CLEANUP_PERCENT,
                                disk_threshold=limits.DISK_CLEANUP_PERCENT))


def serve_static(filepath: str):
    root = (paths.www_dir() / "static").resolve()
    not_found_error = ApiError(404, "File not found", f"No static file named '{filepath}'")
    if any(part.startswith(".") for part in Path(filepath).parts):
        return error_response(not_found_error)
    try:
        target = (root / filepath).resolve()
        found = target.is_relative_to(root) and target.is_file()
    except (OSError, ValueError):
        # A name too long for the filesystem, or one with a NUL byte, names no file.
        found = False
    if not found:
        return error_response(not_found_error)
    mimetype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if mimetype.startswith("text/") or mimetype == "application/javascript":
        mimetype += "; charset=utf-8"
    return bottle.static_file(str(target.relative_to(root)), root=str(root), mimetype=mimetype)


def install(app: bottle.Bottle, ctx) -> None:
    """Add the HTML pages and /static/<path> to app."""
    app.route("/build/<build_id>/confirm-cancel", "GET", lambda build_id: confirm_cancel(ctx, build_id))
    app.route("/build/<build_id>/confirm-cancel", "POST", lambda build_id: cancel_from_form(ctx, build_id))
    app.route("/build/<build_id>/view/<filename:path>", "GET",
              lambda build_id, filename: view_file(ctx, build_id, filename))
    app.route("/admin/cleanup", "GET", lambda: cleanup_page(ctx))
    app.route("/static/<filepath:path>", "GET", serve_static)
