"""The bubblewrap sandbox on this host, run as the real build user."""

from __future__ import annotations

import os
import subprocess

from apbd import sandbox
from tests.doubles.builduser import build_tmp, open_for_build_user  # noqa: F401

BUILD_USER = "apbd-build"


def run_in_sandbox(script: str, build_tmp, **kwargs) -> subprocess.CompletedProcess:
    user = sandbox.resolve_build_user(BUILD_USER)
    locale_dir = sandbox.ensure_locale()
    argv = sandbox.sandbox_argv(["bash", "-c", script], locale_dir=locale_dir, **kwargs)
    return subprocess.run(argv, capture_output=True, env=sandbox.build_env("/tmp", locale_dir=locale_dir),
                          stdin=subprocess.DEVNULL, timeout=60, **user.popen_kwargs())


def test_bwrap_works_as_build_user():
    user = sandbox.resolve_build_user(BUILD_USER)
    assert user.switch
    assert sandbox.bwrap_works(user)


def test_runs_as_build_user(build_tmp):
    result = run_in_sandbox("id -un", build_tmp)
    assert result.stdout.decode().strip() == BUILD_USER


def test_sh_is_bash(build_tmp):
    result = run_in_sandbox("sh -c 'echo ${BASH_VERSION:-dash}'", build_tmp)
    assert result.stdout.decode().strip() != "dash"


def test_locale_is_available(build_tmp):
    result = run_in_sandbox("locale 2>&1 >/dev/null; printf 'é' | iconv -f UTF-8 -t ASCII//TRANSLIT", build_tmp)
    assert result.stdout.decode() == "e"
    assert b"Cannot set" not in result.stdout


def test_writable_folder_only(build_tmp):
    work = open_for_build_user(build_tmp) / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    result = run_in_sandbox(f"touch {work}/ok; touch /usr/bad; touch /etc/bad; echo done", build_tmp,
                            writable=[work])
    assert result.stdout.decode().strip() == "done"
    assert (work / "ok").exists()
    assert b"Read-only file system" in result.stderr


def test_no_network(build_tmp):
    result = run_in_sandbox("cat /proc/net/dev | tail -n +3 | cut -d: -f1", build_tmp)
    assert result.stdout.decode().split() == ["lo"]


def test_unreachable_folder_found(build_tmp):
    user = sandbox.resolve_build_user(BUILD_USER)
    closed = build_tmp / "closed"
    closed.mkdir(mode=0o700)
    inside = closed / "job"
    inside.mkdir()
    open_for_build_user(build_tmp)
    assert sandbox.unreachable_folder(inside / "x", user) == closed
