import json
import os
import threading
import time
from pathlib import Path

import pytest

from apbd import buildroot as br

# Test doubles for sudo and mkarchroot: each appends its argv as a JSON line to
# $APBD_DOUBLE_LOG. The sudo double runs the rest of its argv; the mkarchroot
# double makes the chroot folder and copies -C and -M into its etc/ as the
# real one does, and fails when $APBD_MKARCHROOT_FAIL names an existing file.
SUDO_DOUBLE = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["APBD_DOUBLE_LOG"], "a") as log:
    log.write(json.dumps(["sudo", *sys.argv[1:]]) + "\\n")
os.execvp(sys.argv[1], sys.argv[1:])
"""

MKARCHROOT_DOUBLE = """#!/usr/bin/env python3
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["APBD_DOUBLE_LOG"], "a") as log:
    log.write(json.dumps(["mkarchroot", *args]) + "\\n")
delay = os.environ.get("APBD_MKARCHROOT_SLEEP")
if delay:
    import time
    time.sleep(float(delay))
fail = os.environ.get("APBD_MKARCHROOT_FAIL")
if fail and os.path.exists(fail):
    print("error: failed to install packages into the new root", flush=True)
    sys.exit(1)
conf = {}
while args and args[0].startswith("-"):
    conf[args[0]] = args[1]
    args = args[2:]
root = args[0]
os.makedirs(os.path.join(root, "etc"))
shutil.copy(conf["-C"], os.path.join(root, "etc", "pacman.conf"))
shutil.copy(conf["-M"], os.path.join(root, "etc", "makepkg.conf"))
with open(os.path.join(root, "packages"), "w") as f:
    f.write(" ".join(args[1:]))
