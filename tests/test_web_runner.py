"""End to end through POST /build: a real apbd-runner builds the examples with makepkg."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.servers import Runner
from tests.test_web_common import spool, submit, web  # noqa: F401

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BUILD_WAIT_S = 240


def tar_folder(folder: Path) -> bytes:
    """Return a .tar.gz of folder with one top-level folder, as `tar czf x.tar.gz NAME/` makes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def wait_finished(url: str, build_id: str) -> dict:
    deadline = time.monotonic() + BUILD_WAIT_S
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/build/{build_id}/status", params={"format": "json"}, timeout=10).json()
        if status["artifacts_ready"]:
            return status
        time.sleep(0.5)
    pytest.fail(f"build {build_id} did not finish within {BUILD_WAIT_S} s: {status}")


@pytest.fixture
def runner(spool, tmp_path):
    process = Runner(spool.root, tmp_path)
    yield process
    process.stop()


def test_split_epoch_package_built_end_to_end(web, spool, runner, tmp_path):
    build_id = str(uuid.uuid4())
    answer = submit(web.url, tar_folder(EXAMPLES / "tally"), build_id=build_id, build_timeout="900")
    assert answer.status_code == 200

    status = wait_finished(web.url, build_id)
    assert status["status"] == "completed", requests.get(f"{web.url}/build/{build_id}/output",
                                                         params={"limit": 1000}, timeout=10).json()
    assert status["exit_code"] == 0
    assert isinstance(status["duration"], float)
    names = [p["filename"] for p in status["packages"]]
    assert any(n.startswith("libtally-1:2.1.0-3-") for n in names), names
    assert any(n.startswith("tally-1:2.1.0-3-") for n in names), names
    assert [log["filename"] for log in status["logs"]] == ["build.log"]

    for item in status["packages"] + status["logs"]:
        download = requests.get(web.url + item["download_url"], timeout=30)
        assert download.status_code == 200, item
        assert len(download.content) == item["size"] > 0, item
        (tmp_path / item["filename"]).write_bytes(download.content)
    tool = next(n for n in names if n.startswith("tally-1:"))
    listing = subprocess.run(["bsdtar", "-tf", str(tmp_path / tool)], capture_output=True, text=True, check=True)
    assert ".PKGINFO" in listing.stdout

    output = requests.get(f"{web.url}/build/{build_id}/output", params={"limit": 1000}, timeout=10).json()
    assert output["total_lines"] > 5
    latest = requests.get(f"{web.url}/builds/pkgname/tally/latest", timeout=10).json()
    assert latest["build_id"] == build_id


def test_failing_build_lists_its_log(web, spool, runner):
    answer = submit(web.url, tar_folder(EXAMPLES / "fails-in-build"))
    assert answer.status_code == 200
    status = wait_finished(web.url, answer.json()["build_id"])
    assert status["status"] == "failed"
    assert status["exit_code"] != 0
    assert status["logs"][0]["filename"] == "build.log"
    assert status["logs"][0]["size"] > 0
    log = requests.get(web.url + status["logs"][0]["download_url"], timeout=10)
    assert log.status_code == 200
    assert len(log.content) > 0
