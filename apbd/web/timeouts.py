"""Request timeouts: 408 for uploads that do not arrive in time and handlers that take too long.

Two places enforce them, because waitress reads a whole request before any
WSGI code runs:

- While a request arrives, waitress's event loop owns it. TimeoutChannel and
  the server's maintenance hook respond 408 and close the connection when a
  request has not fully arrived within the submit timeout, or its client has
  sent nothing for the channel timeout. waitress keeps such a body in an
  unlinked temporary file, so closing the connection removes it.
- Once it has arrived, TimeoutMiddleware runs the handler in a pool thread and
  responds 408 itself when the handler has not returned within the submit
  timeout (POST /build) or the request timeout (everything else). The waitress
  worker is free again at once. Python cannot stop a thread, so the handler runs
  on: its Deadline raises 408 at the next check(), so it removes its partial
  files, and commit() makes sure it never publishes after a 408.

The channel also responds 503 as soon as a request's headers announce a body
the spool's disk cannot take, and when buffering a body runs out of space.

Streams (/build/ID/stream) and file downloads have no timeout: the middleware
only times the handler, and a download's body is sent after the handler returns.

The status polls (GET /build/ID/status-api and /build/ID/status) run inline in
the waitress worker, without the pool. Most of them never get here:
apbd.web.status.StatusPolls serves them from its cache in front of this
middleware. The ones it passes on (HEAD, unknown builds, ids in upper case)
read at most one small status.json and list packages/, well under a
millisecond, while the pool's two thread switches cost more CPU than the
handler itself. Every other request keeps the pool and its 408.
NOTE: a status poll on a disk that stops answering gets no 408; it holds its
waitress worker until the disk answers.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import Error as WaitressError

from apbd.errors import ApiError

log = logging.getLogger(__name__)

TIMEOUT_ERROR = "Request timeout"
TIMEOUT_DETAIL = "Request took too long to process"

# OSError numbers meaning the disk (or the user's quota) is full.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

_local = threading.local()

# Paths whose GET handlers only read small files of one job: served without the pool.
INLINE_PATH_RE = re.compile(r"/build/[0-9a-f-]{36}/status(?:-api)?/?")
INLINE_METHODS = ("GET", "HEAD")


class Deadline:
    """The time by which one request needs its response, shared by its handler and the middleware."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._expired = False
        self._committed = False

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expire(self) -> bool:
        """Mark the request as timed out; return False when the handler already committed."""
        with self._lock:
            if self._committed:
                return False
            self._expired = True
            return True

    def check(self) -> None:
        """Raise ApiError 408 when the middleware has given up on this request."""
        if self._expired or time.monotonic() > self.at + 1.0:
            raise timeout_error()

    def commit(self) -> None:
        """Promise the middleware to wait for the result; raise 408 when it is too late for that."""
        with self._lock:
            if self._expired:
                raise timeout_error()
            self._committed = True


class _NoDeadline(Deadline):
    def __init__(self):
        super().__init__(float("inf"))


def timeout_error() -> ApiError:
    return ApiError(408, TIMEOUT_ERROR, TIMEOUT_DETAIL)


def current_deadline() -> Deadline:
    """Return the deadline of the request this thread serves (none outside the middleware)."""
    return getattr(_local, "deadline", None) or _NoDeadline()


def is_streaming(environ: dict) -> bool:
    return environ.get("PATH_INFO", "").endswith("/stream")


def is_quick_read(environ: dict) -> bool:
    """Tell whether the request is a status poll, whose handler cannot take long."""
    return (environ.get("REQUEST_METHOD") in INLINE_METHODS
            and INLINE_PATH_RE.fullmatch(environ.get("PATH_INFO", "")) is not None)


def is_submission(environ: dict) -> bool:
    return environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO", "").rstrip("/") == "/build"


def json_body(status: int, error: str, detail: str) -> bytes:
    return json.dumps({"error": error, "detail": detail}).encode()


class TimeoutMiddleware:
    """WSGI middleware that responds 408 when the wrapped app does not return in time."""

    def __init__(self, app, *, submit_timeout: float, request_timeout: float, workers: int):
        self.app = app
        self.submit_timeout = submit_timeout
        self.request_timeout = request_timeout
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apbd-handler")

    def __call__(self, environ, start_response):
        if is_streaming(environ) or is_quick_read(environ):
            return self.app(environ, start_response)
        seconds = self.submit_timeout if is_submission(environ) else self.request_timeout
        deadline = Deadline(seconds)
        started: list = []

        def capture_start(status, headers, exc_info=None):
            started[:] = [status, headers, exc_info]
            return lambda data: None

        def run():
            if deadline._expired:
                return []
            _local.deadline = deadline
            try:
                return self.app(environ, capture_start)
            finally:
                _local.deadline = None

        future = self.executor.submit(run)
        try:
            body = future.result(timeout=deadline.remaining())
        except FutureTimeout:
            if deadline.expire():
                log.warning("%s %s timed out after %g s: responded 408", environ.get("REQUEST_METHOD"),
                            environ.get("PATH_INFO"), seconds)
                future.add_done_callback(close_late_body)
                start_response("408 Request Timeout", [("Content-Type", "application/json")])
                return [json_body(408, TIMEOUT_ERROR, TIMEOUT_DETAIL)]
            body = future.result()
        start_response(*started)
        return body

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def close_late_body(future) -> None:
    """Close the body of a response that will never be sent."""
    if future.cancelled() or future.exception() is not None:
        return
    body = future.result()
    if hasattr(body, "close"):
        body.close()