"""


@pytest.fixture
def doubles(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sudo", SUDO_DOUBLE), ("mkarchroot", MKARCHROOT_DOUBLE)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    log = tmp_path / "argv.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("APBD_DOUBLE_LOG", str(log))
    fail_flag = tmp_path / "fail-mkarchroot"
    monkeypatch.setenv("APBD_MKARCHROOT_FAIL", str(fail_flag))
    confs = tmp_path / "host"
    confs.mkdir()
    (confs / "pacman.conf").write_text("[options]\nArchitecture = auto\n")
    (confs / "makepkg.conf").write_text("MAKEFLAGS=-j2\n")

    class Doubles:
        pacman_conf = str(confs / "pacman.conf")
        makepkg_conf = str(confs / "makepkg.conf")

        @staticmethod
        def calls():
            return [json.loads(line) for line in log.read_text().splitlines()]

        @staticmethod
        def fail(on=True):
            fail_flag.touch() if on else fail_flag.unlink(missing_ok=True)

    return Doubles


def expected_calls(doubles, root):
    argv = ["-C", doubles.pacman_conf, "-M", doubles.makepkg_conf, str(root), "base-devel", "ccache"]
    return [["sudo", "mkarchroot", *argv], ["mkarchroot", *argv]]


def manager(tmp_path, doubles, autorecreate):
    return br.BuildrootManager(tmp_path / "buildroot", autorecreate, pacman_conf=doubles.pacman_conf,
                               makepkg_conf=doubles.makepkg_conf)


def test_ensure_creates_missing_buildroot(tmp_path, doubles):
    buildroot = tmp_path / "buildroot"
    created = br.ensure_buildroot(buildroot, pacman_conf=doubles.pacman_conf, makepkg_conf=doubles.makepkg_conf)
    assert created is True
    assert doubles.calls() == expected_calls(doubles, buildroot / "root")
    assert (buildroot / "root" / "etc" / "pacman.conf").read_text() == Path(doubles.pacman_conf).read_text()
    assert (buildroot / "root" / "etc" / "makepkg.conf").read_text() == Path(doubles.makepkg_conf).read_text()
    assert (buildroot / "root" / "packages").read_text() == "base-devel ccache"


def test_ensure_keeps_existing_buildroot(tmp_path, doubles):
    (tmp_path / "buildroot" / "root").mkdir(parents=True)
    assert br.ensure_buildroot(tmp_path / "buildroot") is False
    assert doubles.calls() == []


def test_ensure_failure_raises(tmp_path, doubles):
    doubles.fail()
    with pytest.raises(br.BuildrootError, match="mkarchroot exited with status 1: error: failed to install"):
        br.ensure_buildroot(tmp_path / "buildroot", pacman_conf=doubles.pacman_conf,
                            makepkg_conf=doubles.makepkg_conf)


def test_recreates_after_n_builds(tmp_path, doubles):
    mgr = manager(tmp_path, doubles, autorecreate=2)
    mgr.ensure()
    marker = tmp_path / "buildroot" / "root" / "first-generation"
    marker.touch()
    notes = []
    for build_id in ("b1", "b2"):
        with mgr.use(build_id, notes.append):
            assert mgr.is_recreating(build_id) is False
    assert len(doubles.calls()) == 2
    assert marker.exists()

    with mgr.use("b3", notes.append):
        pass
    new_root = tmp_path / "buildroot.new" / "root"
    assert doubles.calls()[2:] == expected_calls(doubles, new_root)
    assert not marker.exists()
    assert (tmp_path / "buildroot" / "root" / "etc" / "pacman.conf").exists()
    assert not (tmp_path / "buildroot.new").exists()
    assert not (tmp_path / "buildroot.old").exists()
    assert mgr.recreations == 1
    assert any("recreating the buildroot" in n for n in notes)
    assert mgr.state() == {"buildroot_recreation_count": 0, "buildroot_recreation_builds": [],
                           "server_busy_with_buildroot": False}


def test_failed_recreation_keeps_old_buildroot(tmp_path, doubles):
    mgr = manager(tmp_path, doubles, autorecreate=1)
    mgr.ensure()
    marker = tmp_path / "buildroot" / "root" / "first-generation"
    marker.touch()
    with mgr.use("b1"):
        pass
    doubles.fail()
    notes = []
    with mgr.use("b2", notes.append):
        assert marker.exists()
    assert mgr.failed_recreations == 1
    assert not (tmp_path / "buildroot.new").exists()
    assert any("keeping the old buildroot" in n for n in notes)
    # The counter restarts, so the next build does not retry at once.
    doubles.fail(False)
    calls = len(doubles.calls())
    with mgr.use("b3"):
        pass
    assert len(doubles.calls()) == calls + 2
    assert not marker.exists()


def test_never_recreates_while_a_build_runs(tmp_path, doubles):
    mgr = manager(tmp_path, doubles, autorecreate=1)
    mgr.ensure()
    with mgr.use("warmup"):
        pass
    # Recreation is due. Make the running build hold the buildroot first.
    mgr.builds_since_recreation = 0
    release = threading.Event()
    entered = threading.Event()

    def long_build():
        with mgr.use("long"):
            entered.set()
            release.wait(10)

    first = threading.Thread(target=long_build)
    first.start()
    assert entered.wait(5)
    mgr.builds_since_recreation = 1

    waiter_started = []

    def next_build():
        with mgr.use("next"):
            waiter_started.append(time.monotonic())

    waiter = threading.Thread(target=next_build)
    waiter.start()
    time.sleep(1.0)
    assert waiter_started == []
    assert mgr.state()["server_busy_with_buildroot"] is True
    assert len(doubles.calls()) == 2

    released_at = time.monotonic()
    release.set()
    first.join(10)
    waiter.join(10)
    assert waiter_started and waiter_started[0] >= released_at
    assert len(doubles.calls()) == 4
    assert mgr.recreations == 1


def test_state_during_recreation(tmp_path, doubles, monkeypatch):
    mgr = manager(tmp_path, doubles, autorecreate=1)
    mgr.ensure()
    with mgr.use("b1"):
        pass
    seen = []
    original = br.recreate_buildroot

    def observing(*args, **kwargs):
        seen.append((mgr.state(), mgr.is_recreating("b2")))
        return original(*args, **kwargs)

    monkeypatch.setattr(br, "recreate_buildroot", observing)
    with mgr.use("b2"):
        pass
    assert seen == [({"buildroot_recreation_count": 1, "buildroot_recreation_builds": ["b2"],
                      "server_busy_with_buildroot": True}, True)]


def test_waiting_build_can_stop(tmp_path, doubles):
    mgr = manager(tmp_path, doubles, autorecreate=1)
    mgr.ensure()
    mgr.builds_since_recreation = 1
    mgr.active.add("running")
    with pytest.raises(InterruptedError):
        with mgr.use("next", should_stop=lambda: True):
            pass


def test_zero_never_recreates(tmp_path, doubles):
    mgr = manager(tmp_path, doubles, autorecreate=0)
    mgr.ensure()
    for i in range(5):
        with mgr.use(f"b{i}"):
            pass
    assert len(doubles.calls()) == 2


def test_cancel_during_recreation_waits_grace_then_stops(tmp_path, doubles, monkeypatch):
    from apbd import limits
    mgr = manager(tmp_path, doubles, autorecreate=1)
    mgr.ensure()
    marker = tmp_path / "buildroot" / "root" / "first-generation"
    marker.touch()
    with mgr.use("b1"):
        pass
    monkeypatch.setattr(limits, "KILL_GRACE_BUILDROOT_S", 1.0)
    monkeypatch.setenv("APBD_MKARCHROOT_SLEEP", "60")
    stop_at = time.monotonic() + 0.5
    notes = []
    started = time.monotonic()
    with pytest.raises(InterruptedError):
        with mgr.use("b2", notes.append, should_stop=lambda: time.monotonic() >= stop_at):
            pass
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 10
    assert marker.exists()
    assert not (tmp_path / "buildroot.new").exists()
    assert mgr.failed_recreations == 1
    assert mgr.active == set()
    assert mgr.state()["server_busy_with_buildroot"] is False
    assert any("keeping the old buildroot" in n for n in notes)
