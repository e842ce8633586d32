"""The bubblewrap sandbox on this host, run as the real build user."""

from __future__ import annotations

import os
import subprocess

from apbd import sandbox
from tests.doubles.builduser import open_for_build_user

BUILD_USER = "apbd-build"


def run_in_sandbox(script: str, tmp_path, **kwargs) -> subprocess.CompletedProcess:
    user = sandbox.resolve_build_user(BUILD_USER)
    locale_dir = sandbox.ensure_locale()
    argv = sandbox.sandbox_argv(["bash", "-c", script], locale_dir=locale_dir, **kwargs)
    return subprocess.run(argv, capture_output=True, env=sandbox.build_env("/tmp", locale_dir=locale_dir),
                          stdin=subprocess.DEVNULL, timeout=60, **user.popen_kwargs())


def test_bwrap_works_as_build_user():
    user = sandbox.resolve_build_user(BUILD_USER)
    assert user.switch
    assert sandbox.bwrap_works(user)


def test_runs_as_build_user(tmp_path):
    result = run_in_sandbox("id -un", tmp_path)
    assert result.stdout.decode().strip() == BUILD_USER


def test_sh_is_bash(tmp_path):
    result = run_in_sandbox("sh -c 'echo ${BASH_VERSION:-dash}'", tmp_path)
    assert result.stdout.decode().strip() != "dash"


def test_locale_is_available(tmp_path):
    result = run_in_sandbox("locale 2>&1 >/dev/null; printf 'é' | iconv -f UTF-8 -t ASCII//TRANSLIT", tmp_path)
    assert result.stdout.decode() == "e"
    assert b"Cannot set" not in result.stdout


def test_writable_folder_only(tmp_path):
    work = open_for_build_user(tmp_path) / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    result = run_in_sandbox(f"touch {work}/ok; touch /usr/bad; touch /etc/bad; echo done", tmp_path,
                            writable=[work])
    assert result.stdout.decode().strip() == "done"
    assert (work / "ok").exists()
    assert b"Read-only file system" in result.stderr


def test_no_network(tmp_path):
    result = run_in_sandbox("cat /proc/net/dev | tail -n +3 | cut -d: -f1", tmp_path)
    assert result.stdout.decode().split() == ["lo"]


def test_unreachable_folder_found(tmp_path):
    user = sandbox.resolve_build_user(BUILD_USER)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    inside = closed / "job"
    inside.mkdir()
    open_for_build_user(tmp_path)
    assert sandbox.unreachable_folder(inside / "x", user) == closed
