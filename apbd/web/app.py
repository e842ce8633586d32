"""The Bottle application of apbd-web: its context, its routes and its error handling.

Every error leaves as JSON {"error", "detail"}: an ApiError with its own
status, bottle's 404 and 405 for unknown paths and methods, and any other
exception as 500 with "type" added. The traceback goes to the log only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import bottle

from apbd import spool as spool_format
from apbd.errors import ApiError
from apbd.spool import Spool
from apbd.web.timeouts import DISK_FULL_ERRNOS

log = logging.getLogger(__name__)

# Modules of other parts of apbd-web that add routes with install(app, ctx), in
# this order; a module not (yet) in the tree is skipped.
ROUTE_MODULES = ("apbd.web.access", "apbd.web.history", "apbd.web.stream", "apbd.web.pages",
                 "apbd.web.ops", "apbd.web.openapi")
# bottle's own errors, in the API's words.
BOTTLE_ERROR_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "File too large",
    500: "Internal server error",
}


@dataclass
class WebContext:
    """The state every route needs: the spool, the options, the architecture and the templates."""

    spool: Spool
    args: argparse.Namespace
    architecture: str
    templates: Any = None
    started_at: float = field(default_factory=time.time)
    # Set by install() of other modules: the resource monitor, spool statistics, the pages module,
    # the cache of status-api bodies (apbd.web.status.StatusBodies).
    monitor: Any = None
    spool_stats: Any = None
    pages: Any = None
    status_bodies: Any = None


def make_templates():
    """Return a jinja2 Environment over www/templates, or None where www/ is not installed."""
    import jinja2

    from apbd.paths import www_dir

    try:
        folder = www_dir() / "templates"
    except FileNotFoundError as e:
        log.warning("%s; HTML pages are not available", e)
        return None
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=True)


def json_response(status: int, body: dict, headers: dict | None = None) -> bottle.HTTPResponse:
    response = bottle.HTTPResponse(json.dumps(body), status, headers=headers)
    response.content_type = "application/json"
    return response


def internal_error(exception: BaseException) -> dict:
    """Describe an unexpected exception for the client without server paths.

    An OSError's message names the file it failed on, which would show the
    spool's location, so only its error text goes out; the full message is in
    the server's log.
    """
    if isinstance(exception, OSError) and exception.strerror:
        detail = exception.strerror
    else:
        detail = str(exception) or type(exception).__name__
    return {"error": "Internal server error", "detail": detail, "type": type(exception).__name__}


def api_errors_plugin(callback):
    """Wrap a route so an ApiError becomes its JSON response and any other exception a JSON 500."""

    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except bottle.HTTPResponse:
            raise
        except ApiError as e:
            return json_response(e.status, e.to_json())
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                log.exception("%s %s failed", bottle.request.method, bottle.request.path)
                return json_response(500, internal_error(e))
            log.warning("%s %s failed: the disk is full: %s", bottle.request.method, bottle.request.path, e)
            return json_response(503, {"error": "Insufficient disk space",
                                       "detail": f"No space left on the server's disk ({e.strerror}); "
                                                 "try again after old builds are cleaned up"})
        except Exception as e:
            log.exception("%s %s failed", bottle.request.method, bottle.request.path)
            return json_response(500, internal_error(e))

    return wrapper


def canonical_build_id(value: str) -> str:
    """Return value in lower case when that makes it a build id, as the spool stores them; else value."""
    lower = value.lower()
    return lower if spool_format.is_build_id(lower) else value


def build_id_case_plugin(callback):
    """Wrap a route so its build_id URL argument arrives in lower case, whatever case the client sent.

    Build ids are UUIDs, whose hex digits RFC 4122 (section 3) makes
    case-insensitive on input, and POST /build stores them in lower case.
    """

    def wrapper(*args, **kwargs):
        build_id = kwargs.get("build_id")
        if build_id is not None:
            kwargs["build_id"] = canonical_build_id(build_id)
        return callback(*args, **kwargs)

    return wrapper


def bottle_error_handler(error: bottle.HTTPError) -> str:
    """Turn bottle's own errors (unknown path, wrong method, failures outside routes) into JSON."""
    bottle.response.content_type = "application/json"
    status = error.status_code
    if status >= 500:
        if error.exception is not None:
            log.error("%s %s failed: %s", bottle.request.method, bottle.request.path, error.traceback)
            return json.dumps(internal_error(error.exception))
        return json.dumps({"error": "Internal server error", "detail": str(error.body), "type": "HTTPError"})
    title = BOTTLE_ERROR_TITLES.get(status, error.status_line.split(" ", 1)[-1])
    detail = error.body if isinstance(error.body, str) and error.body else title
    if status == 404 and detail.startswith("Not found:"):
        detail = f"No such endpoint: {bottle.request.method} {bottle.request.path}"
    elif status == 405:
        detail = f"{bottle.request.method} is not allowed on {bottle.request.path}; allowed: {error.headers.get('Allow', '')}"
    return json.dumps({"error": title, "detail": detail})


def install_other_modules(app: bottle.Bottle, ctx: WebContext) -> None:
    for name in ROUTE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            log.info("%s is not installed: its routes are not served", name)
            continue
        if name == "apbd.web.pages":
            ctx.pages = module
        module.install(app, ctx)


def make_app(ctx: WebContext) -> bottle.Bottle:
    """Create the Bottle app with every route of apbd-web."""
    from apbd.web import api

    app = bottle.Bottle(catchall=True)
    app.install(api_errors_plugin)
    app.install(build_id_case_plugin)
    app.default_error_handler = bottle_error_handler
    api.install(app, ctx)
    install_other_modules(app, ctx)
    return app
