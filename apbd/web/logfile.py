"""Reading build.log by line number, and following it while a build writes it.

A line is the bytes up to a "\\n" (a bare "\\r" stays inside its line). Bytes
are decoded as UTF-8 with replacement characters, so invalid bytes never stop
a reader; the file on disk is never changed. NUL bytes and ANSI escapes stay
in the text: JSON escapes them, and the stream and the pages deal with them.

Finding line N by scanning from the start would make every /output call and
every stream reconnect cost the whole log. So each log gets a LineIndex: the
byte offset where each line ends, kept in memory per file (by device and
inode), and extended by scanning only the bytes appended since the last call.

Followers wait for a log to grow through one FileWatcher per process: one
thread stats each watched file every POLL_INTERVAL_S and wakes the followers
whose file changed, so a hundred followers of one build cost one stat a tick.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from array import array
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

# Seconds between two stats of a watched file: the delay before a new line
# reaches a follower.
POLL_INTERVAL_S = 0.05
# Bytes read at once while scanning a log for line ends.
SCAN_CHUNK_BYTES = 1024 * 1024
# Line indexes kept in memory; each costs 8 bytes per line of its log.
INDEX_CACHE_SIZE = 64


class LineIndex:
    """The end offset of every complete line of one log file, grown incrementally."""

    def __init__(self, file_id: tuple[int, int]):
        self.file_id = file_id
        # ends[i] is the offset just past the "\n" that ends line i.
        self.ends = array("q")
        self.scanned = 0
        self.lock = threading.Lock()

    def start_of(self, line: int) -> int:
        return self.ends[line - 1] if line > 0 else 0

    def extend(self, fd: int, size: int) -> None:
        """Scan the bytes between the last scan and size for line ends."""
        while self.scanned < size:
            chunk = os.pread(fd, min(SCAN_CHUNK_BYTES, size - self.scanned), self.scanned)
            if not chunk:
                break
            pos = chunk.find(b"\n")
            while pos >= 0:
                self.ends.append(self.scanned + pos + 1)
                pos = chunk.find(b"\n", pos + 1)
            self.scanned += len(chunk)


_indexes: OrderedDict[str, LineIndex] = OrderedDict()
_indexes_lock = threading.Lock()


def _index_for(path: Path, st: os.stat_result) -> LineIndex:
    """Return the cached index of path, or a fresh one if the file was replaced or truncated."""
    key = str(path)
    file_id = (st.st_dev, st.st_ino)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None or index.file_id != file_id or index.scanned > st.st_size:
            index = LineIndex(file_id)
            _indexes[key] = index
        _indexes.move_to_end(key)
        while len(_indexes) > INDEX_CACHE_SIZE:
            _indexes.popitem(last=False)
    return index


def decode_line(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def read_exactly(fd: int, size: int, offset: int) -> bytes:
    """Read size bytes at offset, fewer only if the file is shorter."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        piece = os.pread(fd, size - got, offset + got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


class _OpenLog:
    """An open log with its index scanned up to the size seen at open time."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(self.fd)
            self.size = st.st_size
            self.index = _index_for(path, st)
            with self.index.lock:
                self.index.extend(self.fd, self.size)
                # Only offsets below self.size are used below, even if another
                # thread extends the index further meanwhile.
                self.complete = bisect.bisect_right(self.index.ends, self.size)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def has_partial(self) -> bool:
        return self.size > self.index.start_of(self.complete)

    def read_span(self, start: int, stop: int) -> list[str]:
        """Return lines start to stop - 1 with one read; the last may be the unterminated one."""
        if stop <= start:
            return []
        begin = self.index.start_of(start)
        end = self.index.ends[stop - 1] if stop <= self.complete else self.size
        data = read_exactly(self.fd, end - begin, begin)
        parts = data.split(b"\n")
        if stop <= self.complete:
            parts.pop()  # the empty text after the last "\n"
        return [decode_line(part) for part in parts]

    def close(self) -> None:
        os.close(self.fd)


def read_lines(path: str | os.PathLike, start_index: int, limit: int,
               *, include_partial: bool = True) -> tuple[list[str], int]:
    """Return up to limit lines from line start_index on, and the log's line count.

    An unterminated last line (a build still writing it, or a log that does
    not end in "\\n") counts as a line unless include_partial is False. A
    missing log has no lines.
    """
    try:
        opened = _OpenLog(Path(path))
    except FileNotFoundError:
        return [], 0
    try:
        total = opened.complete + (1 if include_partial and opened.has_partial else 0)
        start = max(0, start_index)
        stop = min(total, start + max(0, limit))
        return opened.read_span(start, stop), total
    finally:
        opened.close()


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """Return what tells a changed file from the same one: inode, size and mtime."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class _Waiter:
    def __init__(self, known: dict[Path, tuple | None]):
        self.known = known
        self.event = threading.Event()


