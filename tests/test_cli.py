"""The apbd command: submit against a real server, serve as a real pair of processes, help texts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import psutil
import pytest
import requests

from apbd import submit
from tests.support.packages import EXAMPLES_DIR, bsdtar_list
from tests.support.servers import REPO_ROOT, Runner, WebServer, child_env, free_port, make_reachable

SUBMIT_TIMEOUT_S = 300


def run_apbd(*args: str, timeout: float = SUBMIT_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apbd.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env({"COLUMNS": "200"}), cwd=str(REPO_ROOT))


def test_submit_builds_and_downloads(module_server, tmp_path):
    output = tmp_path / "out"
    result = run_apbd("submit", str(EXAMPLES_DIR / "mdtoc"), "--server", module_server.url,
                      "--output", str(output))
    assert result.returncode == 0, result.stderr + result.stdout

    match = re.search(r"^build_id: ([0-9a-f-]{36})$", result.stdout, re.M)
    assert match, result.stdout
    package = output / "any" / "mdtoc-1.2.0-1-any.pkg.tar.zst"
    assert package.is_file()
    assert "usr/bin/mdtoc" in bsdtar_list(package)
    assert (output / "any" / "build.log").stat().st_size > 0
    assert str(package) in result.stdout.splitlines()
    # The build output was followed live and printed.
    assert "==> Finished making: mdtoc 1.2.0-1" in result.stdout


def test_submit_split_package_lands_under_arch(module_server, tmp_path):
    info = requests.get(module_server.url + "/", headers={"Accept": "application/json"}, timeout=10).json()
    arch = info["supported_architecture"]
    output = tmp_path / "out"
    result = run_apbd("submit", str(EXAMPLES_DIR / "tally"), "--server", module_server.url,
                      "--output", str(output), "--quiet")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Making package" not in result.stdout

    # Like the APB client, apbd submit names the folder after the first item of the build's arch.
    build_id = re.search(r"^build_id: (\S+)$", result.stdout, re.M).group(1)
    status = requests.get(f"{module_server.url}/build/{build_id}/status-api", timeout=10).json()
    folder = output / status["arch"][0]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"libtally-1:2.1.0-3-{arch}.pkg.tar.zst", f"tally-1:2.1.0-3-{arch}.pkg.tar.zst",
                            f"tally-debug-1:2.1.0-3-{arch}.pkg.tar.zst", "build.log"])


def test_submit_failed_build_exits_nonzero(module_server, tmp_path):
    output = tmp_path / "out"
    result = run_apbd("submit", str(EXAMPLES_DIR / "fails-in-build"), "--server", module_server.url,
                      "--output", str(output))
    assert result.returncode == submit.EXIT_BUILD_FAILED, result.stderr
    assert "stops here on purpose" in result.stdout + result.stderr
    log_file = output / "any" / "build.log"
    assert "stops here on purpose" in log_file.read_text()
    assert "failed" in result.stderr


def test_submit_without_pkgbuild_is_usage_error(tmp_path):
    result = run_apbd("submit", str(tmp_path), "--server", "http://127.0.0.1:9")
    assert result.returncode == submit.EXIT_USAGE
    assert "contains no PKGBUILD" in result.stderr


def test_submit_unreachable_server(tmp_path):
    port = free_port()
    result = run_apbd("submit", str(EXAMPLES_DIR / "mdtoc"), "--server", f"http://127.0.0.1:{port}",
                      "--output", str(tmp_path / "out"))
    assert result.returncode == submit.EXIT_SERVER_ERROR
    assert "could not submit" in result.stderr


def test_pack_folder_skips_build_leftovers(tmp_path):
    folder = tmp_path / "pkg-folder"
    (folder / "src" / "inner").mkdir(parents=True)
    (folder / "pkg" / "name").mkdir(parents=True)
    (folder / "patches").mkdir()
    (folder / "PKGBUILD").write_text("pkgname=x\n")
    (folder / "patches" / "fix.patch").write_text("patch\n")
    (folder / "src" / "inner" / "object.o").write_text("built\n")
    (folder / "pkg" / "name" / ".PKGINFO").write_text("built\n")
    (folder / "x-1-1-any.pkg.tar.zst").write_bytes(b"built")
    (folder / "x-1-1-x86_64-build.log").write_text("log\n")

    tarball = tmp_path / "build.tar.gz"
    members = submit.pack_folder(folder, tarball)
    assert members == ["PKGBUILD", "patches/fix.patch"]
    with tarfile.open(tarball) as archive:
        assert archive.getnames() == ["PKGBUILD", "patches/fix.patch"]


def test_help_lists_defaults_and_env(tmp_path):
    top = run_apbd("--help", timeout=30)
    assert top.returncode == 0
    assert "serve" in top.stdout
    assert "submit" in top.stdout

    serve = run_apbd("serve", "--help", timeout=30)
    assert serve.returncode == 0
    for text in ("--builds-dir", "APB_BUILDS_DIR", "--port", "APB_PORT", "default: 8000",
                 "--max-concurrent", "APB_MAX_CONCURRENT", "--buildroot", "--build-timeout", "default: 7200"):
        assert text in serve.stdout, text

    submit_help = run_apbd("submit", "--help", timeout=30)
    assert submit_help.returncode == 0
    for text in ("--server", "--output", "--timeout", "OUTPUT/ARCH/FILENAME"):
        assert text in submit_help.stdout, text


def wait_until(predicate, timeout: float, description: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(description)


def test_serve_builds_and_stops_both(tmp_path):
    make_reachable(tmp_path)
    spool_dir = tmp_path / "spool"
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        serve = subprocess.Popen([sys.executable, "-m", "apbd.cli", "serve", "--host", "127.0.0.1",
                                  "--port", str(port), "--builds-dir", str(spool_dir)],
                                 stdout=log_file, stderr=subprocess.STDOUT, env=child_env(), cwd=str(REPO_ROOT),
                                 start_new_session=True)
    try:
        def web_ready():
            try:
                return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(web_ready, 30, f"apbd serve did not answer; log:\n{log_path.read_text()}")
        wait_until(lambda: list((spool_dir / "runners").glob("*.json")), 30,
                   f"no runner state file; log:\n{log_path.read_text()}")
        children = psutil.Process(serve.pid).children()
        assert len(children) == 2

        built = run_apbd("submit", str(EXAMPLES_DIR / "mdtoc"), "--server", f"http://127.0.0.1:{port}",
                         "--output", str(tmp_path / "out"), "--quiet")
        assert built.returncode == 0, built.stderr + log_path.read_text()
        assert (tmp_path / "out" / "any" / "mdtoc-1.2.0-1-any.pkg.tar.zst").is_file()
        # Both children got --builds-dir through APB_BUILDS_DIR: the job lives in this spool.
        assert len(list((spool_dir / "jobs").iterdir())) == 1
        commands = sorted(" ".join(child.cmdline()) for child in children)
        assert any("apbd.runner" in c for c in commands), commands
        assert any("apbd.web" in c for c in commands), commands

        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0, log_path.read_text()
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], f"children still running after apbd serve stopped: {alive}"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def test_serve_stops_when_a_child_dies(tmp_path):
    make_reachable(tmp_path)
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        serve = subprocess.Popen([sys.executable, "-m", "apbd.cli", "serve", "--host", "127.0.0.1",
                                  "--port", str(port), "--builds-dir", str(tmp_path / "spool")],
                                 stdout=log_file, stderr=subprocess.STDOUT, env=child_env(), cwd=str(REPO_ROOT),
                                 start_new_session=True)
    try:
        children = wait_until(lambda: len(psutil.Process(serve.pid).children()) == 2
                              and psutil.Process(serve.pid).children(), 30, "children did not start")
        web = next(c for c in children if "apbd.web" in " ".join(c.cmdline()))
        web.kill()
        assert serve.wait(timeout=60) != 0
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
        assert "exited with status" in log_path.read_text()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def test_submit_sends_token(spool, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o600)
    web = WebServer(spool.root, tmp_path, ["--token-file", str(token_file)])
    try:
        runner = Runner(spool.root, tmp_path)
        try:
            refused = run_apbd("submit", str(EXAMPLES_DIR / "mdtoc"), "--server", web.url,
                               "--output", str(tmp_path / "refused"))
            assert refused.returncode == submit.EXIT_SERVER_ERROR
            assert "rejected the build" in refused.stderr

            accepted = run_apbd("submit", str(EXAMPLES_DIR / "mdtoc"), "--server", web.url,
                                "--output", str(tmp_path / "out"), "--token-file", str(token_file), "--quiet")
            assert accepted.returncode == 0, accepted.stderr
            assert (tmp_path / "out" / "any" / "mdtoc-1.2.0-1-any.pkg.tar.zst").is_file()
        finally:
            runner.stop()
    finally:
        web.stop()