# waitress: uploads that do not arrive in time


class RequestTimeout(WaitressError):
    code = 408
    reason = "Request Timeout"


# waitress's own error reasons, in the words of the API's error titles.
WAITRESS_ERROR_TITLES = {
    400: "Bad request",
    408: TIMEOUT_ERROR,
    503: "Insufficient disk space",
    413: "File too large",
    431: "Request header fields too large",
    500: "Internal server error",
    501: "Not implemented",
}


class JsonErrorTask(ErrorTask):
    """waitress's error response, in the API's JSON shape instead of plain text."""

    def execute(self):
        error = self.request.error
        title = WAITRESS_ERROR_TITLES.get(error.code, error.reason)
        detail = str(error.body)
        if error.code == 413:
            detail = f"Request body {detail}"
        body = json_body(error.code, title, detail)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class TimedParser(HTTPRequestParser):
    """waitress's request parser, remembering when the request's first bytes arrived."""

    def __init__(self, adj):
        super().__init__(adj)
        self.started = time.monotonic()


class InsufficientStorage(WaitressError):
    code = 503
    reason = "Service Unavailable"


class TimeoutChannel(HTTPChannel):
    error_task_class = JsonErrorTask
    parser_class = TimedParser
    timed_out = False

    def received(self, data):
        # After an error response the rest of the body is dropped, never parsed as a request.
        if self.timed_out:
            return False
        try:
            result = super().received(data)
        except OSError as e:
            # waitress could not buffer the body to its temporary file.
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            log.warning("request from %s: no space left to buffer its body", self.addr)
            self.respond_error(InsufficientStorage("No space left on the server's disk for this request; "
                                                  "try again after old builds are cleaned up"))
            return False
        self.check_body_space()
        return result

    def check_body_space(self) -> None:
        """Reject a body the spool's disk cannot take as soon as its headers have arrived."""
        request = self.request
        disk_check = getattr(self.server, "apbd_disk_check", None)
        if request is None or disk_check is None or not request.headers_finished:
            return
        if getattr(request, "space_checked", False) or not request.content_length:
            return
        request.space_checked = True
        reason = disk_check(request.content_length)
        if reason:
            log.warning("request from %s with a %d-byte body rejected: %s", self.addr, request.content_length,
                        reason)
            self.respond_error(InsufficientStorage(reason))

    def respond_timeout(self, detail: str) -> None:
        """Respond 408 to the request still arriving and close the connection after it."""
        self.respond_error(RequestTimeout(detail))

    def respond_error(self, error: WaitressError) -> None:
        """Respond with error to the request still arriving and close the connection after it."""
        with self.requests_lock:
            request = self.request
            if request is None or request.completed:
                request = self.parser_class(self.adj)
            request.error = error
            request.completed = True
            self.request = None
            self.timed_out = True
            self.requests.append(request)
            if len(self.requests) == 1:
                self.server.add_task(self)


def find_late_requests(server: BaseWSGIServer, now_monotonic: float, submit_timeout: float,
                       idle_timeout: float) -> None:
    cutoff = time.time() - idle_timeout
    for channel in list(server.active_channels.values()):
        request = getattr(channel, "request", None)
        if not isinstance(channel, TimeoutChannel) or request is None or request.completed:
            continue
        if not getattr(request, "started", None) or not request.header_bytes_received:
            continue
        if now_monotonic - request.started > submit_timeout:
            log.warning("request from %s not fully received within %g s: responded 408", channel.addr,
                        submit_timeout)
            channel.respond_timeout(f"The request did not arrive completely within {submit_timeout:g} s")
        elif channel.last_activity < cutoff:
            log.warning("request from %s sent nothing for %g s: responded 408", channel.addr, idle_timeout)
            channel.respond_timeout(f"The client sent nothing for {idle_timeout:g} s")


def install_on_server(server, *, submit_timeout: float, idle_timeout: float, disk_check=None) -> None:
    """Make a waitress server (from create_server) respond 408 to late uploads, and errors in JSON.

    disk_check(content_length) returns why a body of that size cannot be
    stored now, or None; such a request gets 503 before its body is read.
    """
    servers = [server] if isinstance(server, BaseWSGIServer) else [
        s for s in getattr(server, "map", {}).values() if isinstance(s, BaseWSGIServer)]
    for one in servers:
        one.channel_class = TimeoutChannel
        one.apbd_disk_check = disk_check
        plain_maintenance = one.maintenance

        def maintenance(now, one=one, plain_maintenance=plain_maintenance):
            find_late_requests(one, time.monotonic(), submit_timeout, idle_timeout)
            plain_maintenance(now)

        one.maintenance = maintenance
