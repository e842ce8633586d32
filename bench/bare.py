"""The floor for JSON routes and uploads: bare Bottle routes on waitress.

Run as `python -m bench.bare --port P --size BYTES --threads N`. The body is a
JSON object padded to exactly BYTES bytes, so it matches the size of the apbd
response it is compared with. A POST to any path copies its body to a file in
--upload-dir and returns the same body.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import bottle
import waitress

UPLOAD_CHUNK = 1024 * 1024


def constant_body(size: int) -> bytes:
    """Return a JSON object of exactly `size` bytes (at least 12)."""
    head = json.dumps({"pad": ""}).encode()
    return json.dumps({"pad": "x" * max(0, size - len(head))}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True, help="body size in bytes")
    parser.add_argument("--threads", type=int, required=True, help="waitress worker threads")
    parser.add_argument("--upload-dir", default=tempfile.gettempdir(), help="where POST bodies are written")
    parser.add_argument("--max-request-size", type=int, default=1 << 30, help="largest POST body, in bytes")
    args = parser.parse_args()
    body = constant_body(args.size)
    app = bottle.Bottle()

    @app.get("/")
    @app.get("/<path:path>")
    def constant(path: str = "") -> bytes:
        bottle.response.content_type = "application/json"
        return body

    @app.post("/<path:path>")
    def store(path: str = "") -> bytes:
        """Copy the request body to a file in --upload-dir: the least an upload costs on waitress."""
        left = bottle.request.content_length
        stream = bottle.request.environ["wsgi.input"]
        with tempfile.NamedTemporaryFile(dir=args.upload_dir) as out:
            while left > 0:
                chunk = stream.read(min(left, UPLOAD_CHUNK))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
        bottle.response.content_type = "application/json"
        return body

    waitress.serve(app, host="127.0.0.1", port=args.port, threads=args.threads,
                   max_request_body_size=args.max_request_size, _quiet=True)


if __name__ == "__main__":
    main()
