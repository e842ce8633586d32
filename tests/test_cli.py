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


def wait_until(predicate, timeout: float, description):
    """Return predicate's first true value; raise TimeoutError with description (a str, or a callable
    read at the timeout, such as a log reader) after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(description() if callable(description) else description)


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

        wait_until(web_ready, 30, lambda: f"apbd serve did not answer; log:\n{log_path.read_text()}")
        wait_until(lambda: list((spool_dir / "runners").glob("*.json")), 30,
                   lambda: f"no runner state file; log:\n{log_path.read_text()}")
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


def start_serve(tmp_path, *options: str) -> tuple[subprocess.Popen, int, object]:
    """Start `apbd serve` on a free loopback port with a tmp spool; return it, its port and its log path."""
    make_reachable(tmp_path)
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        serve = subprocess.Popen([sys.executable, "-m", "apbd.cli", "serve", "--host", "127.0.0.1",
                                  "--port", str(port), "--builds-dir", str(tmp_path / "spool"), *options],
                                 stdout=log_file, stderr=subprocess.STDOUT, env=child_env(), cwd=str(REPO_ROOT),
                                 start_new_session=True)
    return serve, port, log_path


def child_running(serve: subprocess.Popen, module: str, old_pid: int | None = None):
    """Return serve's running child process of module (other than old_pid), or None."""
    try:
        children = psutil.Process(serve.pid).children()
        for child in children:
            if module in " ".join(child.cmdline()) and child.pid != old_pid and child.status() != psutil.STATUS_ZOMBIE:
                return child
    except psutil.NoSuchProcess:
        return None
    return None


def test_serve_restarts_a_dead_child(tmp_path):
    serve, port, log_path = start_serve(tmp_path)
    try:
        def web_answers():
            try:
                return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        # apbd serve treats a death before its own first connection as a failed start: wait for that.
        wait_until(lambda: "apbd is serving" in log_path.read_text(), 30,
                   lambda: f"apbd serve did not start; log:\n{log_path.read_text()}")
        assert web_answers()
        web = child_running(serve, "apbd.web")
        runner = wait_until(lambda: child_running(serve, "apbd.runner"), 30, "no runner child")

        web.kill()
        new_web = wait_until(lambda: child_running(serve, "apbd.web", web.pid), 30,
                             lambda: f"apbd-web was not restarted; log:\n{log_path.read_text()}")
        wait_until(web_answers, 30, lambda: f"the restarted apbd-web did not answer; log:\n{log_path.read_text()}")
        assert serve.poll() is None
        assert f"apbd-web (pid {web.pid}) was killed by SIGKILL: restarting it in 1 s" in log_path.read_text()

        runner.kill()
        new_runner = wait_until(lambda: child_running(serve, "apbd.runner", runner.pid), 30,
                                lambda: f"apbd-runner was not restarted; log:\n{log_path.read_text()}")
        assert f"apbd-runner (pid {runner.pid}) was killed by SIGKILL: restarting it" in log_path.read_text()
        assert new_web.is_running()

        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0, log_path.read_text()
        gone, alive = psutil.wait_procs([new_web, new_runner], timeout=5)
        assert alive == [], f"children still running after apbd serve stopped: {alive}"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def test_serve_stops_when_a_child_fails_to_start(tmp_path):
    # apbd-web cannot start without its token file: restarting would fail the same way.
    serve, port, log_path = start_serve(tmp_path, "--token-file", str(tmp_path / "missing-token"))
    try:
        assert serve.wait(timeout=60) != 0, log_path.read_text()
        text = log_path.read_text()
        assert "apbd-web" in text
        assert "while apbd serve started: stopping" in text
        assert "restarting" not in text
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


def test_submit_interrupted_names_running_build(module_server, tmp_path):
    """Ctrl-C while following: exit 130, the message names the build, and the build goes on."""
    submit_process = subprocess.Popen([sys.executable, "-m", "apbd.cli", "submit", str(EXAMPLES_DIR / "slow-counter"),
                                       "--server", module_server.url, "--output", str(tmp_path / "out")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=child_env({"COLUMNS": "200"}), cwd=str(REPO_ROOT))
    try:
        lines = []
        for line in submit_process.stdout:
            lines.append(line)
            if line.startswith("step 1 of"):
                break
        build_id = next(line.split()[1] for line in lines if line.startswith("build_id: "))
        submit_process.send_signal(signal.SIGINT)
        _, stderr = submit_process.communicate(timeout=30)
    finally:
        if submit_process.poll() is None:
            submit_process.kill()
            submit_process.wait()
    assert submit_process.returncode == submit.EXIT_INTERRUPTED
    assert f"build {build_id} goes on on the server" in stderr
    assert f"curl -X POST {module_server.url}/build/{build_id}/cancel" in stderr
    status = requests.get(f"{module_server.url}/build/{build_id}/status-api", timeout=10).json()
    assert status["status"] == "building"
    requests.post(f"{module_server.url}/build/{build_id}/cancel", timeout=10).raise_for_status()
