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

All streams of one build share a BuildFeed. One poller thread reads the
build's status.json and new log lines once per tick and wakes the streams,
and each stream only sends the bytes the feed already encoded. With 500
followers of one build, this keeps the work per tick close to 500 socket
writes instead of 500 stats, reads and encodings of the same lines.
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
from apbd.web.logfile import POLLER, SharedLog, file_signature, read_lines

log = logging.getLogger(__name__)

# Worker threads kept free for requests other than streams.
RESERVED_THREADS = 8
# Seconds between checks whether the client went away. waitress notices a
# closed client during a request only with channel_request_lookahead above 0;
# without it, the next write (at the latest the heartbeat) raises instead.
DISCONNECT_CHECK_S = 1.0
# Lines read from disk and sent in one write.
BATCH_LINES = 500
# Bytes of buffered lines joined into one write. A stream far behind sends
# its backlog in writes of this size, so it neither copies the whole
# buffer at once nor makes a system call per small batch.
WRITE_BYTES = 64 * 1024
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


def join_pieces(pieces: list[bytes], size: int):
    """Yield the pieces joined into chunks of about size bytes; a single piece is not copied."""
    group: list[bytes] = []
    group_bytes = 0
    for piece in pieces:
        group.append(piece)
        group_bytes += len(piece)
        if group_bytes >= size:
            yield group[0] if len(group) == 1 else b"".join(group)
            group, group_bytes = [], 0
    if group:
        yield group[0] if len(group) == 1 else b"".join(group)


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


class BuildFeed:
    """The status and the newest encoded log lines of one build, shared by all its streams.

    poll() reads status.json and build.log only when their stat changed. When
    either changed, it bumps generation and wakes the streams waiting in
    wait(). status and log.view are replaced whole, never changed in place,
    so streams read them without a lock.

    The streams are woken one after the other, not all at once: poll() wakes
    the first, and each woken stream wakes the next once it holds the
    condition's lock. So only a few threads compete for the GIL at a time,
    and a stream whose write blocks on a slow client delays no other stream.
    With notify_all(), the web process used about 2.4 times the CPU during
    `python -m bench --only followers` (500 followers on a 2-core VM).
    """

    def __init__(self, job: Path):
        self.build_id = job.name
        self.status_path = job / spool_format.STATUS_FILE
        self.log = SharedLog(job / spool_format.LOG_FILE, encode_line)
        # None once status.json is missing or unreadable.
        self.status: dict | None = None
        self.status_signature: tuple | None = ("not read yet",)
        self.generation = 0
        self.changed = threading.Condition()
        self._poll_lock = threading.Lock()
        self.streams = 0

    def __repr__(self) -> str:
        return f"<BuildFeed of build {self.build_id}>"

    def poll(self) -> None:
        """Read what changed since the last poll and wake the streams if anything did."""
        with self._poll_lock:
            status_changed = self.read_status()
            lines_added = self.log.refresh()
        if status_changed or lines_added:
            with self.changed:
                self.generation += 1
                self.changed.notify()

    def read_status(self) -> bool:
        """Parse status.json again if its stat changed; return whether it did."""
        signature = file_signature(self.status_path)
        if signature == self.status_signature:
            return False
        try:
            status = spool_format.read_json(self.status_path)
        except (OSError, ValueError) as e:
            log.warning("build %s: unreadable status.json while streaming: %s", self.build_id, e)
            status = None
        self.status_signature = signature
        self.status = status
        return True

    def wait(self, seen: int | None, timeout: float) -> int:
        """Wait at most timeout seconds for the generation to differ from seen, and return it."""
        with self.changed:
            if self.generation != seen:
                return self.generation
            self.changed.wait(timeout)
            if self.generation != seen:
                # Pass the wake-up on. The waiters queue in arrival order, so
                # the chain reaches every stream that waited for this
                # generation before it reaches one that already saw it.
                self.changed.notify()
            return self.generation


