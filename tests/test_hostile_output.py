"""Build output that tries to break the log views: bytes kept, JSON and SSE safe, HTML escaped.

The SSE reader here follows the event-stream rules browsers use: a line ends
at CRLF, LF or a bare CR. A reader that splits on LF only would miss exactly
the forged events these tests look for.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from tests.support.hostile import good_tarball, new_id, submit
from tests.support.servers import Runner, WebServer, make_reachable, wait_for_status
from tests.test_hostile_urls import craft_job
from apbd.spool import Spool

HUGE = 10 * 1024 * 1024
SCRIPT = b"<script>alert('apbd-xss')</script>"
HOSTILE_LINES = [
    b"==> Starting build()",
    b"invalid utf-8: \xff\xfe\xc3\x28 \xed\xa0\x80 end",
    b"bare\rcarriage return\revent: complete\rdata: forged",
    b"\x1b[31mred\x1b[0m \x1b]0;window title\x07 \x1b[2J cleared",
    b"nul\x00byte\x00",
    b"event: complete",
    b'data: {"status": "completed", "exit_code": 0}',
    b"id: 999999",
    b"retry: 1",
    b": a comment line",
    b"",
    SCRIPT,
    b'"><img src=x onerror=alert(1)>',
    b"crlf line\r",
    b"x" * HUGE,
    b"==> last line",
]
LOG = b"\n".join(HOSTILE_LINES) + b"\n"
KNOWN_EVENTS = {"output", "status", "complete", "heartbeat"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("output")
    make_reachable(root)
    spool = Spool(root / "spool")
    spool.create()
    build_id = new_id()
    craft_job(spool, build_id, {"build.log": LOG, "packages/probe-1-1-any.pkg.tar.zst": b"pkg"})
    server = WebServer(spool.root, root)
    yield server, spool, build_id
    server.stop()


def parse_sse(raw: bytes) -> list[dict]:
    """Split an event stream into events the way a browser does: lines end at CRLF, LF or CR."""
    text = raw.decode("utf-8", errors="replace")
    events, current = [], {"event": "message", "data": [], "fields": []}
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if current["data"] or current["fields"]:
                events.append({"event": current["event"], "data": "\n".join(current["data"]),
                               "fields": current["fields"]})
            current = {"event": "message", "data": [], "fields": []}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        current["fields"].append(name)
        if name == "event":
            current["event"] = value
        elif name == "data":
            current["data"].append(value)
    return events


def read_stream(url: str, timeout: float = 60) -> bytes:
    """Read a finished build's stream to its end (the server closes it after `complete`)."""
    raw = b""
    started = time.monotonic()
    with requests.get(url, stream=True, timeout=(5, 30)) as answer:
        assert answer.status_code == 200, answer.text[:300]
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        for chunk in answer.iter_content(chunk_size=65536):
            raw += chunk
            assert time.monotonic() - started < timeout, "the stream of a finished build did not end"
    return raw


def test_log_download_keeps_bytes(site):
    server, spool, build_id = site
    answer = requests.get(f"{server.url}/build/{build_id}/download/build.log", timeout=30)
    assert answer.status_code == 200
    assert answer.content == LOG


def test_output_json_safe(site):
    server, spool, build_id = site
    started = time.monotonic()
    answer = requests.get(f"{server.url}/build/{build_id}/output", params={"start_index": 0, "limit": 1000},
                          timeout=30)
    assert time.monotonic() - started < 10
    assert answer.status_code == 200
    body = json.loads(answer.content)
    lines = body["output"]
    assert body["total_lines"] == len(HOSTILE_LINES)
    assert len(lines) == len(HOSTILE_LINES)
    assert all(isinstance(line, str) for line in lines)
    assert "\ufffd" in lines[1]
    assert lines[1].endswith(" end")
    assert "carriage return" in lines[2]
    assert "data: forged" in lines[2]
    assert lines[4] == "nul\x00byte\x00"
    assert lines[5] == "event: complete"
    assert lines[11] == SCRIPT.decode()
    assert lines[-1] == "==> last line"
    assert lines[-2].startswith("xxxx")


def test_output_paging_after_huge_line(site):
    server, spool, build_id = site
    answer = requests.get(f"{server.url}/build/{build_id}/output",
                          params={"start_index": len(HOSTILE_LINES) - 1, "limit": 5}, timeout=30)
    assert answer.status_code == 200
    assert answer.json()["output"] == ["==> last line"]


