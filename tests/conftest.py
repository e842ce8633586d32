"""Shared fixtures: a tmp spool, and real apbd-web / apbd-runner processes on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Make `tests.support` importable however pytest was started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apbd.spool import Spool  # noqa: E402
from tests.support.servers import Runner, WebServer  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def spool(tmp_path) -> Spool:
    """An empty spool with all its folders, under the test's tmp_path."""
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