class FileWatcher:
    """One thread that polls watched files and wakes whoever waits for them to change."""

    def __init__(self, interval: float = POLL_INTERVAL_S):
        self.interval = interval
        self._waiters: set[_Waiter] = set()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    def wait(self, known: dict[Path, tuple | None], timeout: float) -> bool:
        """Wait until a file differs from its signature in known; False on timeout.

        Comparing with the caller's own last signature, not with the moment of
        the call, means a change made just before the call still wakes it.
        """
        waiter = _Waiter(dict(known))
        with self._lock:
            self._waiters.add(waiter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._poll_forever, name="apbd-log-watcher",
                                                daemon=True)
                self._thread.start()
            self._lock.notify()
        try:
            return waiter.event.wait(timeout)
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def _poll_forever(self) -> None:
        while True:
            with self._lock:
                while not self._waiters:
                    self._lock.wait()
            time.sleep(self.interval)
            self.poll_once()

    def poll_once(self) -> None:
        """Stat every watched file once and wake the waiters that saw it differently."""
        with self._lock:
            waiters = list(self._waiters)
        signatures: dict[Path, tuple | None] = {}
        for waiter in waiters:
            for path, known in waiter.known.items():
                if path not in signatures:
                    signatures[path] = file_signature(path)
                if signatures[path] != known:
                    waiter.event.set()
                    break


WATCHER = FileWatcher()


class LogFollower:
    """Hand out the lines of a log from a given line on, as the build writes them.

    Lines are numbered from 0, as /output's start_index counts them.
    """

    def __init__(self, path: str | os.PathLike, start_line: int = 0,
                 watcher: FileWatcher | None = None):
        self.path = Path(path)
        self.next_line = max(0, start_line)
        self.watcher = watcher or WATCHER
        self.signature = None

    def read_new(self, *, final: bool = False, max_lines: int = 1000) -> list[tuple[int, str]]:
        """Return up to max_lines complete lines not yet returned, with their numbers.

        With final=True (the build has ended) an unterminated last line is
        returned too. A partial line is never returned while the build may
        still extend it, so a line is never sent twice.
        """
        self.signature = file_signature(self.path)
        lines, _ = read_lines(self.path, self.next_line, max_lines, include_partial=final)
        numbered = list(enumerate(lines, start=self.next_line))
        self.next_line += len(lines)
        return numbered

    def follow(self, stop=lambda: False, timeout: float = 1.0):
        """Yield (line_number, text) as lines arrive, until stop() returns True.

        stop() is checked at least every timeout seconds; once it is True the
        remaining lines, an unterminated last one included, are yielded.
        """
        while True:
            finished = stop()
            while True:
                batch = self.read_new(final=finished)
                yield from batch
                if not batch:
                    break
            if finished:
                return
            self.wait(timeout)

    def wait(self, timeout: float, also: dict[Path, tuple | None] | None = None) -> bool:
        """Wait until the log changes after the last read_new, or a file in also changes."""
        known = {self.path: self.signature}
        known.update(also or {})
        return self.watcher.wait(known, timeout)


# Encoded bytes of recent lines that a SharedLog keeps in memory. A follower
# further behind reads its lines from disk, so memory stays bounded for any log size.
SHARED_BUFFER_BYTES = 4 * 1024 * 1024
# Bytes a SharedLog reads at once from the log.
SHARED_READ_BYTES = 1024 * 1024
# Seconds between two reads of a SharedLog's file. A log written without
# pause changes between the stats of its 500 followers, so without this
# pause each of them would read it in turn while the others wait for the lock.
SHARED_REFRESH_S = 0.02


class _Batch:
    """Encoded lines first..first+len(ends)-1; ends[i] is where line first+i ends in data."""

    def __init__(self, first: int, data: bytes, ends: list[int]):
        self.first = first
        self.data = data
        self.ends = ends

    @property
    def stop(self) -> int:
        return self.first + len(self.ends)

    def tail_from(self, line: int) -> bytes:
        if line <= self.first:
            return self.data
        return self.data[self.ends[line - self.first - 1]:]


