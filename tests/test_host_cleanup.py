import json
import os
import subprocess
import sys
import time
from pathlib import Path

from apbd import cleanup, limits
from apbd.spool import Spool, new_build_id

NOW = time.time()
OLD = NOW - limits.CLEANUP_MAX_AGE_S - 3600
RECENT = NOW - 3600
REPO = Path(__file__).resolve().parent.parent


def publish(spool, pkgname, created_at):
    build_id = new_build_id()
    staging = spool.make_staging_dir(build_id)
    (staging / "src").mkdir()
    (staging / "src" / "PKGBUILD").write_text(f"pkgname={pkgname}\n")
    request = {"build_id": build_id, "created_at": created_at}
    status = {"build_id": build_id, "status": "queued", "created_at": created_at,
              "pkgname": pkgname, "pkgbase": pkgname, "pkgnames": [pkgname]}
    assert spool.publish(staging, request, status)
    return build_id


def finished(spool, pkgname, state, end_time):
    build_id = publish(spool, pkgname, end_time - 60)
    claim = spool.claim(build_id)
    (spool.jobs / build_id / "packages").mkdir()
    (spool.jobs / build_id / "packages" / f"{pkgname}-1-1-any.pkg.tar.zst").write_bytes(b"x" * 1000)
    spool.finish(claim, state, end_time=end_time, start_time=end_time - 30)
    return build_id


def make_spool(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.create()
    ids = {
        "old_completed": finished(spool, "alpha", "completed", OLD),
        "old_failed": finished(spool, "beta", "failed", OLD - 100),
        "recent": finished(spool, "alpha", "completed", RECENT),
        "old_queued": publish(spool, "gamma", OLD),
    }
    building = publish(spool, "delta", OLD)
    claim = spool.claim(building)
    spool.update_status(claim, status="building", start_time=OLD)
    ids["old_building"] = building
    return spool, ids, claim


def history_ids(path):
    return [json.loads(line)["build_id"] for line in path.read_text().splitlines()]


def test_plan_lists_only_old_finished(tmp_path):
    spool, ids, claim = make_spool(tmp_path)
    plan = cleanup.plan_cleanup(spool, NOW)
    claim.release()
    listed = [c["build_id"] for c in plan["builds_to_remove"]]
    assert listed == [ids["old_failed"], ids["old_completed"]]
    assert plan["total_builds"] == 5
    assert plan["active_builds"] == 2
    assert all(c["size"] >= 1000 for c in plan["builds_to_remove"])
    assert plan["bytes_to_free"] >= 2000
    assert 0 < plan["disk"]["total"]
    assert all(spool.exists(i) for i in ids.values())


def test_run_removes_old_keeps_active(tmp_path):
    spool, ids, claim = make_spool(tmp_path)
    result = cleanup.run_cleanup(spool, NOW)
    claim.release()
    assert result["success"] is True
    assert result["cleanup_id"] == f"cleanup_{int(NOW)}"
    assert result["message"] == "Cleanup completed: removed 2 old builds"
    assert sorted(result["removed"]) == sorted([ids["old_completed"], ids["old_failed"]])
    assert result["errors"] == []
    assert not spool.exists(ids["old_completed"])
    assert not spool.exists(ids["old_failed"])
    for key in ("recent", "old_queued", "old_building"):
        assert spool.exists(ids[key]), key
    assert list(spool.staging.iterdir()) == []

    remaining = history_ids(spool.history / "builds.log")
    assert ids["old_completed"] not in remaining
    assert ids["old_failed"] not in remaining
    assert set(remaining) == {ids["recent"], ids["old_queued"], ids["old_building"]}
    assert history_ids(spool.history / "pkgname" / "alpha.log") == [ids["recent"]]
    assert not (spool.history / "pkgname" / "beta.log").exists()

    record = cleanup.read_last_cleanup(spool)
    assert record["removed_count"] == 2
    assert record["time"] == NOW


def test_run_goes_on_past_locked_build(tmp_path):
    spool, ids, claim = make_spool(tmp_path)
    lock = spool.jobs / ids["old_completed"] / "lock"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, sys, time\n"
                               "f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(60)\n", str(lock)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cleanup.run_cleanup(spool, NOW)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        claim.release()
    assert result["success"] is False
    assert result["removed"] == [ids["old_failed"]]
    assert len(result["errors"]) == 1
    assert ids["old_completed"] in result["errors"][0]
    assert spool.exists(ids["old_completed"])
    assert ids["old_completed"] in history_ids(spool.history / "builds.log")


def test_overlapping_cleanup_refused(tmp_path):
    spool, ids, claim = make_spool(tmp_path)
    claim.release()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, sys, time\n"
                               "f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(60)\n",
                               str(spool.root / cleanup.CLEANUP_LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cleanup.run_cleanup(spool, NOW)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert result["success"] is False
    assert result["removed"] == []
    assert spool.exists(ids["old_completed"])


def test_status_without_times_uses_mtime(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.create()
    build_id = finished(spool, "alpha", "completed", RECENT)
    status_path = spool.jobs / build_id / "status.json"
    status = json.loads(status_path.read_text())
    for field in ("end_time", "created_at"):
        status.pop(field)
    status_path.write_text(json.dumps(status))
    assert cleanup.plan_cleanup(spool, NOW)["builds_to_remove"] == []
    os.utime(status_path, (OLD, OLD))
    assert [c["build_id"] for c in cleanup.plan_cleanup(spool, NOW)["builds_to_remove"]] == [build_id]
