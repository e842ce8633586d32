"""A small HTTP load generator for machines without wrk: `python -m bench.pyload URL CONNECTIONS SECONDS`.

Each connection is a thread with one keep-alive connection that sends GET URL
again as soon as the previous response has been read. It prints the requests
per second over all connections, or exits with status 1 if any response was
not 2xx. It runs in Python and may saturate before the server does, so its
figures compare only with other figures taken with it.
"""

from __future__ import annotations

import sys
import threading
import time

from bench.load import Prober


def main() -> None:
    url, connections, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    base, _, path = url.partition("//")[2].partition("/")
    counts = [0] * connections
    failures = []
    deadline = time.monotonic() + seconds

    def hammer(slot: int) -> None:
        prober = Prober(f"http://{base}")
        while time.monotonic() < deadline:
            _, status, _ = prober.get("/" + path)
            if not 200 <= status < 300:
                failures.append(status)
                return
            counts[slot] += 1

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        print(f"non-2xx responses: {failures[:5]}", file=sys.stderr)
        sys.exit(1)
    print(f"{sum(counts) / (time.monotonic() - started):.1f}")


if __name__ == "__main__":
    main()
