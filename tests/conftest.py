"""Shared fixtures: a tmp spool, and real apbd-web / apbd-runner processes on it."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Make `tests.support` importable however pytest was started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apbd.spool import Spool  # noqa: E402
from tests.support.servers import Runner, WebServer, make_reachable  # noqa: E402


# Temporary folders of test sessions that did not choose --basetemp.
SESSION_TMP_PARENT = Path("/var/tmp/apbd-tests")


def pytest_configure(config):
    """Give this session its own temporary folder outside /tmp/pytest-of-USER.

    pytest keeps /tmp/pytest-of-USER at mode 0700 and removes the oldest
    session folders there, also while another session still uses them. The
    build user must reach the spools, and several test sessions may run at
    once, so each session gets a folder of its own that only it removes.
    """
    if config.option.basetemp or hasattr(config, "workerinput"):
        return
    SESSION_TMP_PARENT.mkdir(mode=0o711, parents=True, exist_ok=True)
    config.option.basetemp = tempfile.mkdtemp(prefix="session-", dir=SESSION_TMP_PARENT)
    config._apbd_session_tmp = config.option.basetemp


def pytest_unconfigure(config):
    """Remove this session's temporary folder unless APBD_KEEP_TEST_TMP is set."""
    folder = getattr(config, "_apbd_session_tmp", None)
    if folder and not os.environ.get("APBD_KEEP_TEST_TMP"):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def spool(tmp_path) -> Spool:
    """An empty spool with all its folders, under the test's tmp_path, reachable by the build user."""
    make_reachable(tmp_path)
    spool = Spool(tmp_path / "spool")
    spool.create()
    return spool


@pytest.fixture
def web_server(spool, tmp_path):
    """A real apbd-web process on a free loopback port, serving the `spool` fixture."""
    server = WebServer(spool.root, tmp_path)
    yield server
    server.stop()


@pytest.fixture
def runner(spool, tmp_path):
    """A real apbd-runner process building the jobs of the `spool` fixture."""
    process = Runner(spool.root, tmp_path)
    yield process
    process.stop()


@pytest.fixture
def apbd_server(web_server, runner):
    """A web server and a runner on one spool; the value is the WebServer (use .url)."""
    return web_server


class ServerSet:
    """A spool with one apbd-web and one apbd-runner on it."""

    def __init__(self, root: Path, runner_args: list[str] = ()):
        make_reachable(root)
        self.spool = Spool(root / "spool")
        self.spool.create()
        self.web = WebServer(self.spool.root, root)
        try:
            self.runner = Runner(self.spool.root, root, list(runner_args))
        except Exception:
            self.web.stop()
            raise
        self.url = self.web.url

    def stop(self) -> None:
        self.runner.stop()
        self.web.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One web server and runner shared by the tests of a module, on its own spool."""
    servers = ServerSet(tmp_path_factory.mktemp("apbd"))
    yield servers
    servers.stop()
