"""Hostile uploads to a real apbd-web: each is refused with a reason and leaves nothing behind.

Every refused upload must answer 400, 408 or 413 with the API's JSON error,
publish no job, leave SPOOL/tmp empty, and write nothing outside the staging
folder: each hostile member carries a unique marker in its name, and no path
with that marker may exist anywhere under the test's folders or /tmp.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from apbd.spool import Spool
from tests.support import hostile
from tests.support.hostile import (PKGBUILD, error_shape, files_named, good_tarball, make_tarball, new_id,
                                   regular, special, submit)
from tests.support.servers import WebServer, make_reachable

MAX_FILE = 1024 * 1024
MAX_REQUEST = 4 * 1024 * 1024
# More idle connections than waitress's default connection_limit (100) and than 4 per worker thread.
IDLE_CONNECTIONS = 300


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A spool and a web server with 1 MiB file and 4 MiB request limits, shared by this module."""
    root = tmp_path_factory.mktemp("hostile")
    make_reachable(root)
    spool = Spool(root / "spool")
    spool.create()
    server = WebServer(spool.root, root, extra_args=["--max-file-size", str(MAX_FILE),
                                                     "--max-request-size", str(MAX_REQUEST)])
    yield server, spool, root
    server.stop()


def wait_staging_empty(spool: Spool, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = os.listdir(spool.staging)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def assert_nothing_left(spool: Spool, root: Path, build_id: str | None, marker: str | None = None) -> None:
    """No job for build_id, nothing in tmp/, no file carrying marker anywhere."""
    if build_id is not None:
        assert not (spool.jobs / build_id).exists(), f"a refused upload published job {build_id}"
    assert wait_staging_empty(spool) == [], "a refused upload left files in SPOOL/tmp"
    if marker:
        # The hostile names aim at the test's folders, /tmp, /etc and /; walking all of /tmp would be slow.
        assert files_named(root, marker) == []
        for folder in ("/", "/tmp", "/var/tmp", "/etc"):
            assert not Path(folder, marker).exists(), f"a member escaped to {folder}"


def refuse(box, tarball: bytes, statuses=(400,), marker: str | None = None, **kwargs) -> dict:
    server, spool, root = box
    build_id = new_id()
    answer = submit(server.url, tarball, build_id, **kwargs)
    assert answer.status_code in statuses, (answer.status_code, answer.text[:500])
    body = error_shape(answer)
    assert_nothing_left(spool, root, build_id, marker)
    return body


def marker_name() -> str:
    return f"apbd-escape-{uuid.uuid4().hex[:12]}"


# Members that must be refused. Each entry: (test id, builder of the members given a marker).
HOSTILE_MEMBERS = {
    "dotdot": lambda m: [regular("PKGBUILD", PKGBUILD), regular(f"../{m}")],
    "dotdot-deep": lambda m: [regular("PKGBUILD", PKGBUILD), regular(f"a/b/../../../../{m}")],
    "dotdot-many": lambda m: [regular("PKGBUILD", PKGBUILD), regular("../" * 12 + f"tmp/{m}")],
    "absolute": lambda m: [regular("PKGBUILD", PKGBUILD), regular(f"/tmp/{m}")],
    "absolute-etc": lambda m: [regular("PKGBUILD", PKGBUILD), regular(f"/etc/{m}")],
    "symlink-out-absolute": lambda m: [regular("PKGBUILD", PKGBUILD), special(m, tarfile.SYMTYPE, "/etc/passwd")],
    "symlink-out-relative": lambda m: [regular("PKGBUILD", PKGBUILD), special(m, tarfile.SYMTYPE, "../../../..")],
    "symlink-then-write": lambda m: [regular("PKGBUILD", PKGBUILD), special("escape", tarfile.SYMTYPE, "/tmp"),
                                     regular(f"escape/{m}", b"written through a symlink")],
    "symlink-dir-then-write": lambda m: [regular("PKGBUILD", PKGBUILD), special("d", tarfile.SYMTYPE, "../../.."),
                                         regular(f"d/{m}", b"written through a symlink")],
    "hardlink-out-absolute": lambda m: [regular("PKGBUILD", PKGBUILD), special(m, tarfile.LNKTYPE, "/etc/passwd")],
    "hardlink-out-relative": lambda m: [regular("PKGBUILD", PKGBUILD), special(m, tarfile.LNKTYPE, "../../x")],
    "char-device": lambda m: [regular("PKGBUILD", PKGBUILD), special(m, tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "block-device": lambda m: [regular("PKGBUILD", PKGBUILD), special(m, tarfile.BLKTYPE, devmajor=7, devminor=0)],
    "fifo": lambda m: [regular("PKGBUILD", PKGBUILD), special(m, tarfile.FIFOTYPE)],
    "setuid": lambda m: [regular("PKGBUILD", PKGBUILD), regular(m, b"#!/bin/sh\n", mode=0o4755)],
    "setgid": lambda m: [regular("PKGBUILD", PKGBUILD), regular(m, b"#!/bin/sh\n", mode=0o2755)],
    "pkgbuild-symlink-out": lambda m: [special("PKGBUILD", tarfile.SYMTYPE, "/etc/passwd"), regular(m)],
    "pkgbuild-symlink-in": lambda m: [regular(m, PKGBUILD), special("PKGBUILD", tarfile.SYMTYPE, m)],
    "pkgbuild-hardlink": lambda m: [regular(m, PKGBUILD), special("PKGBUILD", tarfile.LNKTYPE, "/etc/shadow")],
    "pkgbuild-replaced-by-symlink": lambda m: [regular("PKGBUILD", PKGBUILD),
                                               special("PKGBUILD", tarfile.SYMTYPE, "/etc/passwd"), regular(m)],
    "pkgbuild-is-folder": lambda m: [special("PKGBUILD", tarfile.DIRTYPE, mode=0o755), regular(m)],
    "no-pkgbuild-at-root": lambda m: [regular("sub/PKGBUILD", PKGBUILD), regular(m)],
    "no-pkgbuild": lambda m: [regular(m, b"nothing to build\n")],
    "name-newline": lambda m: [regular("PKGBUILD", PKGBUILD), regular(f"{m}\nPKGBUILD")],
    "name-backslash": lambda m: [regular("PKGBUILD", PKGBUILD), regular(f"..\\..\\{m}")],
    "name-carriage-return": lambda m: [regular("PKGBUILD", PKGBUILD), regular(f"{m}\r")],
    "name-not-utf8": lambda m: [regular("PKGBUILD", PKGBUILD), regular(m.encode() + b"\xff\xfe")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
def test_hostile_member_refused(box, case):
    marker = marker_name()
    tarball = make_tarball(HOSTILE_MEMBERS[case](marker))
    body = refuse(box, tarball, marker=marker)
    assert len(body["detail"]) > 10


def test_hostile_error_names_member(box):
    marker = marker_name()
    body = refuse(box, make_tarball(HOSTILE_MEMBERS["dotdot"](marker)), marker=marker)
    assert marker in body["detail"]


def test_percent_in_name_refused(box):
    """A `%` in a member name is refused: unquoted download URLs would decode it into another name."""
    server, spool, root = box
    build_id = new_id()
    tarball = make_tarball([regular("PKGBUILD", PKGBUILD), regular("fix%20build%2Fpath.patch", b"patch\n")])
    answer = submit(server.url, tarball, build_id)
    assert answer.status_code == 400, answer.text
    error_shape(answer)
    assert "'%'" in answer.json()["detail"]
    assert_nothing_left(spool, root, build_id)


@pytest.mark.parametrize("case", ["plain-tar", "zip", "random", "html", "gzip-of-text"])
def test_not_gzip_tarball_refused(box, case):
    raw = tarfile.TarInfo("PKGBUILD")
    bodies = {
        "plain-tar": lambda: _plain_tar(),
        "zip": lambda: b"PK\x03\x04" + os.urandom(200),
        "random": lambda: os.urandom(4096),
        "html": lambda: b"<html><body>not a tarball</body></html>",
        "gzip-of-text": lambda: __import__("gzip").compress(b"pkgname=x\n" * 50),
    }
    assert raw.name == "PKGBUILD"
    refuse(box, bodies[case]())


def _plain_tar() -> bytes:
    import io
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info, data = regular("PKGBUILD", PKGBUILD)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_tarball_refused(box, keep):
    extra = [regular(f"data{i}", os.urandom(20000)) for i in range(3)]
    whole = good_tarball(extra)
    refuse(box, whole[: int(len(whole) * keep)])


def test_corrupted_crc_refused(box):
    whole = bytearray(good_tarball([regular("data", os.urandom(5000))]))
    whole[-6] ^= 0xFF
    refuse(box, bytes(whole))


def test_empty_tarball_part_refused(box):
    refuse(box, b"")


def test_empty_body_refused(box):
    server, spool, root = box
    answer = requests.post(f"{server.url}/build", data=b"", timeout=30)
    assert answer.status_code == 400, answer.text
    error_shape(answer)
    assert_nothing_left(spool, root, None)


def test_empty_multipart_refused(box):
    server, spool, root = box
    answer = requests.post(f"{server.url}/build", data=b"--xyz--\r\n", timeout=30,
                           headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert answer.status_code == 400, answer.text
    error_shape(answer)
    assert_nothing_left(spool, root, None)


def test_form_without_file_refused(box):
    server, spool, root = box
    build_id = new_id()
    answer = requests.post(f"{server.url}/build", files={"build_id": (None, build_id)}, timeout=30)
    assert answer.status_code == 400, answer.text
    error_shape(answer)
    assert_nothing_left(spool, root, build_id)


@pytest.mark.parametrize("parts", [["build_tarball", "build_tarball"], ["build_tarball", "pkgbuild"],
                                   ["pkgbuild", "pkgbuild"]])
def test_ambiguous_file_parts_refused(box, parts):
    server, spool, root = box
    build_id = new_id()
    payload = {"build_tarball": ("build.tar.gz", good_tarball(), "application/gzip"),
               "pkgbuild": ("PKGBUILD", PKGBUILD, "text/plain")}
    files = [(name, payload[name]) for name in parts]
    answer = requests.post(f"{server.url}/build", files=files, data={"build_id": build_id}, timeout=60)
    assert answer.status_code == 400, answer.text
    error_shape(answer)
    assert_nothing_left(spool, root, build_id)


def test_too_many_members_refused(box):
    body = refuse(box, hostile.many_files_tarball(100_000), statuses=(400, 413))
    assert "member" in body["detail"].lower() or "files" in body["detail"].lower(), body


def test_member_over_max_file_size_refused(box):
    # Zeros compress to a few KiB, so only the extracted size crosses --max-file-size.
    body = refuse(box, good_tarball([regular("big.bin", b"\0" * (MAX_FILE + 1))]), statuses=(413,))
    assert "big.bin" in body["detail"] or str(MAX_FILE) in body["detail"]


def test_tarball_over_max_file_size_refused(box):
    body = refuse(box, good_tarball([regular("noise.bin", os.urandom(MAX_FILE))]), statuses=(413,))
    assert str(MAX_FILE) in body["detail"]


def test_legacy_source_over_max_file_size_refused(box):
    server, spool, root = box
    build_id = new_id()
    files = [("pkgbuild", ("PKGBUILD", PKGBUILD, "text/plain")),
             ("sources", ("big.bin", os.urandom(MAX_FILE + 1), "application/octet-stream"))]
    answer = requests.post(f"{server.url}/build", files=files, data={"build_id": build_id}, timeout=60)
    assert answer.status_code == 413, answer.text
    error_shape(answer)
    assert_nothing_left(spool, root, build_id)


@pytest.mark.parametrize("filename", ["PKGBUILD.txt", "evil.sh", "../PKGBUILD", "pkgbuild", ""])
def test_legacy_part_not_named_pkgbuild_refused(box, filename):
    server, spool, root = box
    build_id = new_id()
    files = {"pkgbuild": (filename, PKGBUILD, "text/plain")}
    answer = requests.post(f"{server.url}/build", files=files, data={"build_id": build_id}, timeout=60)
    if filename == "../PKGBUILD":
        # Only the base name counts; what matters is that nothing lands outside the staging folder.
        assert answer.status_code in (200, 400), answer.text
        assert not (Path(spool.staging).parent / "PKGBUILD").exists()
        return
    assert answer.status_code == 400, (filename, answer.text)
    body = error_shape(answer)
    assert "PKGBUILD" in body["detail"]
    assert_nothing_left(spool, root, build_id)


@pytest.mark.parametrize("name", ["../{m}", "../../../../tmp/{m}", "/tmp/{m}", "..\\..\\{m}"])
def test_legacy_source_name_cannot_escape(box, name):
    server, spool, root = box
    marker = marker_name()
    build_id = new_id()
    files = [("pkgbuild", ("PKGBUILD", PKGBUILD, "text/plain")),
             ("sources", (name.format(m=marker), b"escaped?\n", "text/plain"))]
    answer = requests.post(f"{server.url}/build", files=files, data={"build_id": build_id}, timeout=60)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 200:
        # Accepted under its base name, inside the job's src/ folder.
        inside = spool.jobs / build_id / "src"
        assert [p for p in files_named(root, marker) if inside not in p.parents] == []
    else:
        error_shape(answer)
    assert not Path("/tmp", marker).exists()
    assert wait_staging_empty(spool) == []


def test_body_over_max_request_size_refused(box):
    body = refuse(box, os.urandom(MAX_REQUEST + 1024), statuses=(413,))
    assert body["error"]


def test_oversized_body_not_read(box):
    """With a Content-Length beyond the limit the server answers 413 without reading the body."""
    server, spool, root = box
    announced = 200 * 1024 * 1024
    boundary = "hostileboundary"
    head = (f"POST /build HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {announced}\r\n\r\n").encode()
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"build_tarball\"; filename=\"b.tar.gz\"\r\n"
            f"Content-Type: application/gzip\r\n\r\n").encode()
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + part)
        chunk = b"\0" * 65536
        reply = b""
        sock.settimeout(0.05)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sent < announced:
            try:
                reply += sock.recv(65536)
                if reply:
                    break
            except socket.timeout:
                pass
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in reply:
                more = sock.recv(65536)
                if not more:
                    break
                reply += more
        except (socket.timeout, ConnectionResetError):
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert sent < 32 * 1024 * 1024, f"the server read {sent} bytes before answering 413"
    assert_nothing_left(spool, root, None)


def test_chunked_body_over_max_request_size_refused(box):
    server, spool, root = box

    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"build_tarball\"; filename=\"b.tar.gz\"\r\n\r\n"
        for _ in range(MAX_REQUEST // 65536 + 8):
            yield os.urandom(65536)
        yield b"\r\n--b--\r\n"

    try:
        answer = requests.post(f"{server.url}/build", data=chunks(), timeout=60,
                               headers={"Content-Type": "multipart/form-data; boundary=b"})
    except requests.ConnectionError:
        # The server may close the connection while the client is still sending.
        assert_nothing_left(spool, root, None)
        return
    assert answer.status_code == 413, answer.text[:300]
    error_shape(answer)
    assert_nothing_left(spool, root, None)


@pytest.mark.parametrize("build_id", ["not-a-uuid", "../../etc/passwd", "48ea1df5-f7f3-477e-a7a7",
                                      "48ea1df5-f7f3-477e-a7a7-36e5\n26ea7cd3", "x" * 5000,
                                      "48ea1df5f7f3477ea7a736e526ea7cd3-", "{48ea1df5-f7f3-477e-a7a7-36e526ea7cd3}/x"])
def test_invalid_build_id_refused(box, build_id):
    server, spool, root = box
    answer = submit(server.url, good_tarball(), build_id)
    assert answer.status_code == 400, (build_id, answer.text)
    body = error_shape(answer)
    assert "build_id" in body["detail"]
    assert wait_staging_empty(spool) == []
    assert all(len(name) == 36 for name in os.listdir(spool.jobs))


@pytest.mark.parametrize("value", ["299", "14401", "0", "-300", "abc", "7200.5", "1e3", "", " ", "0x1c20",
                                   "99999999999999999999999999"])
def test_build_timeout_invalid_refused(box, value):
    server, spool, root = box
    build_id = new_id()
    answer = submit(server.url, good_tarball(), build_id, build_timeout=value)
    if value.strip() == "":
        # An empty field is the same as no field: the default applies.
        assert answer.status_code in (200, 400), answer.text
        return
    assert answer.status_code == 400, (value, answer.text)
    body = error_shape(answer)
    assert "build_timeout" in body["detail"]
    assert_nothing_left(spool, root, build_id)


@pytest.mark.parametrize("value", ["300", "14400"])
def test_build_timeout_bounds_accepted(box, value):
    server, spool, root = box
    build_id = new_id()
    answer = submit(server.url, good_tarball(), build_id, build_timeout=value)
    assert answer.status_code == 200, answer.text
    status = requests.get(f"{server.url}/build/{build_id}/status-api", timeout=10).json()
    assert status["build_timeout"] == int(value)


def test_duplicate_build_id_same_content_is_retry(box):
    server, spool, root = box
    build_id = new_id()
    tarball = good_tarball()
    first = submit(server.url, tarball, build_id)
    assert first.status_code == 200, first.text
    created = (spool.jobs / build_id / "request.json").read_bytes()
    again = submit(server.url, tarball, build_id)
    assert again.status_code == 200, again.text
    assert again.json()["build_id"] == build_id
    assert (spool.jobs / build_id / "request.json").read_bytes() == created
    history = (spool.history / "builds.log").read_text()
    assert history.count(build_id) == 1
    assert wait_staging_empty(spool) == []


def test_duplicate_build_id_other_content_conflicts(box):
    server, spool, root = box
    build_id = new_id()
    first = submit(server.url, good_tarball(), build_id)
    assert first.status_code == 200, first.text
    request_before = (spool.jobs / build_id / "request.json").read_bytes()
    pkgbuild_before = (spool.jobs / build_id / "src" / "PKGBUILD").read_bytes()
    other = good_tarball([regular("extra.txt", b"different\n")])
    assert hashlib.sha256(other).hexdigest() != hashlib.sha256(good_tarball()).hexdigest()
    conflict = submit(server.url, other, build_id)
    assert conflict.status_code == 409, conflict.text
    error_shape(conflict)
    assert (spool.jobs / build_id / "request.json").read_bytes() == request_before
    assert (spool.jobs / build_id / "src" / "PKGBUILD").read_bytes() == pkgbuild_before
    assert not (spool.jobs / build_id / "src" / "extra.txt").exists()
    assert wait_staging_empty(spool) == []


def test_idle_connections_do_not_block_others(box):
    server, spool, root = box
    idle = []
    try:
        for i in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if i % 3 == 1:
                sock.sendall(b"POST /build HTTP/1.1\r\nHost: x\r\n")
            elif i % 3 == 2:
                sock.sendall(b"POST /build HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                             b"Content-Length: 100000\r\n\r\n--b\r\n")
            idle.append(sock)
        for _ in range(5):
            started = time.monotonic()
            answer = requests.get(server.url + "/", headers={"Accept": "application/json"}, timeout=10)
            assert answer.status_code == 200
            assert time.monotonic() - started < 5.0
        accepted = submit(server.url, good_tarball(), new_id())
        assert accepted.status_code == 200, accepted.text
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.slow
def test_gzip_bomb_single_member_refused(tmp_path, spool):
    """A 2 GiB member in a 2 MiB upload: refused by the per-file limit, nothing extracted."""
    server = WebServer(spool.root, tmp_path)
    try:
        bomb = tmp_path / "bomb.tar.gz"
        expands = hostile.write_gzip_bomb(bomb, 2 * 1024 ** 3, 1)
        assert bomb.stat().st_size < 16 * 1024 * 1024 < expands
        build_id = new_id()
        started = time.monotonic()
        answer = submit(server.url, bomb.read_bytes(), build_id, timeout=300)
        assert answer.status_code == 413, answer.text
        body = error_shape(answer)
        assert "zeros-0000" in body["detail"] or "bytes" in body["detail"]
        assert time.monotonic() - started < 60
        assert_nothing_left(spool, tmp_path, build_id)
    finally:
        server.stop()


@pytest.mark.slow
def test_gzip_bomb_total_size_refused(tmp_path, spool):
    """48 members of 96 MiB (each under the 100 MiB file limit) expand to 4.5 GiB: the total limit says no."""
    server = WebServer(spool.root, tmp_path)
    try:
        bomb = tmp_path / "bomb.tar.gz"
        expands = hostile.write_gzip_bomb(bomb, 96 * 1024 * 1024, 48, block=32 * 1024 * 1024)
        assert bomb.stat().st_size < 16 * 1024 * 1024 < expands
        build_id = new_id()
        answer = submit(server.url, bomb.read_bytes(), build_id, timeout=300)
        assert answer.status_code == 413, answer.text
        body = error_shape(answer)
        assert "extracted" in body["detail"] or "expands" in body["detail"], body
        assert_nothing_left(spool, tmp_path, build_id)
    finally:
        server.stop()


def test_trickle_upload_times_out(spool, tmp_path):
    """An upload slower than the submission timeout gets 408, leaves nothing, frees the server."""
    import psutil

    submit_timeout = 3.0
    server = WebServer(spool.root, tmp_path, extra_args=["--submit-timeout", str(submit_timeout)])
    try:
        boundary = "trickle"
        body_start = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"build_id\"\r\n\r\n{new_id()}\r\n"
                      f"--{boundary}\r\nContent-Disposition: form-data; name=\"build_tarball\"; "
                      f"filename=\"build.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n").encode()
        announced = len(body_start) + 1024 * 1024
        head = (f"POST /build HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {announced}\r\n\r\n").encode()
        reply = b""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + body_start)
            sock.settimeout(0.4)
            while time.monotonic() - started < submit_timeout * 5:
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    data = None
                if data == b"":
                    break
                if data:
                    reply += data
                    continue
                try:
                    sock.sendall(b"\x1f")
                except (BrokenPipeError, ConnectionResetError):
                    break
            waited = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
        assert b'"error"' in reply, reply
        assert b'"detail"' in reply, reply
        assert waited < submit_timeout + 5, f"408 came after {waited:.1f} s"
        assert wait_staging_empty(spool) == []
        assert os.listdir(spool.jobs) == []

        # The worker is free and nothing of the upload stays open.
        answer = requests.get(server.url + "/", headers={"Accept": "application/json"}, timeout=5)
        assert answer.status_code == 200
        open_paths = [f.path for f in psutil.Process(server.pid).open_files()]
        assert [p for p in open_paths if str(spool.root) in p and "log" not in p] == [], open_paths
        accepted = submit(server.url, good_tarball(), new_id())
        assert accepted.status_code == 200, accepted.text
    finally:
        server.stop()