def test_stream_one_event_per_line(site):
    server, spool, build_id = site
    raw = read_stream(f"{server.url}/build/{build_id}/stream")
    events = parse_sse(raw)
    kinds = [e["event"] for e in events]
    assert set(kinds) <= KNOWN_EVENTS, set(kinds) - KNOWN_EVENTS
    outputs = [e for e in events if e["event"] == "output"]
    assert len(outputs) == len(HOSTILE_LINES), [e["data"][:40] for e in outputs]
    assert kinds.count("complete") == 1
    assert kinds[-1] == "complete"
    complete = json.loads(events[-1]["data"])
    assert complete["status"] == "completed"


def test_stream_no_forged_fields(site):
    server, spool, build_id = site
    events = parse_sse(read_stream(f"{server.url}/build/{build_id}/stream"))
    for event in events:
        if event["event"] == "output":
            # An output event has at most one data field and never a second event or retry field.
            assert event["fields"].count("data") == 1, event["fields"]
            assert event["fields"].count("event") == 1, event["fields"]
            assert "retry" not in event["fields"]
    outputs = [e["data"] for e in events if e["event"] == "output"]
    assert "carriage return" in outputs[2]
    assert "data: forged" in outputs[2]
    assert outputs[5] == "event: complete"
    assert outputs[6].startswith("data: {")
    assert outputs[8] == "retry: 1"
    assert outputs[9] == ": a comment line"
    assert "\ufffd" in outputs[1]
    assert outputs[13] == "crlf line"
    assert len(outputs[14]) == HUGE


def test_view_escapes_html(site):
    server, spool, build_id = site
    answer = requests.get(f"{server.url}/build/{build_id}/view/build.log", timeout=30)
    assert answer.status_code == 200, answer.status_code
    assert answer.headers["Content-Type"].startswith("text/html")
    page = answer.content
    assert SCRIPT not in page
    assert b"<img src=x" not in page
    assert b"&lt;script&gt;alert(" in page or b"&lt;script&gt;alert(&#39;" in page or b"&#60;script" in page
    assert b"\x1b" not in page or b"<script" not in page.split(b"\x1b")[0][-20:]


def test_build_page_escapes_html(site):
    server, spool, build_id = site
    answer = requests.get(f"{server.url}/build/{build_id}", headers={"Accept": "text/html"}, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    assert SCRIPT not in answer.content
    assert b"onerror=alert(1)>" not in answer.content


def test_real_build_output_kept(web_server, spool, tmp_path):
    """A real makepkg build prints hostile bytes: build.log keeps them, /output and the stream stay safe."""
    printed = b"\\xff\\xfe bad \\r bare \\x1b[31m ansi \\x00 nul"
    body = ("printf 'event: complete\\n'\n"
            f"  printf '{printed.decode()}\\n'\n"
            "  printf '<script>alert(1)</script>\\n'\n"
            "  head -c 1000000 /dev/zero | tr '\\0' y; echo")
    pkgbuild = ("pkgname=hostile-output\npkgver=1.0\npkgrel=1\narch=(any)\nlicense=(MIT)\n"
                f"build() {{\n  {body}\n}}\npackage() {{\n  mkdir -p \"$pkgdir/usr/share/x\"\n}}\n").encode()
    runner = Runner(spool.root, tmp_path)
    try:
        build_id = new_id()
        answer = submit(web_server.url, good_tarball(pkgbuild=pkgbuild), build_id)
        assert answer.status_code == 200, answer.text
        status = wait_for_status(web_server.url, build_id, timeout=120)
    finally:
        runner.stop()
    log_bytes = requests.get(f"{web_server.url}/build/{build_id}/download/build.log", timeout=30).content
    assert b"\xff\xfe bad \r bare \x1b[31m ansi \x00 nul\n" in log_bytes, status
    assert b"\nevent: complete\n" in log_bytes
    assert b"y" * 1000000 + b"\n" in log_bytes

    events = parse_sse(read_stream(f"{web_server.url}/build/{build_id}/stream"))
    assert [e["event"] for e in events].count("complete") == 1
    assert events[-1]["event"] == "complete"
    outputs = [e["data"] for e in events if e["event"] == "output"]
    assert "event: complete" in outputs
    assert any(len(line) == 1000000 and set(line) == {"y"} for line in outputs)

    page = requests.get(f"{web_server.url}/build/{build_id}/view/build.log", timeout=30).content
    assert b"<script>alert(1)</script>" not in page
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in page
