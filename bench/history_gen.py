"""Fill a spool with many finished builds fast, by writing the spool's documented files directly.

Each build gets jobs/ID/request.json and status.json as a runner leaves them
(the empty lock file is left out: no read looks at it),
and one line in history/builds.log and in history/pkgname/NAME.log, in order of
creation. Nothing is fsynced: the files only need to exist for the reads that
are measured. Every tenth build is of TARGET_PKGNAME, the rest spread over
OTHER_NAMES package names.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import uuid
from pathlib import Path

from apbd import spool as spool_module
from apbd.spool import Spool
from bench.jobs import finished_status

TARGET_PKGNAME = "bench-target"
OTHER_NAMES = 1000
BASE_TIME = 1_700_000_000.0


def _name(index: int) -> str:
    return TARGET_PKGNAME if index % 10 == 0 else f"bench-pkg-{index % OTHER_NAMES}"


def _write_jobs(args: tuple[str, list[tuple[int, str]]]) -> None:
    jobs_dir, items = args
    for index, build_id in items:
        job = os.path.join(jobs_dir, build_id)
        os.mkdir(job)
        created = BASE_TIME + index
        state = spool_module.FAILED if index % 7 == 0 else spool_module.COMPLETED
        request = {"build_id": build_id, "created_at": created, "sha256": "0" * 64, "source": "tarball",
                   "remote_addr": "127.0.0.1", "build_timeout": 7200, "extra_repos": []}
        for file_name, obj in ((spool_module.REQUEST_FILE, request),
                               (spool_module.STATUS_FILE, finished_status(build_id, _name(index), created, state))):
            fd = os.open(os.path.join(job, file_name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())
            os.close(fd)


def fill(spool: Spool, count: int, workers: int = 2) -> None:
    """Add count finished builds to an empty spool."""
    ids = [(i, str(uuid.UUID(int=(0x8E5C << 112) | i, version=4))) for i in range(count)]
    chunks = [(str(spool.jobs), ids[n::workers * 8]) for n in range(workers * 8)]
    with multiprocessing.Pool(workers) as pool:
        pool.map(_write_jobs, chunks)

    per_name: dict[str, list[bytes]] = {}
    lines = []
    for index, build_id in ids:
        line = json.dumps({"build_id": build_id, "created_at": BASE_TIME + index, "pkgname": _name(index)},
                          sort_keys=True).encode() + b"\n"
        lines.append(line)
        per_name.setdefault(_name(index), []).append(line)
    history = Path(spool.history)
    (history / "pkgname").mkdir(parents=True, exist_ok=True)
    (history / spool_module.HISTORY_FILE).write_bytes(b"".join(lines))
    for name, name_lines in per_name.items():
        (history / "pkgname" / f"{name}.log").write_bytes(b"".join(name_lines))
