"""A build that prints 200 MB: the log is byte-exact and the runner's memory stays flat."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time

import psutil

from apbd.runner import process as build_process
from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import build_log, make_spool, publish, trivial_pkgbuild, wait_for
from tests.support.servers import Runner

LINE = b"apbd output test line 0123456789 abcdefghijklmnopqrstuvwxyz\n"
TOTAL = 200 * 1024 * 1024
BEGIN = b"APBD-BEGIN-OF-FLOOD\n"
END = b"APBD-END-OF-FLOOD\n"
# The runner copies output through a 1 MiB buffer; its memory may grow by a few MB, never by the output.
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


# The build calls ftruncate on its own stdout. On a pipe that call fails with EINVAL. On
# build.log itself it would erase the lines the runner wrote before the build started.
TRUNCATE = """build() {
  echo APBD-BEFORE-TRUNCATE
  python3 -c 'import os; os.ftruncate(1, 0)' 2>/dev/null || echo APBD-TRUNCATE-FAILED
}"""


def test_build_cannot_truncate_log(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        build_id = publish(spool, trivial_pkgbuild("apbd-truncate", TRUNCATE))
        status = wait_for(spool, build_id)
    finally:
        runner.stop()

    text = build_log(spool, build_id)
    assert status["status"] == "completed", status
    assert "==> apbd: builder: " in text
    assert "APBD-BEFORE-TRUNCATE" in text
    assert "APBD-TRUNCATE-FAILED" in text


def pipe_size_after_enlarging() -> tuple[int | None, int]:
    """Return what enlarge_pipe returned for a new pipe, and the size the kernel reports after it."""
    read_fd, write_fd = os.pipe()
    try:
        returned = build_process.enlarge_pipe(read_fd)
        return returned, fcntl.fcntl(read_fd, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_pipe_enlarged_to_pipe_size():
    limit = int(build_process.PIPE_MAX_SIZE_FILE.read_text())
    returned, actual = pipe_size_after_enlarging()
    assert returned == actual
    assert actual == min(build_process.PIPE_SIZE, limit)


def test_pipe_size_capped_by_kernel_limit(tmp_path, monkeypatch):
    limit_file = tmp_path / "pipe-max-size"
    limit_file.write_text("131072\n")
    monkeypatch.setattr(build_process, "PIPE_MAX_SIZE_FILE", limit_file)
    returned, actual = pipe_size_after_enlarging()
    assert returned == 131072
    assert actual == 131072


def test_pipe_kept_when_size_rejected(monkeypatch):
    """A size the kernel rejects leaves the pipe at its old size, without an error."""
    monkeypatch.setattr(build_process, "PIPE_SIZE", -1)
    returned, actual = pipe_size_after_enlarging()
    assert returned is None
    assert actual > 0
