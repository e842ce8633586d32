"""apbd-web: serve the APB server API from a spool with waitress."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import tempfile

from waitress.server import create_server as waitress_create_server

from apbd import config, limits
from apbd.spool import Spool
from apbd.web.app import WebContext, make_app, make_templates
from apbd.web.status import StatusPolls
from apbd.web.timeouts import TimeoutMiddleware, install_on_server

log = logging.getLogger("apbd.web")

# waitress reads a request body into memory up to this size, and into an
# unlinked temporary file (under SPOOL/tmp, see serve) beyond it.
INBUF_OVERFLOW_BYTES = 512 * 1024
# A response writer (an SSE stream, a download) waits once this many bytes are
# buffered for a slow client. waitress's default of 16 MiB per connection let
# 500 SSE followers grow the web process to 1.1 GB.
OUTBUF_HIGH_WATERMARK_BYTES = 1024 * 1024
# Bytes waitress reads from a socket per call. Its default of 8 KiB makes a
# large upload cost many event-loop rounds: a bare waitress route stored a
# 300 MB body in 0.33 s with 256 KiB against 0.82 s with 8 KiB. With 4 MiB,
# apbd took a 1 GB upload at 396-471 MB/s against 345-351 MB/s with 256 KiB
# (bench upload on a 2-core VM), and the status-api and SSE figures did not
# change. socket.recv() shrinks its buffer to the bytes that arrived.
RECV_BYTES = 4 * 1024 * 1024
# Seconds between waitress's checks for idle connections and late uploads.
MAINTENANCE_INTERVAL_S = 1.0
# File descriptors kept free for spool files, logs and makepkg pipes when the
# connection limit is derived from RLIMIT_NOFILE.
RESERVED_FDS = 256
# Open connections accepted at most, whatever RLIMIT_NOFILE allows.
MAX_CONNECTIONS = 10000
# Form fields and multipart headers around the files; allowed on top of --max-request-size.
FORM_OVERHEAD_BYTES = 64 * 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apbd-web", description="Serve the APB server API from an apbd spool.")
    config.add_options(parser, config.SPOOL_OPTIONS + config.WEB_OPTIONS + config.SHARED_OPTIONS)
    add_timeout_options(parser)
    return parser


def add_timeout_options(parser: argparse.ArgumentParser) -> None:
    """Add the hidden request timeout options; tests shorten them."""
    parser.add_argument("--submit-timeout", type=float, default=limits.SUBMIT_TIMEOUT_S, help=argparse.SUPPRESS)
    parser.add_argument("--request-timeout", type=float, default=limits.REQUEST_TIMEOUT_S, help=argparse.SUPPRESS)


def detect_architecture(override: str | None) -> str:
    try:
        from apbd.hostinfo import detect_architecture as detect
    except ImportError:
        return override or os.uname().machine
    return detect(override)


def make_context(args: argparse.Namespace) -> WebContext:
    spool = Spool(args.builds_dir)
    spool.create()
    return WebContext(spool=spool, args=args, architecture=detect_architecture(args.architecture),
                      templates=make_templates())


def submit_timeout(args) -> float:
    return float(getattr(args, "submit_timeout", None) or limits.SUBMIT_TIMEOUT_S)


def request_timeout(args) -> float:
    return float(getattr(args, "request_timeout", None) or limits.REQUEST_TIMEOUT_S)


def connection_limit() -> int:
    """Return how many connections waitress may hold open: as many as the open-file limit allows.

    Idle or slow clients each hold one until the channel timeout closes it, so a
    small limit would let a few hundred of them lock everyone else out.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(100, min(MAX_CONNECTIONS, soft - RESERVED_FDS))


def upload_disk_check(ctx: WebContext):
    """Return a function telling why a body of n bytes does not fit on the spool's disk, or None."""
    try:
        from apbd.monitor import low_disk_reason
    except ImportError:
        return None
    return lambda needed_bytes: low_disk_reason(ctx.spool, needed_bytes)


def create_server(ctx: WebContext, host: str, port: int):
    """Create (not start) the waitress server for ctx; port 0 picks a free port."""
    args = ctx.args
    app = TimeoutMiddleware(make_app(ctx), submit_timeout=submit_timeout(args),
                            request_timeout=request_timeout(args), workers=2 * args.threads)
    server = waitress_create_server(
        StatusPolls(app, ctx.status_bodies), host=host, port=port, threads=args.threads,
        # Bodies beyond --max-request-size get 413 from waitress before they are read.
        max_request_body_size=args.max_request_size + FORM_OVERHEAD_BYTES,
        inbuf_overflow=INBUF_OVERFLOW_BYTES,
        # A connection that sends nothing for this long is closed.
        channel_timeout=request_timeout(args),
        cleanup_interval=MAINTENANCE_INTERVAL_S,
        connection_limit=connection_limit(),
        # poll() instead of select(): select() cannot watch a file descriptor
        # above 1023 and raises, which stops the whole server.
        asyncore_use_poll=True,
        # Read from a connection while its request runs, so a stream client that
        # went away is seen within a second, not at the next heartbeat. Against 0,
        # it cost no measurable status-api throughput (wrk -c8, 2-core VM).
        channel_request_lookahead=1,
        outbuf_high_watermark=OUTBUF_HIGH_WATERMARK_BYTES,
        recv_bytes=RECV_BYTES,
        ident="apbd",
        clear_untrusted_proxy_headers=True,
    )
    install_on_server(server, submit_timeout=submit_timeout(args), idle_timeout=request_timeout(args),
                      disk_check=upload_disk_check(ctx))
    server.apbd_app = app
    return server


def serve(args: argparse.Namespace) -> int:
    """Run apbd-web with parsed options until SIGTERM or SIGINT; return the exit status."""
    ctx = make_context(args)
    # A publisher killed mid-upload leaves its staging folder behind; remove it at start.
    for name in ctx.spool.remove_stale_staging():
        log.warning("removed %s from the spool's tmp/: its process is gone", name)
    # waitress spools large request bodies with tempfile; keep them on the spool's disk, not in a tmpfs /tmp.
    tempfile.tempdir = str(ctx.spool.staging)
    server = create_server(ctx, args.host, args.port)

    def stop(signum, frame):
        log.info("apbd-web stopping on signal %d", signum)
        server.close()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info("apbd-web serving spool %s for %s on http://%s:%s with %d threads", ctx.spool.root,
             ctx.architecture, args.host, getattr(server, "effective_port", args.port), args.threads)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.apbd_app.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
