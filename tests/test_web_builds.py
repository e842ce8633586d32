"""Status, output, downloads and cancel of builds in a real spool, through a real waitress server."""

from __future__ import annotations

import os
import socket
import time

import requests

from tests.test_web_common import LOOPBACK, add_build, spool, web  # noqa: F401

PACKAGES = ["demo-1:2.0+git@3-1-x86_64.pkg.tar.zst", "demo-debug-1:2.0+git@3-1-x86_64.pkg.tar.zst"]


def get(web, path: str, **params) -> requests.Response:
    return requests.get(web.url + path, params=params, timeout=10)


def raw_get(port: int, path: bytes) -> bytes:
    """GET a path exactly as given (requests would normalise it) and return the whole response."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


# status-api and status


def test_status_api_of_queued_build(web, spool):
    build_id = add_build(spool, state="queued")
    status = get(web, f"/build/{build_id}/status-api").json()
    assert status["build_id"] == build_id
    assert status["status"] == "queued"
    assert status["arch"] == ["x86_64"]
    assert isinstance(status["created_at"], float)
    assert status["build_timeout"] == 7200
    for absent in ("start_time", "end_time", "duration", "exit_code"):
        assert absent not in status, absent
    assert status["packages"] == []
    assert status["logs"] == []
    assert None not in status.values()


def test_status_api_of_completed_build(web, spool):
    build_id = add_build(spool, packages=PACKAGES, log_text="line 1\nline 2\n")
    status = get(web, f"/build/{build_id}/status-api").json()
    assert status["status"] == "completed"
    assert status["exit_code"] == 0
    assert status["duration"] == 10.0
    assert isinstance(status["start_time"], float)
    assert isinstance(status["end_time"], float)
    assert [p["filename"] for p in status["packages"]] == sorted(PACKAGES)
    package = status["packages"][0]
    assert set(package) == {"filename", "size", "download_url"}
    assert package["download_url"] == f"/build/{build_id}/download/{package['filename']}"
    assert status["logs"] == [{"filename": "build.log", "size": 14,
                               "download_url": f"/build/{build_id}/download/build.log"}]


def test_status_with_artifacts_ready(web, spool):
    done = add_build(spool, packages=PACKAGES)
    running, claim = add_build(spool, state="building")
    ready = get(web, f"/build/{done}/status", format="json").json()
    assert ready["artifacts_ready"] is True
    assert ready["logs"][0]["filename"] == "build.log"
    busy = get(web, f"/build/{running}/status", format="json").json()
    assert busy["status"] == "building"
    assert busy["artifacts_ready"] is False
    claim.release()


def test_build_json_has_iso_times_and_sources(web, spool):
    build_id = add_build(spool, packages=PACKAGES, created_at=1705744800.0)
    info = get(web, f"/build/{build_id}").json()
    assert info["created_at"] == "2024-01-20T10:00:00Z"
    assert info["start_time"] == "2024-01-20T10:00:01Z"
    assert info["end_time"] == "2024-01-20T10:00:11Z"
    assert info["duration"] == 10.0
    assert [s["filename"] for s in info["sources"]] == ["PKGBUILD"]
    assert len(info["packages"]) == 2


# output


def test_output_pages_through_log(web, spool):
    lines = [f"line {i}" for i in range(1500)]
    build_id = add_build(spool, log_text="\n".join(lines) + "\n")
    first = get(web, f"/build/{build_id}/output").json()
    assert first["output"] == lines[:50]
    assert first["total_lines"] == 1500
    assert first["start_index"] == 0
    assert first["returned_lines"] == 50
    page = get(web, f"/build/{build_id}/output", start_index=100, limit=3).json()
    assert page["output"] == ["line 100", "line 101", "line 102"]
    capped = get(web, f"/build/{build_id}/output", limit=5000).json()
    assert capped["returned_lines"] == 1000
    assert get(web, f"/build/{build_id}/output", start_index=-1).status_code == 400
    assert get(web, f"/build/{build_id}/output", limit="many").status_code == 400


def test_output_of_queued_build_is_empty(web, spool):
    build_id = add_build(spool, state="queued")
    answer = get(web, f"/build/{build_id}/output").json()
    assert answer["output"] == []
    assert answer["total_lines"] == 0


# downloads


def test_download_package_with_special_name(web, spool):
    build_id = add_build(spool, packages=PACKAGES)
    name = PACKAGES[0]
    answer = get(web, f"/build/{build_id}/download/{name}")
    assert answer.status_code == 200
    assert answer.content == f"package {name}\n".encode()
    assert answer.headers["Content-Type"] == "application/octet-stream"
    assert answer.headers["Content-Length"] == str(len(answer.content))
    assert answer.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    escaped = raw_get(web.port, f"/build/{build_id}/download/{name.replace(':', '%3A')}".encode())
    assert escaped.startswith(b"HTTP/1.1 200")
    assert escaped.endswith(f"package {name}\n".encode())


def test_download_log_and_sources(web, spool):
    build_id = add_build(spool, log_text="all output\n")
    assert get(web, f"/build/{build_id}/download/build.log").content == b"all output\n"
    assert get(web, f"/build/{build_id}/download/PKGBUILD").content.startswith(b"pkgname=demo")


def test_download_rejects_escapes(web, spool):
    build_id = add_build(spool, packages=PACKAGES)
    job = spool.job_dir(build_id)
    os.symlink("/etc/passwd", job / "packages" / "planted.pkg.tar.zst")
    os.symlink("../status.json", job / "src" / "status-link")
    prefix = f"/build/{build_id}/download/".encode()
    for name in (b"status.json", b"request.json", b"lock", b"..", b"%2e%2e", b"..%2Fstatus.json",
                 b"%2e%2e%2fstatus.json", b"build.log%00", b"planted.pkg.tar.zst", b"status-link",
                 b"..%2F..%2F..%2Fetc%2Fpasswd", b"src", b"packages"):
        answer = raw_get(web.port, prefix + name)
        assert answer.startswith(b"HTTP/1.1 404"), name
        assert b"root:" not in answer, name
        assert b'"status": "completed"' not in answer, name
    listed = get(web, f"/build/{build_id}/status-api").json()
    assert "planted.pkg.tar.zst" not in [p["filename"] for p in listed["packages"]]


def test_packages_list(web, spool):
    build_id = add_build(spool, packages=PACKAGES)
    answer = get(web, f"/build/{build_id}/packages").json()
    assert answer["build_id"] == build_id
    assert [p["filename"] for p in answer["packages"]] == sorted(PACKAGES)
    assert answer["packages"][0]["created_at"].endswith("Z")
    assert answer["packages"][0]["size"] > 0


# cancel


def test_cancel_queued_build(web, spool):
    build_id = add_build(spool, state="queued")
    answer = requests.post(f"{web.url}/build/{build_id}/cancel", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"success": True, "message": "Build cancelled successfully"}
    assert spool.read_status(build_id)["status"] == "cancelled"
    assert spool.queued_ids() == []
    again = requests.post(f"{web.url}/build/{build_id}/cancel", timeout=10)
    assert again.status_code == 200


def test_cancel_running_build_leaves_marker(web, spool):
    build_id, claim = add_build(spool, state="building")
    answer = requests.post(f"{web.url}/build/{build_id}/cancel", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["success"] is True
    assert spool.cancel_requested(build_id)
    assert spool.read_status(build_id)["status"] == "building"
    claim.release()


def test_cancel_finished_build_is_409(web, spool):
    build_id = add_build(spool, state="failed")
    answer = requests.post(f"{web.url}/build/{build_id}/cancel", timeout=10)
    assert answer.status_code == 409
    assert "already failed" in answer.json()["detail"]
    assert not spool.cancel_requested(build_id)


def test_cancel_unknown_build_is_404(web):
    answer = requests.post(f"{web.url}/build/48ea1df5-f7f3-477e-a7a7-36e526ea7cd3/cancel", timeout=10)
    assert answer.status_code == 404


# cleanup and content negotiation


def test_admin_cleanup_removes_old_builds(web, spool):
    old = add_build(spool, created_at=time.time() - 30 * 24 * 3600)
    recent = add_build(spool)
    answer = requests.post(f"{web.url}/admin/cleanup", timeout=30)
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is True
    assert body["cleanup_id"].startswith("cleanup_")
    assert "removed 1 old builds" in body["message"]
    assert not spool.exists(old)
    assert spool.exists(recent)
    assert [b["build_id"] for b in get(web, "/builds/latest").json()["builds"]] == [recent]


def test_browser_gets_html_and_client_gets_json(web, spool):
    build_id = add_build(spool)
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    for path in ("/", f"/build/{build_id}"):
        page = requests.get(web.url + path, headers=browser, timeout=10)
        assert page.status_code == 200, path
        assert page.headers["Content-Type"].startswith("text/html"), path
        data = requests.get(web.url + path, headers={"Accept": "application/json"}, timeout=10)
        assert data.headers["Content-Type"].startswith("application/json"), path
        assert requests.get(web.url + path, timeout=10).headers["Content-Type"].startswith("application/json")


def test_overlong_names_are_404(web, spool):
    build_id = add_build(spool)
    long_name = "a" * 300
    assert get(web, f"/build/{build_id}/download/{long_name}").status_code == 404
    assert get(web, f"/builds/pkgname/{long_name}").json()["builds"] == []
    assert get(web, f"/builds/pkgname/{long_name}/latest").status_code == 404


def test_build_arch_reports_host_architecture():
    """A PKGBUILD that lists several architectures is built for the host's alone."""
    from apbd.web.status import build_arch

    assert build_arch(["x86_64", "aarch64", "powerpc64le"], "aarch64") == ["aarch64"]
    assert build_arch(["any"], "x86_64") == ["any"]
    assert build_arch("x86_64", "x86_64") == ["x86_64"]
    assert build_arch(None, "x86_64") == []
    assert build_arch(["aarch64"], "x86_64") == ["aarch64"]
