"""Builds that print a lot: their PKGBUILDs, and the check that build.log contains the output byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench import jobs

BEGIN = b"BENCH-BEGIN\n"
END = b"BENCH-END\n"
SHORT_LINE = b"apbd loud build: one short line of output ....\n"
LONG_LINE = b"x" * (1024 * 1024 - 1) + b"\n"


def payload_lines(kind: str) -> bytes:
    return {"short": SHORT_LINE, "long": LONG_LINE}[kind]


def loud_pkgbuild(name: str, kind: str, size: int) -> tuple[str, int]:
    """Return a PKGBUILD printing about size bytes of kind lines between markers, and the exact size."""
    line = payload_lines(kind)
    count = max(1, size // len(line))
    if kind == "short":
        generator = f"yes '{line[:-1].decode()}' | head -n {count}"
    else:
        # One argument cannot hold 1 MB (MAX_ARG_STRLEN is 128 KiB), so yes(1) cannot print these.
        generator = (f"python3 -c 'import sys; line = b\"x\" * {len(line) - 1} + bytes([10]); "
                     f"[sys.stdout.buffer.write(line) for _ in range({count})]'")
    body = f"  echo BENCH-BEGIN\n  {generator}\n  echo BENCH-END"
    return jobs.pkgbuild(name, body), count * len(line)


def expected_digest(kind: str, size: int) -> str:
    line = payload_lines(kind)
    digest = hashlib.sha256()
    block = line * max(1, (1 << 20) // len(line))
    left = size
    while left >= len(block):
        digest.update(block)
        left -= len(block)
    digest.update(block[:left])
    return digest.hexdigest()


def check_log(path: Path, kind: str, size: int, digest: str) -> str | None:
    """Return None when the log contains exactly the payload between the markers, else what differs."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
        at = head.find(BEGIN)
        if at < 0:
            return "no BENCH-BEGIN line in the first MiB of build.log"
        f.seek(at + len(BEGIN))
        hasher = hashlib.sha256()
        left = size
        while left:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                return f"build.log ends {left} bytes before the end of the payload"
            hasher.update(chunk)
            left -= len(chunk)
        if hasher.hexdigest() != digest:
            return "the payload in build.log differs from what the build printed"
        tail = f.read(len(END))
        if tail != END:
            return f"after the payload build.log has {tail!r}, not BENCH-END"
    return None
