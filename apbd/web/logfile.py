"""Reading build.log by line number, and following it while a build writes it.

A line is the bytes up to a "\\n" (a bare "\\r" stays inside its line). Bytes
are decoded as UTF-8 with replacement characters, so invalid bytes never stop
a reader; the file on disk is never changed. NUL bytes and ANSI escapes stay
in the text: JSON escapes them, and the stream and the pages deal with them.

Finding line N by scanning from the start would make every /output call and
every stream reconnect cost the whole log. So each log gets a LineIndex: the
byte offset where each line ends, kept in memory per file (by device and
inode), and extended by scanning only the bytes appended since the last call.

Following a log that a build writes costs one reader per log, not one per
follower: a SharedLog reads the appended bytes once, encodes each new line
once, and hands every follower the same bytes. One Poller thread per process
calls it every POLL_INTERVAL_S.
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

# Seconds between two polls of a followed file: the most a new line waits
# before its followers are woken. Each poll that finds new lines wakes every
# follower, so a shorter interval costs more CPU per second with many
# followers. With 500 followers of a build printing 1,000 lines/s
# (`python -m bench --only followers`, 2-core VM), 0.035 s gave a delivery
# p50 of about 50 ms, a status-api p99 of about 15 ms, and the web process
# used about 0.6 of a core. At 0.025 s it used about 0.7 of a core, and the
# status-api p99 was 38 and 44 ms in two of three runs.
POLL_INTERVAL_S = 0.035
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


class Poller:
    """One thread that calls poll() of every added object every interval seconds.

    The thread starts with the first add() and sleeps while nothing is added.
    An exception from poll() is logged once per object until its poll()
    succeeds again, and never stops the thread.
    """

    def __init__(self, interval: float = POLL_INTERVAL_S, name: str = "apbd-log-poller"):
        self.interval = interval
        self.name = name
        self._items: dict[int, object] = {}
        self._failing: set[int] = set()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, item) -> None:
        with self._lock:
            self._items[id(item)] = item
            self.start()
            self._lock.notify()

    def remove(self, item) -> None:
        with self._lock:
            self._items.pop(id(item), None)
            self._failing.discard(id(item))

    def start(self) -> None:
        """Start the thread if it does not run yet."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._poll_forever, name=self.name, daemon=True)
                self._thread.start()

    def _poll_forever(self) -> None:
        while True:
            with self._lock:
                while not self._items:
                    self._lock.wait()
                items = list(self._items.values())
            started = time.monotonic()
            for item in items:
                self._poll_item(item)
            time.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def _poll_item(self, item) -> None:
        try:
            item.poll()
        except Exception:
            with self._lock:
                # An item removed meanwhile is not marked, so its id can be reused.
                first_failure = id(item) in self._items and id(item) not in self._failing
                if first_failure:
                    self._failing.add(id(item))
            if first_failure:
                log.exception("polling %r failed; retrying every %.3f s, logged again only after a success",
                              item, self.interval)
            return
        if self._failing:
            with self._lock:
                self._failing.discard(id(item))


# Encoded bytes of recent lines that a SharedLog keeps in memory. A follower
# further behind reads its lines from disk, so memory stays bounded for any log size.
SHARED_BUFFER_BYTES = 4 * 1024 * 1024
# Bytes a SharedLog reads at once from the log.
SHARED_READ_BYTES = 1024 * 1024


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


class _View:
    """The buffered batches and the line after the last of them, replaced whole on each change."""

    def __init__(self, batches: tuple[_Batch, ...], lines: int):
        self.batches = batches
        self.lines = lines
        self.firsts = [batch.first for batch in batches]
        self.base = batches[0].first if batches else lines


class SharedLog:
    """One reader of a followed log for all its followers.

    refresh() reads the bytes appended since its last call, splits them into
    complete lines and encodes each line once with encode(number, text). Only
    one thread may call it at a time. Any thread may call read() without a
    lock, because read() works on the current _View, which refresh() replaces
    whole and never changes. Only the newest SHARED_BUFFER_BYTES stay in
    memory. read() returns None to a follower whose position is older, and
    that follower reads those lines from disk.
    """

    def __init__(self, path: Path, encode):
        self.path = path
        self.encode = encode
        self.file_id: tuple[int, int] | None = None
        self.signature: tuple | None = None
        self.read_pos = 0
        self.buffered = 0
        self.view = _View((), 0)

    @property
    def base(self) -> int:
        """The first line still held in memory."""
        return self.view.base

    def read(self, line: int) -> tuple[list[bytes], int] | None:
        """Return the encoded complete lines from line on, in pieces, and the line after them.

        The pieces are the buffer's own bytes, not copies. None means those
        lines are no longer in memory: read them from disk.
        """
        view = self.view
        if line < view.base:
            return None
        start = max(0, bisect.bisect_right(view.firsts, line) - 1)
        pieces = [batch.tail_from(line) for batch in view.batches[start:] if batch.stop > line]
        return pieces, max(line, view.lines)

    def refresh(self) -> bool:
        """Read what was appended since the last call; return whether complete lines were added.

        The first call, and a call after the file was replaced or truncated,
        starts after the complete lines the file contains then, so followers
        behind that point read from disk.
        """
        signature = file_signature(self.path)
        if signature is None or signature == self.signature:
            return False
        self.signature = signature
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            if self.file_id != (st.st_dev, st.st_ino) or st.st_size < self.read_pos:
                if self.file_id is not None:
                    log.info("%s was replaced or truncated; following it from its end", self.path)
                self._restart(fd, st)
            added = []
            lines = self.view.lines
            while self.read_pos < st.st_size:
                batch = self._read_batch(fd, st.st_size, lines)
                if batch is None:
                    break
                added.append(batch)
                lines = batch.stop
        finally:
            os.close(fd)
        if added:
            self._publish(added, lines)
        return bool(added)

    def _restart(self, fd: int, st: os.stat_result) -> None:
        index = _index_for(self.path, st)
        with index.lock:
            index.extend(fd, st.st_size)
            lines = bisect.bisect_right(index.ends, st.st_size)
            self.read_pos = index.start_of(lines)
        self.file_id = (st.st_dev, st.st_ino)
        self.buffered = 0
        self.view = _View((), lines)

    def _read_batch(self, fd: int, size: int, first: int) -> _Batch | None:
        """Read and encode the complete lines of the next chunk; None if it contains none yet."""
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
            return None
        events = [self.encode(first + i, decode_line(part))
                  for i, part in enumerate(bytes(data[:cut]).split(b"\n"))]
        ends, total = [], 0
        for event in events:
            total += len(event)
            ends.append(total)
        self.read_pos += cut + 1
        return _Batch(first, b"".join(events), ends)

    def _publish(self, added: list[_Batch], lines: int) -> None:
        """Replace the view with one holding the added batches, dropping the oldest beyond the budget."""
        batches = list(self.view.batches) + added
        self.buffered += sum(len(batch.data) for batch in added)
        drop = 0
        while self.buffered > SHARED_BUFFER_BYTES and len(batches) - drop > 1:
            self.buffered -= len(batches[drop].data)
            drop += 1
        self.view = _View(tuple(batches[drop:]), lines)


# The process's one poller of followed logs.
POLLER = Poller()
