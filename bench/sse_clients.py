"""Followers of one build's live output, in a process of their own.

Run as `python -m bench.sse_clients --url URL --path PATH --clients N --lines L --out FILE`.
It opens N raw HTTP connections to PATH (an SSE stream), reads the `data:`
lines that carry `BENCH-LINE SEQ TIME` (printed by the build at wall-clock
TIME), checks that each connection gets SEQ 0..L-1 once each and in order, and
records each line's delivery latency (arrival minus TIME) in a histogram of
1 ms buckets. `--tail LOG` instead follows the build log file itself: the
floor, what a reader of the file sees. The result goes to FILE as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from urllib.parse import urlsplit

MARK = b"BENCH-LINE "
BUCKET_S = 0.001
BUCKETS = 30_000


class Follower:
    """One connection's state: the next expected SEQ and what went wrong.

    500 followers at 1,000 lines/s each are 500,000 lines/s, more than Python
    can parse one by one on the machine that also runs the server. So each
    chunk read from the socket is checked as a whole. bytes.count() counts its
    lines, and its first and last line must carry the next expected SEQ and
    that plus the count minus one. Every line of the chunk is counted at the
    latency of its first (oldest) line, which overstates the latency of the rest.
    """

    def __init__(self, histogram: list[int], lines: int):
        self.histogram = histogram
        self.lines = lines
        self.next_seq = 0
        self.errors: list[str] = []
        self.pending = b""

    @property
    def done(self) -> bool:
        return self.next_seq >= self.lines or len(self.errors) > 0

    def feed(self, chunk: bytes, now: float) -> None:
        data = self.pending + chunk
        end = data.rfind(b"\n") + 1
        self.pending = data[end:]
        count = data.count(MARK, 0, end)
        if not count:
            return
        first_seq, first_stamp = self.parse_line(data, data.find(MARK, 0, end))
        last_seq, _ = self.parse_line(data, data.rfind(MARK, 0, end))
        if first_seq != self.next_seq or last_seq != self.next_seq + count - 1:
            self.errors.append(f"got lines {first_seq}..{last_seq} ({count} lines), expected {self.next_seq} next")
            return
        self.next_seq += count
        bucket = int((now - first_stamp) / BUCKET_S)
        self.histogram[max(0, min(BUCKETS - 1, bucket))] += count

    @staticmethod
    def parse_line(data: bytes, at: int) -> tuple[int, float]:
        """Return SEQ and TIME of the line whose MARK starts at offset at."""
        line = data[at + len(MARK): data.find(b"\n", at)]
        seq_text, _, stamp = line.partition(b" ")
        return int(seq_text), float(stamp)


async def follow_stream(host, port, path, follower: Follower, connected: asyncio.Event, counter: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
                 f"Cache-Control: no-cache\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        follower.errors.append(f"answer: {head[:100]!r}")
        writer.close()
        return
    counter[0] += 1
    if counter[0] == counter[1]:
        connected.set()
    # HTTP/1.0 keeps the body free of chunk-size lines, so data lines arrive whole.
    while not follower.done:
        chunk = await reader.read(262144)
        if not chunk:
            if not follower.done:
                follower.errors.append(f"stream ended after line {follower.next_seq - 1}")
            break
        follower.feed(chunk, time.time())
    writer.close()


async def follow_all(args) -> dict:
    parts = urlsplit(args.url)
    histogram = [0] * BUCKETS
    followers = [Follower(histogram, args.lines) for _ in range(args.clients)]
    connected = asyncio.Event()
    counter = [0, args.clients]
    tasks = [asyncio.create_task(follow_stream(parts.hostname, parts.port, args.path, f, connected, counter))
             for f in followers]
    await asyncio.wait_for(connected.wait(), timeout=120)
    open(args.ready, "w").close()
    done, pending = await asyncio.wait(tasks, timeout=args.timeout)
    for task in pending:
        task.cancel()
    errors = [e for f in followers for e in f.errors]
    for task in done:
        if task.exception() is not None:
            errors.append(repr(task.exception()))
    complete = sum(1 for f in followers if f.next_seq == args.lines and not f.errors)
    return {"clients": args.clients, "complete": complete, "errors": errors[:20], "histogram": histogram}


def tail_log(args) -> dict:
    """Follow the log file by polling every millisecond: the floor of delivery latency."""
    histogram = [0] * BUCKETS
    follower = Follower(histogram, args.lines)
    open(args.ready, "w").close()
    deadline = time.monotonic() + args.timeout
    while not os.path.exists(args.tail):
        time.sleep(0.001)
    with open(args.tail, "rb") as f:
        while not follower.done and time.monotonic() < deadline:
            chunk = f.read(1 << 20)
            if chunk:
                follower.feed(chunk, time.time())
            else:
                time.sleep(0.001)
    return {"clients": 1, "complete": int(follower.next_seq == args.lines and not follower.errors),
            "errors": follower.errors, "histogram": histogram}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--path")
    parser.add_argument("--tail", help="follow this log file instead of an SSE stream")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--lines", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--ready", required=True, help="file created once every connection is open")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = tail_log(args) if args.tail else asyncio.run(follow_all(args))
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
