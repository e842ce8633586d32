"""Request timeouts on a real waitress server: late uploads, idle clients, slow handlers."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from apbd.errors import ApiError
from apbd.web.timeouts import Deadline, current_deadline, is_quick_read
from tests.test_web_common import LOOPBACK, ThreadServer, spool  # noqa: F401


@pytest.fixture
def quick(spool):
    """A server with a 1.5 s submit timeout and a 1 s request timeout."""
    server = ThreadServer(spool.root, ["--submit-timeout", "1.5", "--request-timeout", "1"])
    yield server
    server.stop()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def body_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_upload_not_arriving_in_time_is_408(quick, spool):
    with socket.create_connection((LOOPBACK, quick.port), timeout=15) as sock:
        sock.sendall(b"POST /build HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
                     b"Content-Length: 100000\r\n\r\n--zz\r\n")
        started = time.monotonic()
        # Keep trickling so the connection is never idle: only the total time runs out.
        for _ in range(6):
            time.sleep(0.4)
            try:
                sock.sendall(b"x" * 10)
            except OSError:
                break
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert body_of(answer) == {"error": "Request timeout",
                               "detail": "The request did not arrive completely within 1.5 s"}
    assert time.monotonic() - started < 6
    assert list(spool.staging.iterdir()) == []
    assert requests.get(quick.url + "/", timeout=10).status_code == 200


def test_stalled_upload_is_408(quick):
    with socket.create_connection((LOOPBACK, quick.port), timeout=15) as sock:
        sock.sendall(b"POST /build HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert body_of(answer)["error"] == "Request timeout"


def test_silent_client_is_disconnected(quick):
    with socket.create_connection((LOOPBACK, quick.port), timeout=15) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - started < 5


def test_slow_handler_is_408_and_frees_worker(quick):
    finished = threading.Event()

    @quick.bottle_app.get("/test-slow")
    def slow():
        time.sleep(2.5)
        finished.set()
        return {"late": True}

    started = time.monotonic()
    answer = requests.get(quick.url + "/test-slow", timeout=10)
    assert answer.status_code == 408
    assert answer.json() == {"error": "Request timeout", "detail": "Request took too long to process"}
    assert time.monotonic() - started < 2.0
    assert requests.get(quick.url + "/", timeout=10).status_code == 200
    assert finished.wait(5)


def test_late_handler_removes_partial_file(quick, spool):
    partial = spool.staging / "partial-upload"
    outcome = {}

    @quick.bottle_app.get("/test-partial")
    def writes_then_checks():
        partial.write_bytes(b"half")
        try:
            time.sleep(2.2)
            current_deadline().check()
            outcome["result"] = "went on"
        except ApiError as e:
            outcome["result"] = e.status
            raise
        finally:
            partial.unlink()
        return {}

    answer = requests.get(quick.url + "/test-partial", timeout=10)
    assert answer.status_code == 408
    deadline = time.monotonic() + 5
    while "result" not in outcome and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcome["result"] == 408
    assert not partial.exists()


def test_deadline_commit_and_expire():
    committed = Deadline(10)
    committed.commit()
    assert committed.expire() is False
    expired = Deadline(10)
    assert expired.expire() is True
    with pytest.raises(ApiError) as error:
        expired.commit()
    assert error.value.status == 408


def test_upload_timing_out_during_metadata_is_not_published(spool):
    from tests.test_web_common import make_tarball, submit

    server = ThreadServer(spool.root, ["--submit-timeout", "1"])
    try:
        # makepkg sources the PKGBUILD twice while reading it, so this takes about 3 s.
        slow = "sleep 1.5\npkgname=slow\npkgver=1\npkgrel=1\narch=(any)\npackage() { :; }\n"
        answer = submit(server.url, make_tarball({"PKGBUILD": slow}), build_id="48ea1df5-f7f3-477e-a7a7-36e526ea7cd3")
        assert answer.status_code == 408
        deadline = time.monotonic() + 20
        while list(spool.staging.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert list(spool.staging.iterdir()) == []
        assert spool.job_ids() == []
    finally:
        server.stop()


def test_only_status_polls_skip_the_pool():
    build_id = "48ea1df5-f7f3-477e-a7a7-36e526ea7cd3"

    def quick(method, path):
        return is_quick_read({"REQUEST_METHOD": method, "PATH_INFO": path})

    assert quick("GET", f"/build/{build_id}/status-api")
    assert quick("GET", f"/build/{build_id}/status")
    assert quick("HEAD", f"/build/{build_id}/status")
    assert not quick("POST", f"/build/{build_id}/status")
    assert not quick("GET", f"/build/{build_id}")
    assert not quick("GET", f"/build/{build_id}/output")
    assert not quick("GET", f"/build/{build_id}/status-api/extra")
    assert not quick("POST", "/build")
    assert not quick("GET", "/test-slow")