class FeedRegistry:
    """The BuildFeed of each build that has open streams, polled by one Poller."""

    def __init__(self, poller=POLLER):
        self.poller = poller
        self.feeds: dict[Path, BuildFeed] = {}
        self._lock = threading.Lock()

    def acquire(self, job: Path) -> BuildFeed:
        """Return the feed of job, polled just now; release() it when the stream ends."""
        with self._lock:
            feed = self.feeds.get(job)
            if feed is None:
                feed = self.feeds[job] = BuildFeed(job)
                self.poller.add(feed)
            feed.streams += 1
        # A new stream starts from the current status, not one up to a tick old.
        try:
            feed.poll()
        except BaseException:
            self.release(feed)
            raise
        return feed

    def release(self, feed: BuildFeed) -> None:
        """Drop a feed and its buffer once its last stream is gone."""
        with self._lock:
            feed.streams -= 1
            job = feed.log.path.parent
            if feed.streams <= 0 and self.feeds.get(job) is feed:
                del self.feeds[job]
                self.poller.remove(feed)


FEEDS = FeedRegistry()


class BuildStream:
    """The events of one client's stream; close() frees its slot exactly once."""

    def __init__(self, ctx, build_id: str, start_line: int, slots: StreamSlots, environ: dict):
        self.ctx = ctx
        self.build_id = build_id
        self.job = ctx.spool.job_dir(build_id)
        self.log_path = self.job / spool_format.LOG_FILE
        self.next_line = max(0, start_line)
        self.feeds = getattr(ctx, "stream_feeds", None) or FEEDS
        self.feed = self.feeds.acquire(self.job)
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
        self.feeds.release(self.feed)
        self.slots.release()
        log.debug("build %s: stream closed at line %d (%d streams open)",
                  self.build_id, self.next_line, self.slots.open)

    def generate_events(self):
        try:
            yield from self.follow_build()
        finally:
            self.release_slot()

    def follow_build(self):
        sent_state = None
        seen = None
        heartbeat_at = time.monotonic() + self.heartbeat_s
        while True:
            now = time.monotonic()
            if now >= heartbeat_at:
                yield encode_event("heartbeat", repr(time.time()), self.next_line)
                heartbeat_at = now + self.heartbeat_s
            timeout = heartbeat_at - now
            if self.client_disconnected is not None:
                timeout = min(timeout, DISCONNECT_CHECK_S)
            # An idle stream wakes only for heartbeats and disconnect checks.
            generation = self.feed.wait(seen, max(0.0, timeout))
            if self.client_disconnected is not None and self.client_disconnected():
                log.debug("build %s: stream client went away", self.build_id)
                return
            if generation == seen:
                continue
            seen = generation

            status = self.feed.status
            if status is None:
                log.info("build %s: job folder gone, ending its stream", self.build_id)
                yield b": the build's job folder was removed\n\n"
                return
            # Two changes within one poll send only the later state. A
            # terminal state is always sent, because it never changes again.
            state = status.get("status")
            if state != sent_state:
                yield encode_event("status", json.dumps({"status": state}), self.next_line)
                sent_state = state

            if state in spool_format.TERMINAL_STATES:
                yield from self.finish(status)
                return
            yield from self.send_new_lines()

    def finish(self, status: dict):
        """Send the rest of the log, an unterminated last line too, then the complete event."""
        yield from self.send_new_lines()
        # The runner may append its last lines just after the final status.
        time.sleep(SETTLE_S)
        while (yield from self.send_from_disk(final=True)):
            pass
        result = {"status": status.get("status"), "exit_code": status.get("exit_code")}
        yield encode_event("complete", json.dumps(result), self.next_line)

    def send_new_lines(self):
        """Send the complete lines the feed has read and this stream has not sent.

        Lines still in the feed's memory go out as its encoded bytes; older
        ones are read from disk, BATCH_LINES at a time.
        """
        while True:
            buffered = self.feed.log.read(self.next_line)
            if buffered is not None:
                pieces, self.next_line = buffered
                yield from join_pieces(pieces, WRITE_BYTES)
                return
            if not (yield from self.send_from_disk(final=False)):
                return

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
        try:
            return BuildStream(ctx, build_id, start_line, slots, bottle.request.environ)
        except BaseException:
            slots.release()
            raise

    app.stream_slots = slots
