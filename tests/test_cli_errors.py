"""`apbd submit` argument errors: each exits with the usage status and a message that names the fix.

None of these needs a server: every argument is checked before anything is
sent. The server URL given is a free loopback port, so a check that failed to
stop the command would show up as a connection error with another status.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from apbd import cli, submit
from tests.support.packages import EXAMPLES_DIR
from tests.support.servers import REPO_ROOT, child_env, free_port, make_reachable

FOLDER = str(EXAMPLES_DIR / "mdtoc")
# The unprivileged build user that scripts/common.sh creates (the default of --build-user).
BUILD_USER = "apbd-build"


def run_submit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apbd.cli", "submit", *args], capture_output=True, text=True,
                          timeout=60, env=child_env({"COLUMNS": "200", **(env or {})}), cwd=str(REPO_ROOT))


def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def assert_usage_error(result: subprocess.CompletedProcess, *texts: str) -> None:
    assert result.returncode == submit.EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was packed or sent.
    assert ":: uploading" not in result.stderr
    for text in texts:
        assert text in result.stderr, text


# {port} becomes a free loopback port, so a check that let a URL through would find no server.
@pytest.mark.parametrize("server, advice", [
    ("127.0.0.1:{port}", "--server needs a URL such as http://127.0.0.1:{port}"),
    ("localhost", "--server needs a URL such as http://localhost"),
    ("ftp://127.0.0.1:{port}", "the scheme ftp:// is not http:// or https://"),
    ("http://", "it names no host"),
    ("http://127.0.0.1:port", "--server needs a URL such as"),
    ("http://127.0.0.1:99999", "--server needs a URL such as"),
    ("http://127.0.0.1:{port}/?x=1", "a server's base URL has no query or fragment"),
])
def test_server_url_without_scheme_or_host(server, advice):
    port = free_port()
    server, advice = server.format(port=port), advice.format(port=port)
    result = run_submit(FOLDER, "--server", server)
    assert_usage_error(result, advice, repr(server))
    assert "connection adapters" not in result.stderr


def test_server_url_from_environment_named():
    port = free_port()
    result = run_submit(FOLDER, env={cli.SERVER_URL_ENV: f"127.0.0.1:{port}"})
    assert_usage_error(result, f"{cli.SERVER_URL_ENV} needs a URL such as http://127.0.0.1:{port}")


def test_server_url_accepted_forms():
    assert submit.check_server_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert submit.check_server_url("https://[::1]:8443") == "https://[::1]:8443"
    # A server behind a reverse proxy may live under a path.
    assert submit.check_server_url("http://127.0.0.1/apbd/") == "http://127.0.0.1/apbd"


def test_missing_folder_says_so(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = run_submit(str(missing), "--server", unused_url())
    assert_usage_error(result, f"the folder {missing} does not exist")
    assert "contains no PKGBUILD" not in result.stderr


def test_pkgbuild_given_instead_of_folder():
    result = run_submit(str(EXAMPLES_DIR / "mdtoc" / "PKGBUILD"), "--server", unused_url())
    assert_usage_error(result, "is a file, not a folder", f"give its folder, {EXAMPLES_DIR / 'mdtoc'}")


def test_folder_without_pkgbuild(tmp_path):
    result = run_submit(str(tmp_path), "--server", unused_url())
    assert_usage_error(result, f"{tmp_path} contains no PKGBUILD")


def test_output_under_a_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    for output in (blocker, blocker / "below"):
        result = run_submit(FOLDER, "--server", unused_url(), "--output", str(output))
        assert_usage_error(result, f"{blocker} is a file, not a folder")


def make_package_folder(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "PKGBUILD").write_text("pkgname=x\n")
    return folder


def test_fifo_in_folder_is_usage_error(tmp_path):
    folder = make_package_folder(tmp_path)
    os.mkfifo(folder / "pipe")
    result = run_submit(str(folder), "--server", unused_url())
    assert_usage_error(result, f"{folder / 'pipe'} is a FIFO")


def test_socket_in_folder_is_usage_error(tmp_path):
    folder = make_package_folder(tmp_path)
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(folder / "control.sock"))
        # tarfile leaves a socket out without an error, so the packed list would name a missing file.
        with pytest.raises(submit.SubmitError) as raised:
            submit.pack_folder(folder, tmp_path / "build.tar.gz")
    finally:
        listener.close()
    assert raised.value.exit_code == submit.EXIT_USAGE
    assert f"{folder / 'control.sock'} is a socket" in str(raised.value)


def test_unreadable_source_is_usage_error(tmp_path):
    make_reachable(tmp_path)
    folder = make_package_folder(tmp_path)
    folder.chmod(0o755)
    secret = folder / "secret.patch"
    secret.write_text("only root reads this\n")
    secret.chmod(0o600)
    output = tmp_path / "out"
    output.mkdir(mode=0o777)
    output.chmod(0o777)
    # Root reads every file, so the command runs as the unprivileged build user.
    command = ["runuser", "-u", BUILD_USER, "--", sys.executable, "-m", "apbd.cli", "submit", str(folder),
               "--server", unused_url(), "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env=child_env({"COLUMNS": "200"}), cwd=str(REPO_ROOT))
    assert_usage_error(result, f"cannot read {secret} to pack it: Permission denied")


@pytest.mark.parametrize("option, value, message", [
    ("--timeout", "soon", "argument --timeout: must be a positive number of seconds, not 'soon'"),
    ("--timeout", "0", "must be a positive number of seconds"),
    ("--timeout", "nan", "must be a positive number of seconds"),
    ("--build-timeout", "fast", "argument --build-timeout: must be a whole number of seconds, not 'fast'"),
    ("--build-timeout", "10", "must be between 300 and 14400 seconds, not 10"),
    ("--build-timeout", "99999", "must be between 300 and 14400 seconds, not 99999"),
])
def test_number_options_checked_locally(option, value, message):
    result = run_submit(FOLDER, "--server", unused_url(), option, value)
    assert_usage_error(result, message)
    assert "invalid positive_seconds value" not in result.stderr


def test_missing_token_file(tmp_path):
    result = run_submit(FOLDER, "--server", unused_url(), "--token-file", str(tmp_path / "token"))
    assert_usage_error(result, f"cannot read the token file {tmp_path / 'token'}")


def test_help_names_units_and_url_form():
    result = subprocess.run([sys.executable, "-m", "apbd.cli", "submit", "--help"], capture_output=True,
                            text=True, timeout=30, env=child_env({"COLUMNS": "200"}), cwd=str(REPO_ROOT))
    assert result.returncode == 0
    assert "--server URL" in result.stdout
    assert "with http:// or https://" in result.stdout
    assert "--timeout SECONDS" in result.stdout
    assert "--build-timeout SECONDS" in result.stdout
    assert "--token-file FILE" in result.stdout
    assert "BUILD_TIMEOUT" not in result.stdout


def test_restart_delay_doubles_to_maximum():
    delays = [cli.restart_delay(n) for n in range(1, 10)]
    assert delays[0] == cli.RESTART_DELAY_FIRST_S
    assert delays[1] == 2 * cli.RESTART_DELAY_FIRST_S
    assert max(delays) == cli.RESTART_DELAY_MAX_S
    assert delays == sorted(delays)
