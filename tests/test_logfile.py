"""Tests for apbd.web.logfile: line reads by number and following a growing log."""

import logging
import os
import threading
import time

from apbd.web import logfile
from apbd.web.logfile import Poller, SharedLog, read_lines


def write(path, data: bytes, mode="ab"):
    with open(path, mode) as f:
        f.write(data)


def test_read_lines_pages(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"".join(b"line %d\n" % i for i in range(100)))
    lines, total = read_lines(log, 10, 5)
    assert total == 100
    assert lines == [f"line {i}" for i in range(10, 15)]


def test_read_lines_past_end(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"a\nb\n")
    assert read_lines(log, 5, 10) == ([], 2)
    assert read_lines(log, 1, 10) == (["b"], 2)


def test_read_lines_missing_file(tmp_path):
    assert read_lines(tmp_path / "nothing.log", 0, 50) == ([], 0)


def test_read_lines_empty_lines_kept(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"\n\nx\n\n")
    assert read_lines(log, 0, 10) == (["", "", "x", ""], 4)


def test_read_lines_hostile_bytes(tmp_path):
    log = tmp_path / "build.log"
    raw = b"bad \xff\xfe utf8\nbare\rreturn\nnul\x00byte\n\x1b[31mred\x1b[0m\ncrlf\r\n"
    write(log, raw)
    lines, total = read_lines(log, 0, 10)
    assert total == 5
    assert lines[0] == "bad \ufffd\ufffd utf8"
    assert lines[1] == "bare\rreturn"
    assert lines[2] == "nul\x00byte"
    assert lines[3] == "\x1b[31mred\x1b[0m"
    assert lines[4] == "crlf\r"
    assert log.read_bytes() == raw


def test_read_lines_partial_last_line(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"one\ntwo\nthr")
    assert read_lines(log, 0, 10) == (["one", "two", "thr"], 3)
    assert read_lines(log, 0, 10, include_partial=False) == (["one", "two"], 2)
    write(log, b"ee\n")
    assert read_lines(log, 2, 10) == (["three"], 3)


def test_read_lines_ten_megabyte_line(tmp_path):
    log = tmp_path / "build.log"
    big = b"x" * (10 * 1024 * 1024)
    write(log, b"before\n" + big + b"\nafter\n")
    lines, total = read_lines(log, 1, 2)
    assert total == 3
    assert len(lines[0]) == len(big)
    assert lines[1] == "after"


def test_index_grows_incrementally(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"".join(b"%d\n" % i for i in range(1000)))
    read_lines(log, 0, 1)
    index = logfile._index_for(log, os.stat(log))
    assert index.scanned == log.stat().st_size
    write(log, b"1000\n1001\n")
    lines, total = read_lines(log, 1000, 5)
    assert lines == ["1000", "1001"]
    assert total == 1002
    assert logfile._index_for(log, os.stat(log)) is index


def test_index_rebuilt_after_replace(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"old 1\nold 2\nold 3\n")
    assert read_lines(log, 0, 10)[1] == 3
    replacement = tmp_path / "new.log"
    write(replacement, b"new\n")
    os.rename(replacement, log)
    assert read_lines(log, 0, 10) == (["new"], 1)


def test_index_rebuilt_after_truncate(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"a\nb\nc\n")
    assert read_lines(log, 0, 10)[1] == 3
    write(log, b"z\n", mode="r+b")
    os.truncate(log, 2)
    assert read_lines(log, 0, 10) == (["z"], 1)


def test_large_log_reads_fast(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"".join(b"==> line number %d of a long build\n" % i for i in range(200_000)))
    read_lines(log, 0, 1)
    started = time.monotonic()
    for start in range(0, 200_000, 2_000):
        lines, total = read_lines(log, start, 1000)
        assert total == 200_000
        assert lines[0] == f"==> line number {start} of a long build"
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"100 page reads of a 200,000-line log took {elapsed:.2f} s"


def encode_numbered(number, text):
    return f"{number}:{text}\n".encode()


def collect_shared(shared, path, line):
    """Read every complete line from line on as a stream does: shared bytes, else disk."""
    out = []
    while True:
        held = shared.read(line)
        if held is None:
            lines, _ = read_lines(path, line, 3, include_partial=False)
            out += [f"{n}:{t}\n" for n, t in enumerate(lines, start=line)]
            line += len(lines)
            continue
        pieces, line = held
        out += [piece.decode() for piece in pieces]
        return "".join(out), line


def test_shared_log_encodes_new_lines_once(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"old 0\nold 1\n")
    calls = []

    def encode(number, text):
        calls.append(number)
        return encode_numbered(number, text)

    shared = SharedLog(log, encode)
    assert shared.refresh() is False
    # History before the first refresh comes from disk, not from the shared buffer.
    assert shared.read(0) is None
    assert shared.read(2) == ([], 2)
    write(log, b"new 2\nnew 3\npart")
    assert shared.refresh() is True
    assert shared.refresh() is False
    first, end = collect_shared(shared, log, 0)
    second, end2 = collect_shared(shared, log, 3)
    assert first == "0:old 0\n1:old 1\n2:new 2\n3:new 3\n"
    assert second == "3:new 3\n"
    assert end == end2 == 4
    assert calls == [2, 3]


