"""A build that prints 200 MB: the log is byte-exact and the runner's memory stays flat."""

from __future__ import annotations

import hashlib
import time

import psutil

from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import make_spool, publish, trivial_pkgbuild, wait_for
from tests.support.servers import Runner

LINE = b"apbd output test line 0123456789 abcdefghijklmnopqrstuvwxyz\n"
TOTAL = 200 * 1024 * 1024
BEGIN = b"APBD-BEGIN-OF-FLOOD\n"
END = b"APBD-END-OF-FLOOD\n"
# The runner copies output in 64 KiB chunks; its memory may grow by a few MB, never by the output.
RSS_GROWTH_LIMIT = 30 * 1024 * 1024

FLOOD = f"""build() {{
  printf 'APBD-BEGIN-OF-FLOOD\\n'
  yes '{LINE.decode().rstrip()}' | head -c {TOTAL}
  printf 'APBD-END-OF-FLOOD\\n'
}}"""


def expected_digest() -> str:
    digest = hashlib.sha256()
    chunk = LINE * (1024 * 1024 // len(LINE) + 1)
    left = TOTAL
    while left:
        piece = chunk[:min(left, len(chunk))]
        digest.update(piece)
        left -= len(piece)
    return digest.hexdigest()


def flood_digest(path) -> tuple[str, bytes]:
    """Return the sha256 of the TOTAL bytes after BEGIN in the log, and the bytes after them."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
        start = head.index(BEGIN) + len(BEGIN)
        f.seek(start)
        digest = hashlib.sha256()
        left = TOTAL
        while left:
            data = f.read(min(left, 1 << 20))
            assert data, "the log ends inside the flood"
            digest.update(data)
            left -= len(data)
        return digest.hexdigest(), f.read(len(END))


def test_flood_logged_byte_exact(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        process = psutil.Process(runner.pid)
        baseline = process.memory_info().rss
        build_id = publish(spool, trivial_pkgbuild("apbd-flood", FLOOD))
        peak = baseline
        started = time.monotonic()
        while (spool.read_status(build_id) or {}).get("status") not in ("completed", "failed", "cancelled"):
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)
        status = wait_for(spool, build_id)
        elapsed = time.monotonic() - started
    finally:
        runner.stop()

    assert status["status"] == "completed"
    assert elapsed < 120
    assert peak - baseline < RSS_GROWTH_LIMIT, f"runner RSS grew from {baseline} to {peak}"
    digest, after = flood_digest(spool.job_dir(build_id) / "build.log")
    assert digest == expected_digest()
    assert after == END
