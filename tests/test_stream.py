"""Tests for GET /build/<id>/stream against a real waitress server on loopback.

The job folders are real spool jobs; the tests play the runner by appending
to build.log and replacing status.json, as the runner does.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import threading
import time
from types import SimpleNamespace

import bottle
import psutil
import pytest
import requests
import waitress
from waitress import wasyncore

from apbd import spool as spool_format
from apbd.spool import Spool
from apbd.web import logfile, stream
from tests.support.servers import WebServer

THREADS = 240


class LiveServer:
    """A bottle app with the stream route, served by waitress in a thread."""

    def __init__(self, spool: Spool, server_options: dict | None = None, **ctx_fields):
        self.ctx = SimpleNamespace(spool=spool, args=SimpleNamespace(threads=THREADS), **ctx_fields)
        self.app = bottle.Bottle()
        stream.install(self.app, self.ctx)
        options = {"threads": THREADS, "connection_limit": THREADS + 100, "asyncore_use_poll": True,
                   **(server_options or {})}
        self.server = waitress.create_server(self.app, host="127.0.0.1", port=0, **options)
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self):
        # Closing every channel, not only the listener, ends the loop thread
        # and makes the workers still streaming see a closed client.
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=0.5)
        wasyncore.close_all(self.server._map)
        self.thread.join(5)


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.create()
    return spool


@pytest.fixture
def server(spool):
    live = LiveServer(spool, sse_heartbeat_s=60)
    yield live
    live.stop()


def make_job(spool: Spool, status: str = spool_format.BUILDING, log: bytes = b"") -> str:
    build_id = spool_format.new_build_id()
    staging = spool.make_staging_dir(build_id)
    (staging / spool_format.LOG_FILE).write_bytes(log)
    request = {"build_id": build_id, "created_at": time.time()}
    assert spool.publish(staging, request, {"build_id": build_id, "status": status, "pkgname": "demo",
                                            "created_at": request["created_at"]})
    # Leave the markers a runner would have left at this stage.
    job = spool.job_dir(build_id)
    if status == spool_format.BUILDING:
        (job / spool_format.QUEUED_MARKER).rename(job / spool_format.CLAIMED_MARKER)
    elif status in spool_format.TERMINAL_STATES:
        (job / spool_format.QUEUED_MARKER).unlink()
    return build_id


def append_log(spool: Spool, build_id: str, data: bytes) -> None:
    with open(spool.job_dir(build_id) / spool_format.LOG_FILE, "ab") as f:
        f.write(data)


def set_status(spool: Spool, build_id: str, status: str, **fields) -> None:
    path = spool.job_dir(build_id) / spool_format.STATUS_FILE
    current = json.loads(path.read_text())
    current.update(status=status, **fields)
    spool_format.write_json_atomic(path, current)


class SSEClient:
    """A raw-socket HTTP/1.0 client that parses events by the rules of the SSE standard.

    HTTP/1.0 keeps waitress from chunking the body, so the socket carries the
    event stream itself. Lines end at "\\r\\n", "\\r" or "\\n", as in a browser.
    """

    def __init__(self, port: int, build_id: str, last_event_id: int | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        headers = f"GET /build/{build_id}/stream HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        if last_event_id is not None:
            headers += f"Last-Event-ID: {last_event_id}\r\n"
        self.sock.sendall((headers + "\r\n").encode())
        self.buffer = b""
        self.status_line, self.headers = self.read_head()
        self.text = ""
        self.eof = False
        self.fields: dict[str, str] = {}
        self.data_lines: list[str] = []

    def read_head(self):
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before the response headers"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return lines[0], {k.lower(): v for k, v in headers.items()}

    def next_line(self) -> str | None:
        while True:
            match = re.search(r"\r\n|\r|\n", self.text)
            # A "\r" at the end of the text may be the first half of "\r\n".
            if match and not (match.group() == "\r" and match.end() == len(self.text) and not self.eof):
                line = self.text[:match.start()]
                self.text = self.text[match.end():]
                return line
            if self.eof:
                return None
            chunk = self.buffer or self.sock.recv(1 << 20)
            self.buffer = b""
            if not chunk:
                self.eof = True
                continue
            self.text += chunk.decode("utf-8")

    def next_event(self) -> dict | None:
        """Return the next event as {"id", "event", "data"}, or None at the end of the stream."""
        while True:
            line = self.next_line()
            if line is None:
                return None
            if line == "":
                if self.data_lines or "event" in self.fields:
                    event = {"id": self.fields.get("id"), "event": self.fields.get("event", "message"),
                             "data": "\n".join(self.data_lines)}
                    self.fields, self.data_lines = {}, []
                    return event
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self.data_lines.append(value)
            else:
                self.fields[name] = value

    def events_until(self, predicate, limit: int = 100_000) -> list[dict]:
        events = []
        for _ in range(limit):
            event = self.next_event()
            assert event is not None, f"stream ended early after {events[-3:]}"
            events.append(event)
            if predicate(event):
                return events
        raise AssertionError("predicate never matched")

    def close(self):
        self.sock.close()


def outputs(events):
    return [e for e in events if e["event"] == "output"]


def test_join_pieces_bounds_writes():
    pieces = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 25, b"e" * 5]
    chunks = list(stream.join_pieces(pieces, 20))
    assert chunks == [b"a" * 10 + b"b" * 10, b"c" * 10 + b"d" * 25, b"e" * 5]
    single = [b"x" * 100]
    assert list(stream.join_pieces(single, 20))[0] is single[0]
    assert list(stream.join_pieces([], 20)) == []


def test_unknown_build_404(server):
    response = requests.get(f"{server.url}/build/{spool_format.new_build_id()}/stream", timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"] == "Build not found"
    assert "detail" in response.json()


def test_invalid_build_id_404(server):
    for bad in ("not-a-uuid", "%2e%2e", "%00", "48EA1DF5-F7F3-477E-A7A7-36E526EA7CD3"):
        response = requests.get(f"{server.url}/build/{bad}/stream", timeout=5)
        assert response.status_code == 404, bad
        assert set(response.json()) == {"error", "detail"}


def test_stream_headers(server, spool):
    build_id = make_job(spool, spool_format.COMPLETED, b"x\n")
    response = requests.get(f"{server.url}/build/{build_id}/stream", timeout=5,
                            headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers


def test_history_then_follow(server, spool):
    build_id = make_job(spool, log=b"==> Making package: demo 1-1\n  -> step\n")
    client = SSEClient(server.port, build_id)
    assert " 200 " in client.status_line
    first = client.next_event()
    assert first == {"id": "0", "event": "status", "data": '{"status": "building"}'}
    history = client.events_until(lambda e: e["id"] == "2")
    assert [(e["id"], e["data"]) for e in history] == [("1", "==> Making package: demo 1-1"), ("2", "  -> step")]

    append_log(spool, build_id, b"==> Starting build()...\n")
    follow = client.next_event()
    assert follow == {"id": "3", "event": "output", "data": "==> Starting build()..."}

    append_log(spool, build_id, b"last line\n")
    set_status(spool, build_id, spool_format.COMPLETED, exit_code=0)
    rest = client.events_until(lambda e: e["event"] == "complete")
    assert ("4", "last line") in [(e["id"], e["data"]) for e in outputs(rest)]
    assert rest[-1]["data"] == '{"status": "completed", "exit_code": 0}'
    assert rest[-1]["id"] == "4"
    assert client.next_event() is None
    client.close()


def test_status_event_on_change(server, spool):
    build_id = make_job(spool, spool_format.QUEUED)
    client = SSEClient(server.port, build_id)
    assert json.loads(client.next_event()["data"]) == {"status": "queued"}
    set_status(spool, build_id, spool_format.BUILDING, start_time=time.time())
    assert client.next_event() == {"id": "0", "event": "status", "data": '{"status": "building"}'}
    set_status(spool, build_id, spool_format.FAILED, exit_code=4, reason="makepkg exited with status 4")
    events = client.events_until(lambda e: e["event"] == "complete")
    assert [e["event"] for e in events] == ["status", "complete"]
    assert json.loads(events[-1]["data"]) == {"status": "failed", "exit_code": 4}
    client.close()


def test_two_changes_in_one_poll_end_with_terminal(server, spool):
    build_id = make_job(spool, spool_format.QUEUED)
    client = SSEClient(server.port, build_id)
    assert json.loads(client.next_event()["data"]) == {"status": "queued"}
    set_status(spool, build_id, spool_format.BUILDING, start_time=time.time())
    set_status(spool, build_id, spool_format.COMPLETED, exit_code=0)
    events = client.events_until(lambda e: e["event"] == "complete")
    states = [json.loads(e["data"])["status"] for e in events if e["event"] == "status"]
    assert states[-1] == "completed"
    assert set(states) <= {"building", "completed"}
    assert json.loads(events[-1]["data"]) == {"status": "completed", "exit_code": 0}
    assert client.next_event() is None
    client.close()


def test_finished_build_sends_all_and_closes(server, spool):
    log = b"".join(b"line %d\n" % i for i in range(5000)) + b"tail without newline"
    build_id = make_job(spool, spool_format.CANCELLED, log)
    client = SSEClient(server.port, build_id)
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    lines = outputs(events)
    assert len(lines) == 5001
    assert lines[4999] == {"id": "5000", "event": "output", "data": "line 4999"}
    assert lines[-1]["data"] == "tail without newline"
    assert events[-1]["event"] == "complete"
    assert json.loads(events[-1]["data"]) == {"status": "cancelled", "exit_code": None}


def test_resume_after_last_event_id(server, spool):
    build_id = make_job(spool, spool_format.COMPLETED, b"a\nb\nc\nd\n")
    client = SSEClient(server.port, build_id, last_event_id=2)
    events = client.events_until(lambda e: e["event"] == "complete")
    assert [(e["id"], e["data"]) for e in outputs(events)] == [("3", "c"), ("4", "d")]
    client.close()

    at_end = SSEClient(server.port, build_id, last_event_id=4)
    events = at_end.events_until(lambda e: e["event"] == "complete")
    assert outputs(events) == []
    at_end.close()


def test_invalid_last_event_id_starts_over(server, spool):
    build_id = make_job(spool, spool_format.COMPLETED, b"a\nb\n")
    client = SSEClient(server.port, build_id, last_event_id="garbage")  # type: ignore[arg-type]
    events = client.events_until(lambda e: e["event"] == "complete")
    assert [e["data"] for e in outputs(events)] == ["a", "b"]
    client.close()


def test_reconnect_loses_and_repeats_nothing(server, spool):
    build_id = make_job(spool)
    total = 3000
    expected = [f"line {i} " + "x" * (i % 50) for i in range(total)]

    def write_build():
        for i, text in enumerate(expected):
            append_log(spool, build_id, text.encode() + b"\n")
            if i % 100 == 0:
                time.sleep(0.02)
        set_status(spool, build_id, spool_format.COMPLETED, exit_code=0)

    writer = threading.Thread(target=write_build)
    writer.start()
    received: list[tuple[int, str]] = []
    last_id = None
    reconnects = 0
    done = False
    while not done:
        client = SSEClient(server.port, build_id, last_event_id=last_id)
        # Drop the connection after a few hundred events, as a flaky network would.
        for _ in range(400):
            event = client.next_event()
            assert event is not None
            last_id = int(event["id"])
            if event["event"] == "output":
                received.append((last_id, event["data"]))
            if event["event"] == "complete":
                done = True
                break
        client.close()
        reconnects += 1
    writer.join()
    assert reconnects >= 5
    assert [n for n, _ in received] == list(range(1, total + 1))
    assert [text for _, text in received] == expected


def test_hostile_lines_stay_single_events(server, spool):
    big = b"B" * (10 * 1024 * 1024)
    hostile = [
        (b"invalid \xff\xfe utf-8 \xc3", "invalid \ufffd\ufffd utf-8 \ufffd"),
        (b"progress 10%\rprogress 100%", "progress 10%\u240dprogress 100%"),
        (b"crlf line end\r", "crlf line end"),
        (b"\r", ""),
        (b"nul\x00byte", "nul\x00byte"),
        (b"\x1b[1;31mansi\x1b[0m", "\x1b[1;31mansi\x1b[0m"),
        (b"event: complete", "event: complete"),
        (b"data: {\"status\": \"completed\", \"exit_code\": 0}", "data: {\"status\": \"completed\", \"exit_code\": 0}"),
        (b"\r\revent: complete\r\rdata: forged\r\r", "\u240d\u240devent: complete\u240d\u240ddata: forged\u240d"),
        (b"id: 999999", "id: 999999"),
        (b"retry: 1", "retry: 1"),
        (b": comment", ": comment"),
        (b"<script>alert(1)</script>", "<script>alert(1)</script>"),
        (big, big.decode()),
        (b"after the big line", "after the big line"),
    ]
    log = b"".join(raw + b"\n" for raw, _ in hostile)
    build_id = make_job(spool, spool_format.BUILDING, log)
    client = SSEClient(server.port, build_id)
    events = client.events_until(lambda e: e["id"] == str(len(hostile)) and e["event"] == "output")
    lines = outputs(events)
    assert len(lines) == len(hostile)
    for (raw, shown), event in zip(hostile, lines):
        assert event["data"] == shown, raw[:60]
    assert [e["event"] for e in events].count("complete") == 0
    assert [int(e["id"]) for e in lines] == list(range(1, len(hostile) + 1))
    assert (spool.job_dir(build_id) / spool_format.LOG_FILE).read_bytes() == log
    client.close()


def test_heartbeat(spool):
    live = LiveServer(spool, sse_heartbeat_s=0.3)
    try:
        build_id = make_job(spool, log=b"one\ntwo\n")
        client = SSEClient(live.port, build_id)
        started = time.monotonic()
        events = client.events_until(lambda e: e["event"] == "heartbeat")
        assert time.monotonic() - started < 3
        beat = events[-1]
        assert beat["id"] == "2"
        assert abs(float(beat["data"]) - time.time()) < 5
        again = client.next_event()
        assert again["event"] == "heartbeat"
        client.close()
    finally:
        live.stop()


def test_disconnect_frees_slot(spool):
    live = LiveServer(spool, sse_heartbeat_s=0.2)
    try:
        build_id = make_job(spool, log=b"x\n")
        clients = [SSEClient(live.port, build_id) for _ in range(20)]
        for client in clients:
            client.events_until(lambda e: e["event"] == "output")
        assert live.app.stream_slots.open == 20
        for client in clients:
            client.close()
        deadline = time.monotonic() + 10
        while live.app.stream_slots.open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.app.stream_slots.open == 0
    finally:
        live.stop()


def test_streams_capped_below_threads(spool):
    live = LiveServer(spool, max_streams=2, sse_heartbeat_s=0.2)
    try:
        build_id = make_job(spool)
        first, second = SSEClient(live.port, build_id), SSEClient(live.port, build_id)
        first.next_event()
        second.next_event()
        response = requests.get(f"{live.url}/build/{build_id}/stream", timeout=5)
        assert response.status_code == 503
        assert response.json()["error"] == "Too many streams"
        assert response.headers["Retry-After"] == "5"
        first.close()
        deadline = time.monotonic() + 10
        while live.app.stream_slots.open > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        third = SSEClient(live.port, build_id)
        assert " 200 " in third.status_line
        third.close()
        second.close()
    finally:
        live.stop()


def test_two_hundred_followers(server, spool):
    build_id = make_job(spool, log=b"history\n")
    followers = 200
    lines = 300
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    connected = threading.Barrier(followers + 1, timeout=60)

    def follow(n):
        try:
            client = SSEClient(server.port, build_id)
            client.next_event()
            connected.wait()
            events = client.events_until(lambda e: e["event"] == "complete")
            results[n] = [e["data"] for e in outputs(events)]
            client.close()
        except BaseException as e:  # collected and asserted below
            errors.append(e)
            connected.abort()

    threads = [threading.Thread(target=follow, args=(n,)) for n in range(followers)]
    for thread in threads:
        thread.start()
    connected.wait()
    started = time.monotonic()
    for i in range(lines):
        append_log(spool, build_id, b"line %d\n" % i)
        if i % 30 == 0:
            time.sleep(0.05)
    set_status(spool, build_id, spool_format.COMPLETED, exit_code=0)
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    assert errors == []
    assert len(results) == followers
    expected = ["history"] + [f"line {i}" for i in range(lines)]
    for n in range(followers):
        assert results[n] == expected, n
    assert elapsed < 30
    # Every stream released the build's feed, so its buffer is gone and nothing polls it.
    assert wait_for_no_streams(server, 10) < 10
    assert spool.job_dir(build_id) not in stream.FEEDS.feeds


def test_feed_wakes_every_waiter(spool):
    build_id = make_job(spool, log=b"x\n")
    feed = stream.BuildFeed(spool.job_dir(build_id))
    feed.poll()
    seen = feed.generation
    waiters = 200
    woken: list[int] = []
    ready = threading.Barrier(waiters + 1, timeout=30)

    def wait_once():
        ready.wait()
        woken.append(feed.wait(seen, 10.0))

    threads = [threading.Thread(target=wait_once) for _ in range(waiters)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(0.2)
    append_log(spool, build_id, b"y\n")
    started = time.monotonic()
    feed.poll()
    for thread in threads:
        thread.join(15)
    assert woken == [seen + 1] * waiters
    assert time.monotonic() - started < 5
    assert feed.log.read(1) == ([stream.encode_line(1, "y")], 2)


def test_feed_tracks_status_changes(spool):
    build_id = make_job(spool, spool_format.QUEUED)
    feed = stream.BuildFeed(spool.job_dir(build_id))
    feed.poll()
    assert feed.status["status"] == "queued"
    generation = feed.generation
    feed.poll()
    assert feed.generation == generation
    set_status(spool, build_id, spool_format.BUILDING)
    feed.poll()
    assert feed.status["status"] == "building"
    assert feed.generation == generation + 1


def test_feed_registry_shares_one_feed(spool):
    poller = logfile.Poller(0.01, name="test-feed-poller")
    registry = stream.FeedRegistry(poller)
    job = spool.job_dir(make_job(spool, log=b"x\n"))
    first = registry.acquire(job)
    second = registry.acquire(job)
    assert first is second
    assert first.streams == 2
    registry.release(first)
    assert registry.feeds[job] is first
    registry.release(second)
    assert job not in registry.feeds
    assert registry.acquire(job) is not first


def test_feed_registry_failed_poll_releases(spool, monkeypatch):
    registry = stream.FeedRegistry(logfile.Poller(0.01, name="test-feed-poller-failing"))
    job = spool.job_dir(make_job(spool, log=b"x\n"))

    def failing_poll(feed):
        raise PermissionError(13, "Permission denied", str(feed.log.path))

    monkeypatch.setattr(stream.BuildFeed, "poll", failing_poll)
    with pytest.raises(PermissionError):
        registry.acquire(job)
    assert registry.feeds == {}


def test_failed_stream_start_frees_slot(spool, monkeypatch):
    live = LiveServer(spool, sse_heartbeat_s=60)
    try:
        build_id = make_job(spool, log=b"x\n")

        def failing_acquire(job):
            raise PermissionError(13, "Permission denied", str(job))

        monkeypatch.setattr(stream.FEEDS, "acquire", failing_acquire)
        response = requests.get(f"{live.url}/build/{build_id}/stream", timeout=5)
        assert response.status_code == 500
        assert live.app.stream_slots.open == 0
    finally:
        live.stop()


def wait_for_no_streams(live: LiveServer, timeout: float) -> float:
    """Wait until every stream slot is free; return the seconds it took."""
    started = time.monotonic()
    while live.app.stream_slots.open and time.monotonic() - started < timeout:
        time.sleep(0.05)
    return time.monotonic() - started


def test_disconnect_seen_without_writing(spool):
    # With waitress reading ahead on the connection, a closed client is seen
    # while the stream waits, long before the next heartbeat would fail.
    live = LiveServer(spool, server_options={"channel_request_lookahead": 1}, sse_heartbeat_s=60)
    try:
        build_id = make_job(spool, log=b"x\n")
        clients = [SSEClient(live.port, build_id) for _ in range(10)]
        for client in clients:
            client.events_until(lambda e: e["event"] == "output")
        assert live.app.stream_slots.open == 10
        for client in clients:
            client.close()
        assert wait_for_no_streams(live, 10) < 5
        assert live.app.stream_slots.open == 0
    finally:
        live.stop()


def test_thousand_connects_and_drops_return_to_baseline(spool):
    live = LiveServer(spool, sse_heartbeat_s=0.3)
    try:
        build_id = make_job(spool, log=b"".join(b"line %d\n" % i for i in range(2000)))
        process = psutil.Process()
        warm = SSEClient(live.port, build_id)
        warm.next_event()
        warm.close()
        wait_for_no_streams(live, 10)
        # Start the log poller's one thread now, so it is part of the baseline.
        logfile.POLLER.start()
        fds_before, threads_before = process.num_fds(), process.num_threads()

        for round_number in range(10):
            clients = [SSEClient(live.port, build_id) for _ in range(100)]
            for n, client in enumerate(clients):
                if n % 2:
                    client.next_event()
                client.close()
        assert wait_for_no_streams(live, 20) < 20
        deadline = time.monotonic() + 10
        while process.num_fds() > fds_before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.num_fds() <= fds_before
        assert process.num_threads() <= threads_before
    finally:
        live.stop()


def test_stream_outlives_request_timeout(spool, tmp_path):
    web = WebServer(spool.root, tmp_path, extra_args=["--request-timeout", "1"])
    try:
        build_id = make_job(spool, log=b"before\n")
        client = SSEClient(web.port, build_id)
        client.events_until(lambda e: e["data"] == "before")
        time.sleep(3)
        append_log(spool, build_id, b"after three quiet seconds\n")
        assert client.next_event() == {"id": "2", "event": "output", "data": "after three quiet seconds"}
        client.close()
    finally:
        web.stop()


def test_server_survives_over_1024_connections(spool, tmp_path):
    # waitress's default select() loop raises on a descriptor above 1023 and
    # the whole server stops; apbd-web runs waitress with poll() instead.
    wanted = 1300
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * wanted + 512:
        pytest.skip(f"the open-file hard limit {hard} is too low for {wanted} connections in one test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * wanted + 512), hard))
    web = WebServer(spool.root, tmp_path)
    idle = []
    try:
        for _ in range(wanted):
            idle.append(socket.create_connection(("127.0.0.1", web.port), timeout=10))
        deadline = time.monotonic() + 20
        while psutil.Process(web.pid).num_fds() < 1100 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert psutil.Process(web.pid).num_fds() >= 1100
        build_id = make_job(spool, spool_format.COMPLETED, b"still serving\n")
        client = SSEClient(web.port, build_id)
        events = client.events_until(lambda e: e["event"] == "complete")
        assert [e["data"] for e in outputs(events)] == ["still serving"]
        client.close()
        assert web.alive()
    finally:
        for sock in idle:
            sock.close()
        web.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_apbd_web_serves_stream(web_server, spool):
    unknown = requests.get(f"{web_server.url}/build/{spool_format.new_build_id()}/stream", timeout=10)
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"error", "detail"}
    build_id = make_job(spool, spool_format.COMPLETED, b"==> Finished making: demo\n")
    with requests.get(f"{web_server.url}/build/{build_id}/stream", stream=True, timeout=10,
                      headers={"Accept-Encoding": "gzip, deflate"}) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in response.headers
        body = response.raw.read().decode()
    assert "event: output\ndata: ==> Finished making: demo\n" in body
    assert body.endswith('event: complete\ndata: {"status": "completed", "exit_code": null}\n\n')