def test_shared_log_same_bytes_for_every_reader(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"")
    shared = SharedLog(log, encode_numbered)
    shared.refresh()
    write(log, b"a\nb\n")
    shared.refresh()
    # Readers at the start of a batch get the batch's own bytes object, not a copy.
    assert shared.read(0)[0][0] is shared.read(0)[0][0]
    assert shared.read(1) == ([b"1:b\n"], 2)


def test_shared_log_partial_line_waits(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"")
    shared = SharedLog(log, encode_numbered)
    shared.refresh()
    write(log, b"half")
    assert shared.refresh() is False
    assert shared.read(0) == ([], 0)
    write(log, b" done\n")
    assert shared.refresh() is True
    assert shared.read(0) == ([b"0:half done\n"], 1)


def test_shared_log_missing_then_created(tmp_path):
    log = tmp_path / "build.log"
    shared = SharedLog(log, encode_numbered)
    assert shared.refresh() is False
    assert shared.read(0) == ([], 0)
    write(log, b"first\n")
    shared.refresh()
    # Lines present when the file is first seen are read from disk.
    assert shared.read(0) is None
    assert collect_shared(shared, log, 0) == ("0:first\n", 1)


def test_shared_log_bounded_buffer_falls_back_to_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(logfile, "SHARED_BUFFER_BYTES", 64)
    monkeypatch.setattr(logfile, "SHARED_READ_BYTES", 40)
    log = tmp_path / "build.log"
    write(log, b"")
    shared = SharedLog(log, encode_numbered)
    shared.refresh()
    assert shared.read(0) == ([], 0)
    write(log, b"".join(b"line %d\n" % i for i in range(200)) + b"x" * 100 + b"\n")
    assert shared.refresh() is True
    text, end = collect_shared(shared, log, 0)
    assert end == 201
    assert text == "".join(f"{i}:line {i}\n" for i in range(200)) + "200:" + "x" * 100 + "\n"
    assert shared.buffered <= 64 + 200
    assert shared.base > 100


def test_shared_log_replaced_file_restarts(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"a\nb\nc\n")
    shared = SharedLog(log, encode_numbered)
    shared.refresh()
    assert shared.read(3) == ([], 3)
    os.unlink(log)
    write(log, b"z\n")
    shared.refresh()
    assert shared.read(1) == ([], 1)
    write(log, b"y\n")
    shared.refresh()
    assert shared.read(1) == ([b"1:y\n"], 2)


def test_shared_log_view_survives_refresh(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"")
    shared = SharedLog(log, encode_numbered)
    shared.refresh()
    write(log, b"a\n")
    shared.refresh()
    # A reader that took the view keeps a consistent one while refresh replaces it.
    view = shared.view
    write(log, b"b\n")
    shared.refresh()
    assert (view.lines, len(view.batches)) == (1, 1)
    assert shared.view.lines == 2


class CountingItem:
    def __init__(self, fail_times=0):
        self.polls = 0
        self.fail_times = fail_times
        self.polled = threading.Event()

    def poll(self):
        self.polls += 1
        self.polled.set()
        if self.polls <= self.fail_times:
            raise OSError("simulated poll failure")


def test_poller_polls_until_removed():
    poller = Poller(0.01, name="test-poller")
    item = CountingItem()
    poller.add(item)
    deadline = time.monotonic() + 5
    while item.polls < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert item.polls >= 5
    poller.remove(item)
    time.sleep(0.05)
    count = item.polls
    time.sleep(0.1)
    assert item.polls == count


def test_poller_one_thread_for_many_items():
    poller = Poller(0.01, name="test-poller-many")
    items = [CountingItem() for _ in range(50)]
    for item in items:
        poller.add(item)
    for item in items:
        assert item.polled.wait(5)
    names = [thread.name for thread in threading.enumerate()]
    assert names.count("test-poller-many") == 1
    for item in items:
        poller.remove(item)


def test_poller_survives_failing_item(caplog):
    poller = Poller(0.01, name="test-poller-failing")
    failing = CountingItem(fail_times=3)
    healthy = CountingItem()
    with caplog.at_level(logging.ERROR, logger="apbd.web.logfile"):
        poller.add(failing)
        poller.add(healthy)
        deadline = time.monotonic() + 5
        while (failing.polls < 6 or healthy.polls < 6) and time.monotonic() < deadline:
            time.sleep(0.01)
    poller.remove(failing)
    poller.remove(healthy)
    assert failing.polls >= 6
    assert healthy.polls >= 6
    # Three failures in a row are logged once.
    failures = [r for r in caplog.records if r.exc_info and "simulated poll failure" in str(r.exc_info[1])]
    assert len(failures) == 1
