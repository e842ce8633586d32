import json
import subprocess
import sys
from pathlib import Path
import textwrap
import time

import pytest

from apbd import srcdest

HOLDER = textwrap.dedent("""
    import json, sys, time
    from apbd import srcdest
    root, pkgbase, hold, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    asked = time.time()
    lock = srcdest.acquire_srcdest_lock(root, pkgbase, timeout=timeout)
    got = time.time()
    print(json.dumps({"asked": asked, "got": got, "acquired": lock.acquired, "warning": lock.warning}), flush=True)
    time.sleep(hold)
    released = time.time()
    lock.release()
    print(json.dumps({"released": released}), flush=True)
""")

REPO = Path(__file__).resolve().parent.parent


def start_holder(root, pkgbase, hold, timeout=30.0):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(root), pkgbase, str(hold), str(timeout)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)


def first_report(proc):
    return json.loads(proc.stdout.readline())


def finish(proc):
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 0
    return json.loads(rest.splitlines()[-1])


def test_lock_path_names_pkgbase(tmp_path):
    assert srcdest.lock_path(tmp_path, "glibc") == tmp_path / ".apb-glibc.lock"
    with pytest.raises(ValueError):
        srcdest.lock_path(tmp_path, "../etc")


def test_same_pkgbase_waits_other_does_not(tmp_path):
    first = start_holder(tmp_path, "foo", hold=2.0)
    held = first_report(first)
    assert held["acquired"] is True

    same = start_holder(tmp_path, "foo", hold=0.0)
    other = start_holder(tmp_path, "bar", hold=0.0)
    other_report = first_report(other)
    same_report = first_report(same)
    first_done = finish(first)
    finish(same)
    finish(other)

    assert other_report["acquired"] is True
    assert other_report["got"] < first_done["released"]
    assert same_report["acquired"] is True
    assert same_report["got"] >= first_done["released"]


def test_timeout_goes_on_with_warning(tmp_path):
    holder = start_holder(tmp_path, "foo", hold=3.0)
    assert first_report(holder)["acquired"] is True
    messages = []
    started = time.monotonic()
    lock = srcdest.acquire_srcdest_lock(tmp_path, "foo", timeout=0.6, on_wait=messages.append)
    elapsed = time.monotonic() - started
    finish(holder)
    assert lock.acquired is False
    assert 0.6 <= elapsed < 2.5
    assert "going on without it" in lock.warning
    assert messages[0].startswith("waiting for another build of foo")
    assert messages[-1] == lock.warning


def test_lock_released_when_holder_dies(tmp_path):
    holder = start_holder(tmp_path, "foo", hold=60.0)
    assert first_report(holder)["acquired"] is True
    holder.kill()
    holder.wait(timeout=10)
    lock = srcdest.acquire_srcdest_lock(tmp_path, "foo", timeout=1.0)
    assert lock.acquired is True
    lock.release()


def test_orphaned_locks_removed_held_kept(tmp_path):
    (tmp_path / ".apb-orphan.lock").touch()
    (tmp_path / "other-file.lock").touch()
    holder = start_holder(tmp_path, "busy", hold=60.0)
    assert first_report(holder)["acquired"] is True
    try:
        removed = srcdest.remove_orphaned_locks(tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert removed == [".apb-orphan.lock"]
    assert not (tmp_path / ".apb-orphan.lock").exists()
    assert (tmp_path / ".apb-busy.lock").exists()
    assert (tmp_path / "other-file.lock").exists()


def test_threads_exclude_each_other(tmp_path):
    first = srcdest.acquire_srcdest_lock(tmp_path, "foo", timeout=1.0)
    second = srcdest.acquire_srcdest_lock(tmp_path, "foo", timeout=0.3)
    assert first.acquired is True
    assert second.acquired is False
    first.release()
    with srcdest.acquire_srcdest_lock(tmp_path, "foo", timeout=0.3) as third:
        assert third.acquired is True


def test_missing_srcdest_goes_on_with_warning(tmp_path):
    lock = srcdest.acquire_srcdest_lock(tmp_path / "absent", "foo", timeout=1.0)
    assert lock.acquired is False
    assert "could not lock" in lock.warning


def test_read_srcdest(tmp_path):
    conf = tmp_path / "makepkg.conf"
    conf.write_text('#SRCDEST=/nowhere\nBASE=/data\nSRCDEST="$BASE/sources"\n')
    assert srcdest.read_srcdest(conf) == Path("/data/sources")
    conf.write_text("#SRCDEST=/home/sources\nPKGEXT='.pkg.tar.zst'\n")
    assert srcdest.read_srcdest(conf) is None
    assert srcdest.read_srcdest(tmp_path / "absent.conf") is None
