"""End-to-end builds of every example through a real apbd-web and a real apbd-runner.

All examples are submitted at once to one server (the runner builds up to its
max-concurrent at a time), then each test checks one example's result: the
status the API reports, and the package files themselves with bsdtar.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import requests

from tests.support.packages import EXAMPLES_DIR, bsdtar_list, download, pkginfo, submit_tarball, tarball_of
from tests.support.servers import wait_for_status

EXAMPLES = ["mdtoc", "tally", "fails-in-build", "slow-counter"]
BUILD_WAIT_S = 300


@pytest.fixture(scope="module")
def architecture(module_server) -> str:
    info = requests.get(module_server.url + "/", headers={"Accept": "application/json"}, timeout=10).json()
    return info["supported_architecture"]


@pytest.fixture(scope="module")
def builds(module_server, tmp_path_factory):
    """Submit every example, wait for each to end; map example -> (final status, download folder)."""
    build_ids = {}
    for name in EXAMPLES:
        answer = submit_tarball(module_server.url, tarball_of(EXAMPLES_DIR / name))
        assert answer.status_code == 200, f"{name}: HTTP {answer.status_code} {answer.text}"
        build_ids[name] = answer.json()["build_id"]

    results = {}
    for name, build_id in build_ids.items():
        status = wait_for_status(module_server.url, build_id, timeout=BUILD_WAIT_S)
        folder = tmp_path_factory.mktemp(f"download-{name}")
        for entry in status.get("packages", []) + status.get("logs", []):
            download(module_server.url, entry, folder)
        results[name] = (status, folder)
    return results


def package_names(status: dict) -> set[str]:
    return {entry["filename"] for entry in status.get("packages", [])}


def build_log(module_server, status: dict) -> str:
    answer = requests.get(f"{module_server.url}/build/{status['build_id']}/download/build.log", timeout=30)
    assert answer.status_code == 200
    return answer.text


def test_script_package_any(builds, module_server):
    status, folder = builds["mdtoc"]
    assert status["status"] == "completed", build_log(module_server, status)
    assert status["exit_code"] == 0
    assert status["pkgname"] == "mdtoc"
    assert status["arch"] == ["any"]
    assert package_names(status) == {"mdtoc-1.2.0-1-any.pkg.tar.zst"}

    package = folder / "mdtoc-1.2.0-1-any.pkg.tar.zst"
    assert "usr/bin/mdtoc" in bsdtar_list(package)
    info = pkginfo(package)
    assert info["pkgname"] == ["mdtoc"]
    assert info["pkgver"] == ["1.2.0-1"]
    assert info["arch"] == ["any"]


def test_split_package_with_epoch(builds, module_server, architecture):
    status, folder = builds["tally"]
    assert status["status"] == "completed", build_log(module_server, status)
    assert status["pkgname"] == "tally"
    # The PKGBUILD's arch array; the packages are built for the server's architecture.
    assert architecture in status["arch"]
    expected = {f"{name}-1:2.1.0-3-{architecture}.pkg.tar.zst" for name in ("libtally", "tally", "tally-debug")}
    assert package_names(status) == expected

    library = folder / f"libtally-1:2.1.0-3-{architecture}.pkg.tar.zst"
    tool = folder / f"tally-1:2.1.0-3-{architecture}.pkg.tar.zst"
    debug = folder / f"tally-debug-1:2.1.0-3-{architecture}.pkg.tar.zst"
    for package, pkgname in ((library, "libtally"), (tool, "tally"), (debug, "tally-debug")):
        info = pkginfo(package)
        assert info["pkgname"] == [pkgname]
        assert info["pkgbase"] == ["tally"]
        assert info["pkgver"] == ["1:2.1.0-3"]
        assert info["arch"] == [architecture]
    assert "usr/lib/libtally.so.1" in bsdtar_list(library)
    assert "usr/bin/tally" in bsdtar_list(tool)
    assert any(name.startswith("usr/lib/debug/") and name.endswith(".debug") for name in bsdtar_list(debug))
    assert pkginfo(tool)["depend"] == ["libtally=1:2.1.0"]


def test_split_package_binary_runs(builds, tmp_path, architecture):
    status, folder = builds["tally"]
    assert status["status"] == "completed"
    for name in ("libtally", "tally"):
        subprocess.run(["bsdtar", "-xf", str(folder / f"{name}-1:2.1.0-3-{architecture}.pkg.tar.zst"),
                        "-C", str(tmp_path), "usr"], check=True)

    result = subprocess.run([str(tmp_path / "usr/bin/tally"), "2"], input="b a b c b a\n", capture_output=True,
                            text=True, env={**os.environ, "LD_LIBRARY_PATH": str(tmp_path / "usr/lib")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "b", "2", "a"]


def test_failing_build_keeps_log(builds):
    status, folder = builds["fails-in-build"]
    assert status["status"] == "failed"
    assert isinstance(status["exit_code"], int)
    assert status["exit_code"] != 0
    assert status.get("packages", []) == []
    assert [entry["filename"] for entry in status["logs"]] == ["build.log"]

    log_text = (folder / "build.log").read_text(errors="replace")
    assert "stops here on purpose" in log_text
    assert "A failure occurred in build()" in log_text


def test_slow_build_logs_every_step(builds, module_server):
    status, folder = builds["slow-counter"]
    assert status["status"] == "completed", build_log(module_server, status)
    assert package_names(status) == {"slow-counter-1.0-1-any.pkg.tar.zst"}
    assert "usr/share/slow-counter/result.txt" in bsdtar_list(folder / "slow-counter-1.0-1-any.pkg.tar.zst")

    log_lines = (folder / "build.log").read_text().splitlines()
    steps = [line for line in log_lines if line.startswith("step ")]
    assert steps == [f"step {i} of 30" for i in range(1, 31)]
    assert status["duration"] >= 30


def test_output_endpoint_pages_whole_log(builds, module_server):
    status, folder = builds["slow-counter"]
    lines_on_disk = (folder / "build.log").read_text().splitlines()
    page = requests.get(f"{module_server.url}/build/{status['build_id']}/output",
                        params={"start_index": 0, "limit": 1000}, timeout=10).json()
    assert page["total_lines"] == len(lines_on_disk)
    assert page["output"] == lines_on_disk
    assert page["returned_lines"] == len(lines_on_disk)
