"""Downloads of build files: DownloadFile as waitress reads it, and a real apbd-web sending large files."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import psutil
import pytest
import requests
from waitress.buffers import ReadOnlyFileBasedBuffer

from apbd.web.files import SEND_CHUNK_BYTES, DownloadFile
from tests.support.servers import LOOPBACK
from tests.test_web_common import add_build

# Bytes waitress 3.0 requests per send on loopback, which is the socket's send buffer size.
WAITRESS_SEND_REQUEST = 4 * 1024 * 1024
PACKAGE = "big-1.0-1-x86_64.pkg.tar.zst"


def random_file(path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def open_download(path) -> DownloadFile:
    return DownloadFile(os.open(path, os.O_RDONLY))


def open_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def add_big_package(spool, size: int) -> tuple[str, bytes]:
    """Add a completed build with one package of size random bytes, and return its id and the bytes."""
    build_id = add_build(spool)
    package = spool.job_dir(build_id) / "packages" / PACKAGE
    package.parent.mkdir(exist_ok=True)
    return build_id, random_file(package, size)


# DownloadFile on its own


def test_download_file_read_is_capped(tmp_path):
    data = random_file(tmp_path / "f", 2 * SEND_CHUNK_BYTES + 5)
    body = open_download(tmp_path / "f")
    try:
        first = body.read(WAITRESS_SEND_REQUEST)
        assert len(first) == SEND_CHUNK_BYTES
        assert bytes(first) == data[:SEND_CHUNK_BYTES]
        assert body.tell() == SEND_CHUNK_BYTES
        assert bytes(body.read(10)) == data[SEND_CHUNK_BYTES:SEND_CHUNK_BYTES + 10]
        rest = body.read()
        assert len(rest) == SEND_CHUNK_BYTES - 5
        assert bytes(rest) == data[SEND_CHUNK_BYTES + 10:]
        assert len(body.read()) == 0
    finally:
        body.close()


def test_download_file_seek_and_tell(tmp_path):
    data = random_file(tmp_path / "f", 1000)
    body = open_download(tmp_path / "f")
    try:
        assert body.seekable()
        assert body.seek(0, os.SEEK_END) == 1000
        assert body.seek(-10, os.SEEK_CUR) == 990
        assert bytes(body.read()) == data[990:]
        assert body.seek(3) == 3
        assert body.tell() == 3
        assert bytes(body.read(4)) == data[3:7]
        assert bytes(body.read()) == data[7:]
        assert len(body.read()) == 0
        with pytest.raises(ValueError):
            body.seek(0, 7)
    finally:
        body.close()


def test_download_file_close_releases_fd(tmp_path):
    random_file(tmp_path / "f", 100)
    before = open_fd_count(os.getpid())
    body = open_download(tmp_path / "f")
    chunk = body.read()
    assert open_fd_count(os.getpid()) == before + 1
    body.close()
    assert open_fd_count(os.getpid()) == before
    assert bytes(chunk) == (tmp_path / "f").read_bytes()
    body.close()
    assert body.fd == -1


def test_download_file_in_waitress_buffer_with_partial_sends(tmp_path):
    """Drive the file the way waitress's channel does, sending only part of each chunk."""
    data = random_file(tmp_path / "f", 3 * SEND_CHUNK_BYTES + 12345)
    wrapper = ReadOnlyFileBasedBuffer(open_download(tmp_path / "f"))
    assert wrapper.prepare(len(data)) == len(data)
    sent = []
    step = 0
    while len(wrapper):
        chunk = wrapper.get(WAITRESS_SEND_REQUEST)
        assert 0 < len(chunk) <= SEND_CHUNK_BYTES
        count = min(len(chunk), 100_000 + 7919 * step)
        sent.append(bytes(chunk[:count]))
        wrapper.skip(count, True)
        step += 1
    wrapper.close()
    assert b"".join(sent) == data
    assert step > 4


# Through a real apbd-web process


def test_large_download_is_byte_exact(spool, web_server):
    build_id, data = add_big_package(spool, 5 * SEND_CHUNK_BYTES + 999)
    answer = requests.get(f"{web_server.url}/build/{build_id}/download/{PACKAGE}", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Content-Length"] == str(len(data))
    assert answer.headers["Content-Type"] == "application/octet-stream"
    assert hashlib.sha256(answer.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_head_of_large_download_has_no_body(spool, web_server):
    build_id, data = add_big_package(spool, 2 * SEND_CHUNK_BYTES)
    answer = requests.head(f"{web_server.url}/build/{build_id}/download/{PACKAGE}", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Content-Length"] == str(len(data))
    assert answer.content == b""


def test_slow_reader_gets_every_byte(spool, web_server):
    """A client with a small receive buffer makes the server's sends partial."""
    build_id, data = add_big_package(spool, 3 * SEND_CHUNK_BYTES + 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect((LOOPBACK, web_server.port))
        sock.sendall(f"GET /build/{build_id}/download/{PACKAGE} HTTP/1.1\r\n"
                     f"Host: x\r\nConnection: close\r\n\r\n".encode())
        received = bytearray()
        while chunk := sock.recv(4096):
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {len(data)}".encode() in head
    assert len(body) == len(data)
    assert body == data


def test_downloads_close_their_files(spool, web_server):
    build_id, data = add_big_package(spool, 2 * SEND_CHUNK_BYTES)
    url = f"{web_server.url}/build/{build_id}/download/{PACKAGE}"
    before = open_fd_count(web_server.pid)
    assert requests.get(url, timeout=30).content == data
    for _ in range(5):
        assert len(requests.get(url, timeout=30).content) == len(data)
    # The server closes each connection once it reads the client's end, a moment after the last byte.
    deadline = time.monotonic() + 5
    while open_fd_count(web_server.pid) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fd_count(web_server.pid) <= before


def test_repeated_large_downloads_keep_rss_flat(spool, web_server):
    """Check that downloads started by different waitress threads leave no memory in their malloc arenas.

    With a new 4 MB bytes object per send, glibc kept about 8 MB per thread,
    so eight downloads grew the process by about 30 MB.
    """
    build_id, data = add_big_package(spool, 40 * 1024 * 1024)
    url = f"{web_server.url}/build/{build_id}/download/{PACKAGE}"
    process = psutil.Process(web_server.pid)
    assert len(requests.get(url, timeout=60).content) == len(data)
    before = process.memory_info().rss
    for _ in range(8):
        with requests.get(url, stream=True, timeout=60) as answer:
            assert answer.status_code == 200
            assert sum(len(chunk) for chunk in answer.iter_content(1024 * 1024)) == len(data)
    growth = process.memory_info().rss - before
    assert growth < 8 * 1024 * 1024, f"apbd-web grew by {growth / 1e6:.1f} MB over eight 40 MiB downloads"
