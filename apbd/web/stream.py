"""GET /build/<id>/stream: a build's output as server-sent events.

The stream sends the log from the client's position, then follows it:

- `output`: one event per log line, the raw line as data (not JSON).
- `status`: {"status": ...} when the stream starts and on every state change.
- `complete`: {"status", "exit_code"} once the build has ended; then the
  server closes the stream.
- `heartbeat`: the server's Unix time, every SSE_HEARTBEAT_S seconds.

Every event carries `id:`, the number of log lines sent up to and including
it. A client that reconnects with that id in Last-Event-ID (EventSource does
so by itself) resumes at the next line, with no gap and no duplicate.

An SSE data field ends at "\\r", "\\n" or "\\r\\n", so a log line containing a
bare "\\r" would otherwise split into a forged second field. The stream drops a
"\\r" that ends a line (CRLF line ends) and sends every other "\\r" as U+240D
(the visible symbol for carriage return). The log on disk keeps its bytes, and
/output returns them unchanged. Because each line is sent as one `data:`
field, a line that looks like "event: complete" is just text.

waitress serves each connection on one worker thread for as long as the
connection lasts, so every open stream occupies a thread. Streams stop at
--threads minus RESERVED_THREADS, and further ones get 503, so open streams
can never starve the other requests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import bottle

from apbd import limits, spool as spool_format
from apbd.errors import not_found
from apbd.web.logfile import WATCHER, acquire_shared, file_signature, read_lines, release_shared

log = logging.getLogger(__name__)

# Worker threads kept free for requests other than streams.
RESERVED_THREADS = 8
# Seconds between checks whether the client went away. waitress notices a
# closed client during a request only with channel_request_lookahead above 0;
# without it, the next write (at the latest the heartbeat) raises instead.
DISCONNECT_CHECK_S = 1.0
# Lines sent in one write.
BATCH_LINES = 500
# Seconds to wait after the final status for the runner's last log lines.
SETTLE_S = 0.2
# Seconds a client should wait before retrying when every stream slot is taken.
RETRY_AFTER_S = 5
# Seconds between two warnings about rejected streams.
REJECT_LOG_INTERVAL_S = 10.0


def encode_event(event: str, data: str, event_id: int) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n".encode("utf-8")


def sse_safe_line(text: str) -> str:
    """Return a log line that fits in one SSE data field (see the module comment)."""
    if text.endswith("\r"):
        text = text[:-1]
    return text.replace("\r", "\u240d")


def encode_line(number: int, text: str) -> bytes:
    """Return the output event of line number (counted from 0): its id is the lines sent with it."""
    return encode_event("output", sse_safe_line(text), number + 1)


def encode_lines(batch: list[tuple[int, str]]) -> bytes:
    return b"".join(encode_line(number, text) for number, text in batch)


def json_error(status: int, error: str, detail: str) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(status=status, body=json.dumps({"error": error, "detail": detail}),
                               headers={"Content-Type": "application/json"})


def parse_last_event_id(value: str | None) -> int:
    """Return the line to resume at from a Last-Event-ID value; 0 if absent or invalid."""
    try:
        number = int((value or "").strip())
    except ValueError:
        return 0
    return max(0, number)


class StreamSlots:
    """The count of open streams, capped so that threads stay free for other requests."""

    def __init__(self):
        self.open = 0
        self.rejected = 0
        self.last_warning = float("-inf")
        self._lock = threading.Lock()

    def acquire(self, capacity: int) -> bool:
        with self._lock:
            if self.open >= capacity:
                return False
            self.open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.open -= 1

    def warn_rejected(self, build_id: str, capacity: int) -> None:
        """Log a rejected stream, at most once per REJECT_LOG_INTERVAL_S with the count since."""
        with self._lock:
            self.rejected += 1
            now = time.monotonic()
            if now - self.last_warning < REJECT_LOG_INTERVAL_S:
                return
            count, self.rejected, self.last_warning = self.rejected, 0, now
        log.warning("build %s: stream rejected because all %d stream slots are open "
                    "(%d rejected since the last warning); raise --threads for more", build_id, capacity, count)


def stream_capacity(ctx) -> int:
    explicit = getattr(ctx, "max_streams", None)
    if explicit:
        return explicit
    threads = getattr(getattr(ctx, "args", None), "threads", None) or 64
    return max(1, threads - RESERVED_THREADS)


def disconnect_check(environ: dict):
    """Return waitress's check for a closed client, or None where it could never fire.

    waitress 3.0 reads from a connection during a request only when its
    channel_request_lookahead is above 0, so without that the check always
    returns False and calling it every second would be wasted wake-ups.
    """
    check = environ.get("waitress.client_disconnected")
    adjustments = getattr(getattr(check, "__self__", None), "adj", None)
    if check is not None and getattr(adjustments, "channel_request_lookahead", 1) == 0:
        return None
    return check


class BuildStream:
    """The events of one client's stream; close() frees its slot exactly once."""

    def __init__(self, ctx, build_id: str, start_line: int, slots: StreamSlots, environ: dict):
        self.ctx = ctx
        self.build_id = build_id
        self.job = ctx.spool.job_dir(build_id)
        self.log_path = self.job / spool_format.LOG_FILE
        self.next_line = max(0, start_line)
        self.log_signature = None
        self.watcher = getattr(ctx, "log_watcher", None) or WATCHER
        # Every stream of this build gets its lines from one reader (see logfile.SharedLog).
        self.shared = acquire_shared(self.log_path, encode_line)
        self.heartbeat_s = float(getattr(ctx, "sse_heartbeat_s", None) or limits.SSE_HEARTBEAT_S)
        self.client_disconnected = disconnect_check(environ)
        self.slots = slots
        self.released = False
        self.events = self.generate_events()

    def __iter__(self):
        return self.events

    def close(self) -> None:
        self.events.close()
        self.release_slot()

    def release_slot(self) -> None:
        if self.released:
            return
        self.released = True
        release_shared(self.shared)
        self.slots.release()
        log.debug("build %s: stream closed at line %d (%d streams open)",
                  self.build_id, self.next_line, self.slots.open)

    def read_state(self) -> tuple[dict | None, dict[Path, tuple | None]]:
        """Return the job's status and the status file's signature, taken before the read."""
        path = self.job / spool_format.STATUS_FILE
        signature = file_signature(path)
        try:
            status = spool_format.read_json(path)
        except (OSError, ValueError) as e:
            log.warning("build %s: unreadable status.json while streaming: %s", self.build_id, e)
            status = None
        return status, {path: signature}

    def generate_events(self):
        try:
            yield from self.follow_build()
        finally:
            self.release_slot()

    def follow_build(self):
        sent_state = None
        changed = True
        status_path = self.job / spool_format.STATUS_FILE
        status_signature = {status_path: ("not read yet",)}
        heartbeat_at = time.monotonic() + self.heartbeat_s
        while True:
            # Files are read again only when the watcher saw them change, so an
            # idle stream does no I/O between heartbeats and disconnect checks.
            if changed:
                # The log changes far more often than the status: one stat
                # tells whether status.json must be parsed again.
                if file_signature(status_path) != status_signature[status_path]:
                    status, status_signature = self.read_state()
                if status is None:
                    log.info("build %s: job folder gone, ending its stream", self.build_id)
                    yield b": the build's job folder was removed\n\n"
                    return
                state = status.get("status")
                if state != sent_state:
                    yield encode_event("status", json.dumps({"status": state}), self.next_line)
                    sent_state = state

                finished = state in spool_format.TERMINAL_STATES
                if finished:
                    # The runner may append its last lines just after the final status.
                    yield from self.send_new_lines(final=False)
                    time.sleep(SETTLE_S)
                yield from self.send_new_lines(final=finished)
                if finished:
                    result = {"status": state, "exit_code": status.get("exit_code")}
                    yield encode_event("complete", json.dumps(result), self.next_line)
                    return

            now = time.monotonic()
            if now >= heartbeat_at:
                yield encode_event("heartbeat", repr(time.time()), self.next_line)
                heartbeat_at = now + self.heartbeat_s
            timeout = heartbeat_at - now
            if self.client_disconnected is not None:
                timeout = min(timeout, DISCONNECT_CHECK_S)
            known = {self.log_path: self.log_signature}
            known.update(status_signature)
            changed = self.watcher.wait(known, max(0.0, timeout))
            if self.client_disconnected is not None and self.client_disconnected():
                log.debug("build %s: stream client went away", self.build_id)
                return

    def send_new_lines(self, *, final: bool):
        """Send the complete lines not yet sent; with final=True also an unterminated last one.

        Lines still in the shared reader's memory go out as its encoded bytes; older
        ones are read from disk, BATCH_LINES at a time.
        """
        while True:
            held = self.shared.read(self.next_line)
            if held is None:
                # Taken before reading, so a line written during the read wakes the next wait.
                self.log_signature = file_signature(self.log_path)
                if not (yield from self.send_from_disk(final=False)):
                    break
                continue
            pieces, self.next_line, self.log_signature = held
            if not pieces:
                break
            for piece in pieces:
                yield piece
        if final:
            while (yield from self.send_from_disk(final=True)):
                pass

    def send_from_disk(self, *, final: bool):
        """Send up to BATCH_LINES lines read from disk; return whether there were any."""
        lines, _ = read_lines(self.log_path, self.next_line, BATCH_LINES, include_partial=final)
        if not lines:
            return False
        yield encode_lines(list(enumerate(lines, start=self.next_line)))
        self.next_line += len(lines)
        return True


def install(app: bottle.Bottle, ctx) -> None:
    """Add GET /build/<build_id>/stream to app."""
    slots = StreamSlots()

    @app.get("/build/<build_id>/stream")
    def stream_build(build_id):
        if not ctx.spool.exists(build_id):
            error = not_found(build_id)
            return json_error(error.status, error.error, error.detail)

        start_line = parse_last_event_id(bottle.request.get_header("Last-Event-ID")
                                         or bottle.request.query.get("last_event_id"))
        capacity = stream_capacity(ctx)
        if not slots.acquire(capacity):
            slots.warn_rejected(build_id, capacity)
            response = json_error(503, "Too many streams",
                                  f"All {capacity} live-output streams are open; retry later or "
                                  f"poll /build/{build_id}/output")
            response.set_header("Retry-After", str(RETRY_AFTER_S))
            return response

        log.debug("build %s: stream opened at line %d (%d streams open)", build_id, start_line, slots.open)
        bottle.response.content_type = "text/event-stream"
        bottle.response.set_header("Cache-Control", "no-cache")
        bottle.response.set_header("X-Accel-Buffering", "no")
        return BuildStream(ctx, build_id, start_line, slots, bottle.request.environ)

    app.stream_slots = slots
