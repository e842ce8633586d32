"""Tests for apbd.web.logfile: line reads by number and following a growing log."""

import os
import threading
import time

import pytest

from apbd.web import logfile
from apbd.web.logfile import FileWatcher, LogFollower, read_lines


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


def test_follower_returns_complete_lines_once(tmp_path):
    log = tmp_path / "build.log"
    follower = LogFollower(log)
    assert follower.read_new() == []
    write(log, b"a\nb\npart")
    assert follower.read_new() == [(0, "a"), (1, "b")]
    assert follower.read_new() == []
    write(log, b"ial\n")
    assert follower.read_new() == [(2, "partial")]
    write(log, b"tail without newline")
    assert follower.read_new() == []
    assert follower.read_new(final=True) == [(3, "tail without newline")]


def test_follower_starts_at_line(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"0\n1\n2\n3\n")
    assert LogFollower(log, start_line=2).read_new() == [(2, "2"), (3, "3")]


def test_follower_follows_writer(tmp_path):
    log = tmp_path / "build.log"
    done = threading.Event()

    def writer():
        for i in range(50):
            write(log, b"line %d\n" % i)
            time.sleep(0.005)
        write(log, b"last, unterminated")
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    received = list(LogFollower(log, watcher=FileWatcher(0.02)).follow(stop=done.is_set, timeout=0.1))
    thread.join()
    assert [n for n, _ in received] == list(range(51))
    assert received[-1] == (50, "last, unterminated")
    assert received[7] == (7, "line 7")


def test_watcher_wakes_on_change(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"x\n")
    watcher = FileWatcher(0.02)
    known = {log: logfile.file_signature(log)}
    assert watcher.wait(known, 0.1) is False
    threading.Timer(0.05, write, (log, b"y\n")).start()
    started = time.monotonic()
    assert watcher.wait(known, 5.0) is True
    assert time.monotonic() - started < 1.0


def test_watcher_sees_change_before_wait(tmp_path):
    log = tmp_path / "build.log"
    known = {log: logfile.file_signature(log)}
    write(log, b"written before the wait\n")
    assert FileWatcher(0.02).wait(known, 2.0) is True


def test_watcher_many_waiters(tmp_path):
    log = tmp_path / "build.log"
    write(log, b"x\n")
    watcher = FileWatcher(0.02)
    known = {log: logfile.file_signature(log)}
    results = []
    threads = [threading.Thread(target=lambda: results.append(watcher.wait(known, 5.0))) for _ in range(200)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    write(log, b"y\n")
    for thread in threads:
        thread.join()
    assert results == [True] * 200


def encode_numbered(number, text):
    return f"{number}:{text}\n".encode()


def collect_shared(shared, path, line):
    """Read every complete line from line on as a follower would: shared bytes, else disk."""
    out = []
    while True:
        held = shared.read(line)
        if held is None:
            lines, _ = read_lines(path, line, 3, include_partial=False)
            out += [f"{n}:{t}\n" for n, t in enumerate(lines, start=line)]
            line += len(lines)
            continue
        pieces, line, _ = held
        if not pieces:
            return "".join(out), line
        out += [p.decode() for p in pieces]


@pytest.fixture
def no_refresh_pause(monkeypatch):
    monkeypatch.setattr(logfile, "SHARED_REFRESH_S", 0)


def test_shared_log_encodes_each_line_once_for_all_followers(tmp_path, no_refresh_pause):
    log = tmp_path / "build.log"
    write(log, b"old 0\nold 1\n")
    calls = []

    def encode(number, text):
        calls.append(number)
        return encode_numbered(number, text)

    shared = logfile.acquire_shared(log, encode)
    try:
        assert logfile.acquire_shared(log, encode) is shared
        logfile.release_shared(shared)
        # History before the first read comes from disk, not from the shared buffer.
        assert shared.read(0) is None
        write(log, b"new 2\nnew 3\npart")
        first, end = collect_shared(shared, log, 0)
        second, end2 = collect_shared(shared, log, 3)
        assert first == "0:old 0\n1:old 1\n2:new 2\n3:new 3\n"
        assert second == "3:new 3\n"
        assert end == end2 == 4
        assert calls == [2, 3]
    finally:
        logfile.release_shared(shared)
    assert logfile.acquire_shared(log, encode) is not shared


def test_shared_log_bounded_buffer_falls_back_to_disk(tmp_path, monkeypatch, no_refresh_pause):
    monkeypatch.setattr(logfile, "SHARED_BUFFER_BYTES", 64)
    monkeypatch.setattr(logfile, "SHARED_READ_BYTES", 40)
    log = tmp_path / "build.log"
    write(log, b"")
    shared = logfile.SharedLog(log, encode_numbered)
    assert shared.read(0)[:2] == ([], 0)
    write(log, b"".join(b"line %d\n" % i for i in range(200)) + b"x" * 100 + b"\n")
    text, end = collect_shared(shared, log, 0)
    assert end == 201
    assert text == "".join(f"{i}:line {i}\n" for i in range(200)) + "200:" + "x" * 100 + "\n"
    assert shared.buffered <= 64 + 200
    assert shared.base > 100


def test_shared_log_replaced_file_restarts(tmp_path, no_refresh_pause):
    log = tmp_path / "build.log"
    write(log, b"a\nb\nc\n")
    shared = logfile.SharedLog(log, encode_numbered)
    assert shared.read(3)[:2] == ([], 3)
    os.unlink(log)
    write(log, b"z\n")
    assert shared.read(1)[:2] == ([], 1)
    write(log, b"y\n")
    assert shared.read(1)[:2] == ([b"1:y\n"], 2)


def test_shared_log_refresh_pause(tmp_path, monkeypatch):
    monkeypatch.setattr(logfile, "SHARED_REFRESH_S", 60)
    log = tmp_path / "build.log"
    write(log, b"a\n")
    shared = logfile.SharedLog(log, encode_numbered)
    assert shared.read(1)[:2] == ([], 1)
    write(log, b"b\n")
    pieces, line, signature = shared.read(1)
    assert (pieces, line) == ([], 1)
    # The signature of the last read differs from the file, so the next wait wakes at the next poll.
    assert signature != logfile.file_signature(log)
    shared.refreshed_at -= 60
    assert shared.read(1)[:2] == ([b"1:b\n"], 2)
