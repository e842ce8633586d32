"""Two runner processes on one spool build each of 200 jobs exactly once.

The runners use the hidden test-only builder `test-trivial`, which prints one
line and writes an empty fake package, so the test measures claiming and
scheduling rather than makepkg (a real build takes about 1.5 s).
"""

from __future__ import annotations

import collections
import os

from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import build_log, make_spool, publish_raw, wait_for
from tests.support.servers import Runner

JOBS = 200


def test_two_runners_build_each_job_once(build_tmp):
    spool = make_spool(build_tmp)
    ids = [publish_raw(spool, f"apbd-once-{n}") for n in range(JOBS // 2)]
    runners = [Runner(spool.root, build_tmp, ["--builder", "test-trivial", "--max-concurrent", "3"])
               for _ in range(2)]
    try:
        # The second half arrives while both runners are busy, through inotify.
        ids += [publish_raw(spool, f"apbd-once-{n}") for n in range(JOBS // 2, JOBS)]
        statuses = {i: wait_for(spool, i, timeout=300) for i in ids}
    finally:
        for runner in runners:
            runner.stop()

    by_runner = collections.Counter(s["runner_id"] for s in statuses.values())
    assert {runner_id.rsplit("-", 1)[1] for runner_id in by_runner} == {str(r.pid) for r in runners}
    for build_id, status in statuses.items():
        assert status["status"] == "completed", (build_id, status)
        text = build_log(spool, build_id)
        assert text.count(f"trivial build of {build_id}") == 1, text
        assert text.count("==> apbd: builder: test-trivial") == 1, text
        assert os.listdir(spool.job_dir(build_id) / "packages") == ["trivial-1-1-any.pkg.tar.zst"]
        assert not (spool.job_dir(build_id) / "claimed").exists()
    assert sum(by_runner.values()) == JOBS
