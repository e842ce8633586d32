"""Hostile URLs on /download and /view: only files the API lists are ever served.

A finished job is written into the spool by hand (as a runner leaves it), with
a secret in status.json and request.json, planted symlinks and a neighbour job.
Requests go out on a raw socket, because HTTP clients normalise `..` and
percent escapes before sending.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from apbd import spool as spool_format
from apbd.spool import Spool, write_json_atomic
from tests.support.servers import WebServer, make_reachable

SECRET = "apbd-secret-7f3a9c"
PACKAGE = "probe-1:1.0+git.r2@x-1-any.pkg.tar.zst"
PLUS_PACKAGE = "libfoo++-2.0-1-x86_64.pkg.tar.zst"
UNICODE_SOURCE = "naïve-日本.patch"
PASSWD_MARK = b"root:x:0:0"


def craft_job(spool: Spool, build_id: str, files: dict[str, bytes]) -> Path:
    """Publish a completed job whose folder holds files (relative path -> bytes)."""
    staging = spool.make_staging_dir(build_id)
    for relative, data in files.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    now = time.time()
    request = {"build_id": build_id, "created_at": now, "sha256": SECRET, "source": "tarball",
               "remote_addr": "127.0.0.1", "build_timeout": 7200, "extra_repos": []}
    status = {"build_id": build_id, "status": "queued", "created_at": now, "pkgname": "probe",
              "pkgbase": "probe", "pkgnames": ["probe"], "pkgver": "1.0", "pkgrel": "1", "epoch": "1",
              "version": "1:1.0-1", "arch": ["any"], "build_timeout": 7200, "source": "tarball",
              "secret_note": SECRET}
    assert spool.publish(staging, request, status)
    job = spool.job_dir(build_id)
    (job / spool_format.QUEUED_MARKER).unlink()
    status.update(status="completed", start_time=now, end_time=now + 1, duration=1.0, exit_code=0)
    write_json_atomic(job / spool_format.STATUS_FILE, status)
    return job


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("urls")
    make_reachable(root)
    spool = Spool(root / "spool")
    spool.create()
    build_id = "11111111-2222-4333-8444-555555555555"
    other_id = "99999999-8888-4777-8666-555555555555"
    job = craft_job(spool, build_id, {
        "build.log": b"==> Making package: probe\n",
        f"packages/{PACKAGE}": b"package-bytes-1",
        f"packages/{PLUS_PACKAGE}": b"package-bytes-2",
        "src/PKGBUILD": b"pkgname=probe\n",
        f"src/{UNICODE_SOURCE}": b"unicode-source",
        "src/with space.patch": b"space-source",
        "work/private-notes.txt": SECRET.encode(),
    })
    craft_job(spool, other_id, {"build.log": b"other\n", "packages/other-1-1-any.pkg.tar.zst": b"other"})
    # Planted symlinks, as a hostile build or a careless admin could leave them.
    (job / "packages" / "passwd.pkg.tar.zst").symlink_to("/etc/passwd")
    (job / "src" / "status-link").symlink_to("../status.json")
    (job / "src" / "up").symlink_to("..")
    (job / "packages" / "root").symlink_to("/")
    (job / "src" / ".hidden").write_bytes(SECRET.encode())
    server = WebServer(spool.root, root)
    yield server, spool, build_id, other_id
    server.stop()


def raw_get(port: int, target: bytes, method: bytes = b"GET") -> tuple[int, bytes, bytes]:
    """Send one request line exactly as given; return (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, body


def assert_not_served(status: int, head: bytes, body: bytes) -> None:
    assert status in (400, 404), (status, body[:300])
    assert SECRET.encode() not in body
    assert PASSWD_MARK not in body
    assert b"Traceback" not in body
    if b"application/json" in head.lower():
        reply = json.loads(body)
        assert reply.get("error"), reply
        assert reply.get("detail"), reply


HOSTILE_NAMES = [
    "..", ".", "%2e%2e", "%2E%2E", "%2e", "..%2fstatus.json", "%2e%2e%2fstatus.json", "..%2Frequest.json",
    "%252e%252e%252fstatus.json", "..%252fstatus.json", "%2e%2e%5cstatus.json", "..\\status.json",
    "%2fetc%2fpasswd", "%2Fetc%2Fpasswd", "status.json", "request.json", "lock", "queued", "cancel",
    "claimed", "src", "packages", "work", "private-notes.txt", "work%2fprivate-notes.txt", "passwd.pkg.tar.zst",
    "status-link", "up", "root", ".hidden", "build.log%00.txt", "build.log%00", "%00", "PKGBUILD%00",
    "%c0%ae%c0%ae", "..%c0%afstatus.json", "%ff%fe", "other-1-1-any.pkg.tar.zst",
]


@pytest.mark.parametrize("endpoint", ["download", "view"])
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_filename_not_served(site, endpoint, name):
    server, spool, build_id, other_id = site
    status, head, body = raw_get(server.port, f"/build/{build_id}/{endpoint}/{name}".encode())
    assert_not_served(status, head, body)


@pytest.mark.parametrize("endpoint", ["download", "view"])
@pytest.mark.parametrize("path", [
    "/build/{id}/{ep}/../status.json", "/build/{id}/{ep}/../../{other}/status.json",
    "/build/{id}/{ep}//etc/passwd", "/build/{id}/{ep}/root/etc/passwd", "/build/{id}/{ep}/up/status.json",
    "/build/{id}/{ep}/packages/../status.json", "/build/{id}/{ep}/src/PKGBUILD",
    "/build/{id}/{ep}/work/private-notes.txt", "/build/%2e%2e/{ep}/status.json",
    "/build/..%2f..%2fetc/{ep}/passwd", "/build/{id}%2f..%2f{other}/{ep}/build.log",
    "/build/not-a-uuid/{ep}/build.log", "/build//{ep}/build.log",
    "http://127.0.0.1/build/{id}/{ep}/../../../../etc/passwd",
    "/build/{id}/{ep}/build.log/..%2f..%2fstatus.json",
])
def test_hostile_path_not_served(site, endpoint, path):
    server, spool, build_id, other_id = site
    target = path.format(id=build_id, other=other_id, ep=endpoint)
    status, head, body = raw_get(server.port, target.encode())
    assert_not_served(status, head, body)


@pytest.mark.parametrize("endpoint", ["download", "view"])
def test_raw_nul_in_path_not_served(site, endpoint):
    server, spool, build_id, other_id = site
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(f"GET /build/{build_id}/{endpoint}/build.log\0../status.json HTTP/1.1\r\n".encode()
                     + b"Host: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert SECRET.encode() not in data
    if data:
        assert int(data.split(b" ", 2)[1]) in (400, 404), data[:300]


LEGAL_NAMES = [PACKAGE, PLUS_PACKAGE, "build.log", "PKGBUILD", UNICODE_SOURCE, "with space.patch"]
# Raw spelling only for ASCII names: a request line must be ASCII, so clients always escape the rest.
LEGAL_SPELLINGS = [(n, s) for n in LEGAL_NAMES for s in ("raw", "quoted", "colon-escaped")
                   if s != "raw" or n.isascii()]


@pytest.mark.parametrize("name,spelling", LEGAL_SPELLINGS)
def test_legal_names_download(site, name, spelling):
    server, spool, build_id, other_id = site
    if spelling == "raw":
        target = name.replace(" ", "%20").encode("utf-8")
    elif spelling == "quoted":
        target = quote(name, safe="").encode()
    else:
        target = quote(name, safe="+@").replace(":", "%3A").encode()
    status, head, body = raw_get(server.port, f"/build/{build_id}/download/".encode() + target)
    assert status == 200, (name, spelling, status, body[:300])
    expected = (spool.job_dir(build_id) / ("packages" if name.endswith(".zst") else
                                           "src" if name != "build.log" else "")).joinpath(name).read_bytes()
    assert body == expected


def test_listed_download_urls_work(site):
    server, spool, build_id, other_id = site
    info = requests.get(f"{server.url}/build/{build_id}/status-api", timeout=10).json()
    details = requests.get(f"{server.url}/build/{build_id}", headers={"Accept": "application/json"},
                           timeout=10).json()
    listed = info["packages"] + info["logs"] + details.get("sources", [])
    names = sorted(entry["filename"] for entry in listed)
    assert names == sorted([PACKAGE, PLUS_PACKAGE, "build.log", "PKGBUILD", UNICODE_SOURCE, "with space.patch"])
    for entry in listed:
        answer = requests.get(server.url + entry["download_url"], timeout=10)
        assert answer.status_code == 200, (entry, answer.status_code)
        assert answer.content
        assert SECRET.encode() not in answer.content


def test_status_json_never_listed(site):
    server, spool, build_id, other_id = site
    info = requests.get(f"{server.url}/build/{build_id}/status-api", timeout=10)
    assert SECRET not in json.dumps(info.json().get("packages")) + json.dumps(info.json().get("logs"))


@pytest.mark.parametrize("target", [
    "/static/../apbd/spool.py", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/builds/pkgname/..%2f..%2fetc/latest/download/log", "/builds/pkgname/probe/latest/download/..%2fstatus",
    "/builds/pkgname/probe/latest/download/..", "/builds/pkgname/%2e%2e/latest",
])
def test_other_hostile_paths(site, target):
    server, spool, build_id, other_id = site
    status, head, body = raw_get(server.port, target.encode())
    assert status in (400, 404), (target, status, body[:200])
    assert PASSWD_MARK not in body
    assert b"def publish" not in body
    assert SECRET.encode() not in body


LONG = "a" * 300


@pytest.mark.parametrize("target", [
    "/static/" + LONG, "/static/css/" + LONG, "/build/{id}/download/" + LONG, "/build/{id}/view/" + LONG,
    "/build/{id}/view/src/" + LONG, "/builds/pkgname/" + LONG, "/builds/pkgname/" + LONG + "/latest",
    "/builds/pkgname/" + LONG + "/latest/download/log", "/build/" + LONG + "/status-api",
])
def test_overlong_names_not_found(site, target):
    """A name longer than the filesystem allows (ENAMETOOLONG) is just not found, and no server path leaks."""
    server, spool, build_id, other_id = site
    status, head, body = raw_get(server.port, target.format(id=build_id).encode())
    if target == "/builds/pkgname/" + LONG:
        # A package name nobody built has an empty history, whatever its length.
        assert status in (200, 400, 404), (status, body[:300])
        if status == 200:
            assert json.loads(body)["builds"] == []
    else:
        assert status in (400, 404), (status, body[:300])
    assert str(spool.root).encode() not in body
    assert b"/www/" not in body
    assert b"Errno" not in body
