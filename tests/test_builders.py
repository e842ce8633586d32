"""Builder selection and the exact makechrootpkg command line.

makechrootpkg (devtools), sudo and ppc32 cannot run on this Debian test host,
so these tests put the test doubles from tests/doubles first on PATH: the
makechrootpkg double records its argv, working folder and product folders to
BUILDROOT/makechrootpkg-calls.jsonl and leaves a fake package in PKGDEST.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from apbd.runner import builders
from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import build_log, make_spool, publish, runner_state, trivial_pkgbuild, wait_for
from tests.support.servers import Runner

DOUBLES = Path(__file__).resolve().parent / "doubles"
PRESERVED = "--preserve-env=PKGDEST,SRCDEST,SRCPKGDEST,LOGDEST,APBD_BUILD_ID,GNUPGHOME"


def path_with_doubles() -> str:
    return f"{DOUBLES}{os.pathsep}{os.environ['PATH']}"


def recorded_calls(buildroot: Path) -> list[dict]:
    lines = (buildroot / "makechrootpkg-calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("architecture, prefix", [("x86_64", []), ("powerpc", ["ppc32"]),
                                                  ("espresso", ["ppc32"]), ("powerpc64le", [])])
def test_makechrootpkg_argv(build_tmp, architecture, prefix):
    spool = make_spool(build_tmp)
    buildroot = build_tmp / "buildroot"
    (buildroot / "root").mkdir(parents=True)
    runner = Runner(spool.root, build_tmp, ["--builder", "auto", "--architecture", architecture,
                                           "--buildroot", str(buildroot)],
                    env={"PATH": path_with_doubles()})
    try:
        build_id = publish(spool, trivial_pkgbuild("chrooted"))
        status = wait_for(spool, build_id)
        state = runner_state(spool)[0]
    finally:
        runner.stop()

    calls = recorded_calls(buildroot)
    assert len(calls) == 1
    call = calls[0]
    assert call["argv"] == ["makechrootpkg", "-cuT", "-r", str(buildroot), "-U", "apbd-build"]
    assert call["env"]["APBD_DOUBLE_VIA"] == ",".join(["sudo", *prefix])
    work = spool.job_dir(build_id) / "work"
    assert call["cwd"] == str(work / "build")
    assert call["env"]["PKGDEST"] == str(work / "pkgdest")
    assert call["env"]["APBD_BUILD_ID"] == build_id
    build_uid = pwd.getpwnam("apbd-build").pw_uid
    assert call["owners"]["cwd"] == build_uid
    assert call["owners"]["gnupghome"] == build_uid

    assert status["status"] == "completed"
    assert status["builder"] == "makechrootpkg"
    assert status["clean_chroot"] is True
    assert os.listdir(spool.job_dir(build_id) / "packages") == ["chrooted-1:2.0-1-x86_64.pkg.tar.zst"]
    assert build_log(spool, build_id).startswith("==> apbd: builder: makechrootpkg (clean chroot")
    assert state["builder"] == "makechrootpkg"
    assert state["clean_chroot"] is True
    assert state["architecture"] == architecture


def test_makechrootpkg_command_prefix():
    work = builders.WorkPaths(Path("/spool/jobs/x/work"))
    command = builders.MakechrootpkgBuilder("/data/buildroot", "powerpc", "apbd-build").command(work)
    assert command.argv[:4] == ["sudo", PRESERVED, "ppc32", "makechrootpkg"]
    assert command.argv[4:7] == ["-cuT", "-r", "/data/buildroot"]
    assert command.cwd == Path("/spool/jobs/x/work/build")


def test_auto_without_devtools_uses_makepkg(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp, ["--builder", "auto"])
    try:
        state = runner_state(spool)[0]
    finally:
        runner.stop()
    assert state["builder"] == "makepkg"
    assert state["clean_chroot"] is False
    assert state["sandbox"] == "bwrap"
    assert "without a clean chroot" in state["builder_note"]
    assert "WARNING apbd.runner.builders: builder: devtools is not installed" in runner.log_path.read_text()


def test_unknown_builder_rejected():
    with pytest.raises(ValueError):
        builders.make_builder("mock", buildroot="/x", architecture="x86_64", build_user="apbd-build")


def test_detect_architecture_override():
    assert builders.detect_architecture("espresso") == "espresso"
