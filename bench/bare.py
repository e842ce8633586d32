"""The floor for JSON routes: a bare Bottle route on waitress returning a constant JSON body.

Run as `python -m bench.bare --port P --size BYTES --threads N`. The body is a
JSON object padded to exactly BYTES bytes, so it matches the size of the apbd
answer it is compared with.
"""

from __future__ import annotations

import argparse
import json

import bottle
import waitress


def constant_body(size: int) -> bytes:
    """Return a JSON object of exactly `size` bytes (at least 12)."""
    head = json.dumps({"pad": ""}).encode()
    return json.dumps({"pad": "x" * max(0, size - len(head))}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True, help="body size in bytes")
    parser.add_argument("--threads", type=int, required=True, help="waitress worker threads")
    args = parser.parse_args()
    body = constant_body(args.size)
    app = bottle.Bottle()

    @app.get("/")
    @app.get("/<path:path>")
    def constant(path: str = "") -> bytes:
        bottle.response.content_type = "application/json"
        return body

    waitress.serve(app, host="127.0.0.1", port=args.port, threads=args.threads, _quiet=True)


if __name__ == "__main__":
    main()
