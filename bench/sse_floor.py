"""The floor of the live-followers figure: the least an SSE server can do to fan out one log.

Run as `python -m bench.sse_floor --port P --log FILE`. One asyncio task polls
FILE every 5 ms for new bytes, encodes each new line once as an SSE `output`
event, and hands the same bytes to every connected client (GET /stream, any
path). No threads, no per-client file reads. The same follower processes
measure it as measure apbd.
"""

from __future__ import annotations

import argparse
import asyncio
import os

POLL_S = 0.005
HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"


class FanOut:
    def __init__(self):
        self.clients: set[asyncio.StreamWriter] = set()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        self.clients.add(writer)

    def send(self, data: bytes) -> None:
        for writer in list(self.clients):
            if writer.is_closing():
                self.clients.discard(writer)
            else:
                writer.write(data)


async def follow(path: str, fanout: FanOut) -> None:
    while not os.path.exists(path):
        await asyncio.sleep(POLL_S)
    pending = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                await asyncio.sleep(POLL_S)
                continue
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            fanout.send(b"".join(b"event: output\ndata: " + line + b"\n\n" for line in lines))


async def serve(port: int, path: str) -> None:
    fanout = FanOut()
    server = await asyncio.start_server(fanout.accept, "127.0.0.1", port)
    async with server:
        await follow(path, fanout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="the build.log to follow")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.log))


if __name__ == "__main__":
    main()
