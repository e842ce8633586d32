"""The runner's rescan of jobs/ with 100,000 job folders stays cheap after the first pass."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from apbd.runner.builders import TrivialTestBuilder
from apbd.runner.daemon import Runner
from tests.doubles.jobs import make_spool, publish_raw

FOLDERS = 100_000


@pytest.fixture
def memory_tmp(tmp_path):
    """A folder on tmpfs when /dev/shm exists: 100,000 mkdirs take 25 s on a slow disk, 1 s there."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="apbd-rescan-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_rescan_skips_known_jobs(memory_tmp, monkeypatch):
    spool = make_spool(memory_tmp)
    for _ in range(FOLDERS):
        os.mkdir(spool.jobs / str(uuid.uuid4()))
    runner = Runner(spool, TrivialTestBuilder(), architecture="x86_64", max_concurrent=1,
                    build_timeout=7200, build_user=None, stop_event=threading.Event())

    runner.rescan(first=True)
    assert len(runner.known) == FOLDERS
    assert runner.queue == {}

    new_id = publish_raw(spool, "apbd-new")
    looked_at = []
    original = runner.examine

    def counting_examine(build_id):
        if build_id not in runner.known:
            looked_at.append(build_id)
        original(build_id)

    monkeypatch.setattr(runner, "examine", counting_examine)
    started = time.monotonic()
    runner.rescan()
    elapsed = time.monotonic() - started

    assert looked_at == [new_id]
    assert list(runner.queue) == [new_id]
    assert elapsed < 2.0, f"a rescan of {FOLDERS} known folders took {elapsed:.2f} s"