class SharedLog:
    """One reader of a followed log for every stream of its build.

    The first follower to call read() after the log grew reads the appended
    bytes in big chunks, splits them into lines and encodes each line once with
    encode(number, text). Every follower then gets the same encoded bytes. Only the newest
    SHARED_BUFFER_BYTES stay in memory: read() returns None to a follower
    whose position is older, and it reads those lines from disk.
    """

    def __init__(self, path: Path, encode):
        self.path = path
        self.encode = encode
        self.lock = threading.Lock()
        self.users = 0
        self.file_id: tuple[int, int] | None = None
        self.signature: tuple | None = None
        self.refreshed_at = float("-inf")
        self.read_pos = 0
        self.lines = 0
        self.batches: list[_Batch] = []
        # firsts[i] is batches[i].first, kept for bisect.
        self.firsts: list[int] = []
        self.buffered = 0

    @property
    def base(self) -> int:
        """The first line still held in memory."""
        return self.batches[0].first if self.batches else self.lines

    def read(self, line: int) -> tuple[list[bytes], int, tuple | None] | None:
        """Return the encoded complete lines from line on, the line after them and a signature.

        The signature is file_signature() of the log taken before its last
        read, for FileWatcher.wait(). None means those lines are no longer
        in memory: read them from disk.
        """
        # One stat per call, and the file is read only when it changed. A
        # change missed here wakes the caller's next FileWatcher.wait.
        signature = file_signature(self.path)
        now = time.monotonic()
        with self.lock:
            if signature != self.signature and now - self.refreshed_at >= SHARED_REFRESH_S:
                self.refreshed_at = now
                self._refresh()
                self.signature = signature
            if line < self.base:
                return None
            start = bisect.bisect_right(self.firsts, line) - 1
            pieces = [batch.tail_from(line) for batch in self.batches[max(0, start):] if batch.stop > line]
            return pieces, max(line, self.lines), self.signature

    def _restart(self, fd: int, st: os.stat_result) -> None:
        """Restart after the complete lines the file contains now, so followers behind read from disk."""
        index = _index_for(self.path, st)
        with index.lock:
            index.extend(fd, st.st_size)
            self.lines = bisect.bisect_right(index.ends, st.st_size)
            self.read_pos = index.start_of(self.lines)
        self.file_id = (st.st_dev, st.st_ino)
        self.batches = []
        self.firsts = []
        self.buffered = 0

    def _refresh(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            if self.file_id != (st.st_dev, st.st_ino) or st.st_size < self.read_pos:
                if self.file_id is not None:
                    log.info("%s was replaced or truncated; following it from its end", self.path)
                self._restart(fd, st)
            while self.read_pos < st.st_size and self._read_chunk(fd, st.st_size):
                pass
        finally:
            os.close(fd)

    def _read_chunk(self, fd: int, size: int) -> bool:
        """Encode the complete lines of the next chunk; return False if it contains none yet."""
        data = bytearray()
        pos = self.read_pos
        while pos < size:
            piece = os.pread(fd, min(SHARED_READ_BYTES, size - pos), pos)
            if not piece:
                break
            data += piece
            pos += len(piece)
            if b"\n" in piece:
                break
        cut = data.rfind(b"\n")
        if cut < 0:
            return False
        events = [self.encode(self.lines + i, decode_line(part))
                  for i, part in enumerate(bytes(data[:cut]).split(b"\n"))]
        ends, total = [], 0
        for event in events:
            total += len(event)
            ends.append(total)
        self.batches.append(_Batch(self.lines, b"".join(events), ends))
        self.firsts.append(self.lines)
        self.buffered += total
        self.lines += len(events)
        self.read_pos += cut + 1
        while self.buffered > SHARED_BUFFER_BYTES and len(self.batches) > 1:
            self.buffered -= len(self.batches.pop(0).data)
            self.firsts.pop(0)
        return True


_shared: dict[tuple[str, object], SharedLog] = {}
_shared_lock = threading.Lock()


def acquire_shared(path: str | os.PathLike, encode) -> SharedLog:
    """Return the SharedLog of path for this encoder; release_shared() it when done."""
    key = (str(path), encode)
    with _shared_lock:
        shared = _shared.get(key)
        if shared is None:
            shared = _shared[key] = SharedLog(Path(path), encode)
        shared.users += 1
    return shared


def release_shared(shared: SharedLog) -> None:
    """Forget a SharedLog and its buffer once its last follower is gone."""
    with _shared_lock:
        shared.users -= 1
        key = (str(shared.path), shared.encode)
        if shared.users <= 0 and _shared.get(key) is shared:
            del _shared[key]
