"""POST /build through a real waitress server: both forms, the farm's retry, every rejection."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid

import pytest
import requests

from tests.test_web_common import (LOOPBACK, PKGBUILD_TEXT, ThreadServer, make_tarball, spool,  # noqa: F401
                                   submit, web)

GOOD = make_tarball({"PKGBUILD": PKGBUILD_TEXT, "notes.txt": "hello\n"})


def assert_nothing_staged(spool):
    assert list(spool.staging.iterdir()) == []


def test_farm_submit_queues_build(web, spool):
    build_id = str(uuid.uuid4())
    answer = submit(web.url, GOOD, build_id=build_id, build_timeout="900")
    assert answer.status_code == 200
    assert answer.json() == {"build_id": build_id, "status": "queued", "message": "Build queued successfully"}
    assert spool.queued_ids() == [build_id]
    status = spool.read_status(build_id)
    assert status["build_timeout"] == 900
    assert status["pkgname"] == "demo"
    assert (spool.job_dir(build_id) / "src" / "notes.txt").read_text() == "hello\n"
    assert not (spool.job_dir(build_id) / "upload.tar.gz").exists()
    assert_nothing_staged(spool)


def test_top_folder_tarball_accepted(web, spool):
    answer = submit(web.url, make_tarball({"PKGBUILD": PKGBUILD_TEXT}, top="demo"))
    assert answer.status_code == 200
    assert (spool.job_dir(answer.json()["build_id"]) / "src" / "PKGBUILD").is_file()


def test_missing_build_id_is_generated(web, spool):
    answer = requests.post(f"{web.url}/build", files={"build_tarball": ("build.tar.gz", GOOD)}, timeout=60)
    assert answer.status_code == 200
    build_id = answer.json()["build_id"]
    assert str(uuid.UUID(build_id)) == build_id
    assert spool.exists(build_id)
    assert spool.read_status(build_id)["build_timeout"] == 7200


def test_farm_retry_same_bytes_is_200(web, spool):
    build_id = str(uuid.uuid4())
    first = submit(web.url, GOOD, build_id=build_id, build_timeout="7200")
    second = submit(web.url, GOOD, build_id=build_id, build_timeout="7200")
    assert first.status_code == 200
    assert second.status_code == 200
    assert second.json()["build_id"] == build_id
    assert spool.job_ids() == [build_id]
    assert len((spool.history / "builds.log").read_text().splitlines()) == 1
    assert_nothing_staged(spool)


def test_same_id_other_bytes_is_409(web, spool):
    build_id = str(uuid.uuid4())
    assert submit(web.url, GOOD, build_id=build_id).status_code == 200
    other = make_tarball({"PKGBUILD": PKGBUILD_TEXT + "# changed\n"})
    answer = submit(web.url, other, build_id=build_id)
    assert answer.status_code == 409
    assert answer.json()["error"] == "Build ID already exists"
    assert build_id in answer.json()["detail"]
    assert_nothing_staged(spool)


@pytest.mark.parametrize("value", ["not-a-uuid", "48EA1DF5F7F3477EA7A736E526EA7CD3", "../../etc"])
def test_invalid_build_id_is_400(web, spool, value):
    answer = submit(web.url, GOOD, build_id=value)
    assert answer.status_code == 400
    assert "build_id" in answer.json()["detail"]
    assert spool.job_ids() == []
    assert_nothing_staged(spool)


@pytest.mark.parametrize("value", ["abc", "299", "14401", "-5", "7200.5"])
def test_invalid_build_timeout_is_400(web, spool, value):
    answer = submit(web.url, GOOD, build_timeout=value)
    assert answer.status_code == 400
    assert "build_timeout" in answer.json()["detail"]
    assert spool.job_ids() == []


@pytest.mark.parametrize("value", ["300", "14400"])
def test_build_timeout_bounds_accepted(web, spool, value):
    answer = submit(web.url, GOOD, build_timeout=value)
    assert answer.status_code == 200
    assert spool.read_status(answer.json()["build_id"])["build_timeout"] == int(value)


def test_pkgbuild_without_pkgver_is_400(web, spool):
    tarball = make_tarball({"PKGBUILD": "pkgname=demo\npkgrel=1\narch=(any)\npackage() { :; }\n"})
    answer = submit(web.url, tarball)
    assert answer.status_code == 400
    assert answer.json()["error"] == "Invalid PKGBUILD file"
    assert "pkgver" in answer.json()["detail"]
    assert spool.job_ids() == []
    assert_nothing_staged(spool)


def test_hostile_tarball_is_400(web, spool):
    tarball = make_tarball({"PKGBUILD": PKGBUILD_TEXT, "../escape": "x"})
    answer = submit(web.url, tarball)
    assert answer.status_code == 400
    assert answer.json()["error"] == "Invalid tarball"
    assert_nothing_staged(spool)


def test_not_gzip_is_400(web, spool):
    answer = submit(web.url, b"PKGBUILD plain text, not a tarball")
    assert answer.status_code == 400
    assert "gzip" in answer.json()["detail"]


def test_extra_repos_validated_and_stored(web, spool):
    repos = [{"name": "extra-test", "url": "https://repo.example.org/$repo/$arch",
              "gpg_key_id": "0123456789ABCDEF0123456789ABCDEF01234567"}]
    answer = submit(web.url, GOOD, extra_repos=json.dumps(repos))
    assert answer.status_code == 200
    assert spool.read_request(answer.json()["build_id"])["extra_repos"] == repos
    bad = submit(web.url, GOOD, extra_repos=json.dumps([{"name": "x\n[options]", "url": "http://a"}]))
    assert bad.status_code == 400
    assert "extra_repos" in bad.json()["detail"]
    assert submit(web.url, GOOD, extra_repos="{not json").status_code == 400


def test_legacy_form_with_sources(web, spool):
    files = [("pkgbuild", ("PKGBUILD", PKGBUILD_TEXT)), ("sources", ("a.patch", b"diff\n")),
             ("sources[]", ("b.txt", b"b\n"))]
    build_id = str(uuid.uuid4())
    answer = requests.post(f"{web.url}/build", data={"build_id": build_id}, files=files, timeout=60)
    assert answer.status_code == 200
    src = spool.job_dir(build_id) / "src"
    assert sorted(p.name for p in src.iterdir()) == ["PKGBUILD", "a.patch", "b.txt"]
    assert spool.read_request(build_id)["source"] == "legacy"
    again = requests.post(f"{web.url}/build", data={"build_id": build_id}, files=files, timeout=60)
    assert again.status_code == 200
    assert spool.job_ids() == [build_id]


def test_legacy_pkgbuild_must_be_named_pkgbuild(web, spool):
    answer = requests.post(f"{web.url}/build", files={"pkgbuild": ("build.sh", PKGBUILD_TEXT)}, timeout=60)
    assert answer.status_code == 400
    assert "PKGBUILD" in answer.json()["detail"]
    assert_nothing_staged(spool)


def test_no_file_part_is_400(web, spool):
    answer = requests.post(f"{web.url}/build", data={"build_id": str(uuid.uuid4())},
                           files={"other": ("x", b"x")}, timeout=60)
    assert answer.status_code == 400
    assert "neither" in answer.json()["detail"]
    plain = requests.post(f"{web.url}/build", data="a=b", timeout=60,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert plain.status_code == 400
    assert_nothing_staged(spool)


def test_file_over_max_file_size_is_413(spool):
    server = ThreadServer(spool.root, ["--max-file-size", "2000"])
    try:
        answer = submit(server.url, make_tarball({"PKGBUILD": PKGBUILD_TEXT, "big": bytes(range(256)) * 40}))
        assert answer.status_code == 413
        assert answer.json()["error"] == "File too large"
        legacy = requests.post(f"{server.url}/build", timeout=60,
                               files={"pkgbuild": ("PKGBUILD", PKGBUILD_TEXT + "#" * 3000)})
        assert legacy.status_code == 413
        assert "PKGBUILD exceeds 2000 bytes" in legacy.json()["detail"]
        assert_nothing_staged(spool)
    finally:
        server.stop()


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send raw bytes to the server and return its whole response."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_request_over_max_request_size_is_413(spool):
    server = ThreadServer(spool.root, ["--max-request-size", "100000"])
    try:
        # Declared far beyond the limit: waitress responds from the headers, reading no body.
        head = (b"POST /build HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
                b"Content-Length: 50000000\r\n\r\n")
        answer = raw_request(server.port, head)
        assert answer.startswith(b"HTTP/1.1 413")
        assert b'"error": "File too large"' in answer
        # Just beyond the limit, within waitress's allowance for form fields: apbd responds.
        big = submit(server.url, b"\x1f\x8b" + b"x" * 110000)
        assert big.status_code == 413
        assert big.json()["error"] == "File too large"
        assert_nothing_staged(spool)
    finally:
        server.stop()


def test_truncated_body_is_400(web, spool):
    body = (b"--zz\r\nContent-Disposition: form-data; name=\"build_tarball\"; filename=\"build.tar.gz\"\r\n\r\n"
            + GOOD[:50])
    head = (b"POST /build HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    answer = raw_request(web.port, head, body)
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"incomplete" in answer
    assert_nothing_staged(spool)


def test_body_too_big_for_disk_is_503_before_reading(web, spool):
    web.server.apbd_disk_check = lambda size: f"{size} bytes do not fit" if size > 1000 else None
    head = (b"POST /build HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            b"Content-Length: 5000000\r\n\r\n")
    answer = raw_request(web.port, head)
    assert answer.startswith(b"HTTP/1.1 503")
    assert b'"error": "Insufficient disk space"' in answer
    assert b"5000000 bytes do not fit" in answer
    assert submit(web.url, GOOD).status_code == 200


# The tarball is unpacked while it arrives


def multipart_body(boundary: str, parts: list[tuple[str, bytes, str | None]]) -> bytes:
    """Return a multipart/form-data body of (name, content, file name or None) parts, in this order."""
    body = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_large_tarball_unpacked_and_hashed(web, spool):
    payload = os.urandom(3 * 1024 * 1024 + 7)
    tarball = make_tarball({"PKGBUILD": PKGBUILD_TEXT, "payload.bin": payload})
    build_id = str(uuid.uuid4())
    answer = submit(web.url, tarball, build_id=build_id)
    assert answer.status_code == 200
    assert (spool.job_dir(build_id) / "src" / "payload.bin").read_bytes() == payload
    assert spool.read_request(build_id)["sha256"] == hashlib.sha256(tarball).hexdigest()
    assert_nothing_staged(spool)


def test_build_id_after_tarball_part(web, spool):
    build_id = str(uuid.uuid4())
    body = multipart_body("zz", [("build_tarball", GOOD, "build.tar.gz"), ("build_id", build_id.encode(), None)])
    answer = requests.post(f"{web.url}/build", data=body, timeout=60,
                           headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert answer.status_code == 200
    assert answer.json()["build_id"] == build_id
    assert (spool.job_dir(build_id) / "src" / "notes.txt").read_text() == "hello\n"
    assert_nothing_staged(spool)


def test_bad_tarball_under_existing_id_is_409(web, spool):
    build_id = str(uuid.uuid4())
    assert submit(web.url, GOOD, build_id=build_id).status_code == 200
    for bad in (b"not a tarball", make_tarball({"PKGBUILD": PKGBUILD_TEXT, "../escape": "x"})):
        answer = submit(web.url, bad, build_id=build_id)
        assert answer.status_code == 409, bad
        assert answer.json()["error"] == "Build ID already exists"
    assert_nothing_staged(spool)


def test_bad_tarball_with_fields_after_it_is_400(web, spool):
    body = multipart_body("zz", [("build_tarball", b"\x1f\x8b broken", "build.tar.gz"),
                                 ("build_timeout", b"900", None)])
    answer = requests.post(f"{web.url}/build", data=body, timeout=60,
                           headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert answer.status_code == 400
    assert answer.json()["error"] == "Invalid tarball"
    assert spool.job_ids() == []
    assert_nothing_staged(spool)
