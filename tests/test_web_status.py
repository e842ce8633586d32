"""Status polls served from the cache of status-api bodies: every change of the job folder shows at once."""

from __future__ import annotations

import json
import os

import pytest
import requests

from apbd import spool as spool_format
from apbd.web import status as status_module
from apbd.web.status import StatusBodies
from tests.test_web_common import add_build, spool, web  # noqa: F401

PACKAGE = "demo-1.0-1-x86_64.pkg.tar.zst"


def poll(web, build_id: str, route: str = "status-api") -> requests.Response:
    return requests.get(f"{web.url}/build/{build_id}/{route}", timeout=10)


def test_replaced_status_of_same_size_shows(web, spool):
    """A new status.json of the same size and mtime, as a coarse clock can give, still shows."""
    build_id = add_build(spool, state="queued")
    path = spool.job_dir(build_id) / spool_format.STATUS_FILE
    mtime_ns = path.stat().st_mtime_ns
    for name in ("demb", "demc", "demd", "deme"):
        status = spool.read_status(build_id)
        status["pkgname"] = name
        fresh = path.with_name("status.json.tmp")
        fresh.write_text(json.dumps(status))
        os.utime(fresh, ns=(mtime_ns, mtime_ns))
        os.rename(fresh, path)
        answer = poll(web, build_id)
        assert answer.status_code == 200
        assert answer.json()["pkgname"] == name


def test_status_change_shows_on_both_routes(web, spool):
    build_id, claim = add_build(spool, state="building")
    assert poll(web, build_id).json()["status"] == "building"
    assert poll(web, build_id, "status").json()["status"] == "building"
    spool.finish(claim, "failed", exit_code=2)
    assert poll(web, build_id).json()["status"] == "failed"
    assert poll(web, build_id).json()["exit_code"] == 2
    assert poll(web, build_id, "status").json()["status"] == "failed"


def test_log_growth_shows_while_building(web, spool):
    build_id, claim = add_build(spool, state="building", log_text="one\n")
    assert poll(web, build_id).json()["logs"][0]["size"] == 4
    with open(spool.job_dir(build_id) / spool_format.LOG_FILE, "ab") as log_file:
        for expected in range(5, 10):
            log_file.write(b"x")
            log_file.flush()
            assert poll(web, build_id).json()["logs"][0]["size"] == expected
    claim.release()


def test_log_of_queued_build_shows(web, spool):
    """A runner notes a cancel in build.log before it writes the cancelled status."""
    build_id = add_build(spool, state="queued")
    assert poll(web, build_id).json()["logs"] == []
    spool.append_log(build_id, "Cancelled before the build started")
    logs = poll(web, build_id).json()["logs"]
    assert [item["filename"] for item in logs] == ["build.log"]
    assert logs[0]["size"] > 0


def test_packages_show_once_build_finishes(web, spool):
    build_id, claim = add_build(spool, state="building")
    job = spool.job_dir(build_id)
    assert poll(web, build_id).json()["packages"] == []
    names = [PACKAGE, "demo-debug-1.0-1-x86_64.pkg.tar.zst"]
    (job / "packages").mkdir()
    for name in names:
        (job / name).write_bytes(b"package\n")
        os.rename(job / name, job / "packages" / name)
        poll(web, build_id)
    assert PACKAGE in [item["filename"] for item in poll(web, build_id).json()["packages"]]
    spool.finish(claim, "completed", exit_code=0)
    finished = poll(web, build_id).json()
    assert finished["status"] == "completed"
    assert [item["filename"] for item in finished["packages"]] == sorted(names)


def test_artifacts_ready_follows_claimed_marker(web, spool):
    """The runner removes `claimed` after writing the final status.json, so /status checks it on every poll."""
    build_id = add_build(spool, packages=[PACKAGE])
    marker = spool.job_dir(build_id) / spool_format.CLAIMED_MARKER
    marker.write_text("")
    assert poll(web, build_id, "status").json()["artifacts_ready"] is False
    marker.unlink()
    assert poll(web, build_id, "status").json()["artifacts_ready"] is True
    assert "artifacts_ready" not in poll(web, build_id).json()


def test_removed_build_is_404(web, spool):
    build_id = add_build(spool)
    assert poll(web, build_id).status_code == 200
    # Cleanup renames the whole job folder out of jobs/ before it deletes it.
    os.rename(spool.job_dir(build_id), spool.staging / f"{build_id}.removing")
    for route in ("status-api", "status"):
        answer = poll(web, build_id, route)
        assert answer.status_code == 404, route
        assert answer.json()["error"] == "Build not found", route
    assert build_id not in web.ctx.status_bodies


def test_unreadable_status_is_json_500(web, spool):
    build_id = add_build(spool)
    assert poll(web, build_id).status_code == 200
    (spool.job_dir(build_id) / spool_format.STATUS_FILE).write_text("{not json")
    answer = poll(web, build_id)
    assert answer.status_code == 500
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == "Internal server error"
    assert answer.json()["type"] == "JSONDecodeError"


def test_cached_answer_matches_bottle_route(web, spool):
    """HEAD goes through bottle's route, GET through StatusPolls: both send the same headers."""
    build_id = add_build(spool, packages=[PACKAGE])
    fast = poll(web, build_id)
    through_bottle = requests.head(f"{web.url}/build/{build_id}/status-api", timeout=10)
    assert fast.status_code == 200
    assert through_bottle.status_code == 200
    assert fast.headers["Content-Type"] == "application/json"
    assert through_bottle.headers["Content-Type"] == "application/json"
    assert through_bottle.headers["Content-Length"] == str(len(fast.content))
    assert fast.json() == status_module.status_api(web.ctx, build_id)


# The cache itself, without HTTP


@pytest.mark.parametrize(("state", "expected_stats"), [("completed", 1), ("queued", 2), ("building", 3)])
def test_poll_stats_only_what_can_change(web, spool, monkeypatch, state, expected_stats):
    added = add_build(spool, state=state)
    build_id = added[0] if isinstance(added, tuple) else added
    bodies = StatusBodies(web.ctx)
    first = bodies.get(build_id)
    calls = []
    real_stat_key = status_module.stat_key
    monkeypatch.setattr(status_module, "stat_key", lambda *a, **k: calls.append(a) or real_stat_key(*a, **k))
    monkeypatch.setattr(status_module, "status_api", lambda *a: pytest.fail("an unchanged build was read again"))
    assert bodies.get(build_id) is first
    assert len(calls) == expected_stats
    if isinstance(added, tuple):
        added[1].release()


def test_cache_keeps_at_most_max_entries(web, spool):
    bodies = StatusBodies(web.ctx, max_entries=2)
    build_ids = [add_build(spool) for _ in range(3)]
    for build_id in build_ids:
        bodies.get(build_id)
    assert len(bodies) == 2
    assert build_ids[0] not in bodies
    assert build_ids[2] in bodies
