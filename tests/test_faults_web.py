"""kill -9 of apbd-web: no job appears, and the next start removes what the dead process left in tmp/."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import requests

from tests.support.hostile import good_tarball, new_id, regular, submit
from tests.support.servers import WebServer

# Higher than any Linux pid_max (4194304), so no process can have it.
DEAD_PID = 4194305 + 17


def kill_hard(server: WebServer) -> None:
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)


def test_start_removes_dead_staging(spool, tmp_path):
    dead = spool.staging / f"upload.{DEAD_PID}.deadbeef"
    (dead / "src").mkdir(parents=True)
    (dead / "src" / "PKGBUILD").write_text("pkgname=left-behind\n")
    alive = spool.staging / f"upload.{os.getpid()}.cafebabe"
    alive.mkdir()
    server = WebServer(spool.root, tmp_path)
    try:
        assert not dead.exists(), "apbd-web kept the staging folder of a dead process"
        assert alive.is_dir(), "apbd-web removed the staging folder of a process that still runs"
    finally:
        server.stop()
        alive.rmdir()


def test_kill_during_body_leaves_nothing(spool, tmp_path):
    server = WebServer(spool.root, tmp_path)
    build_id = new_id()
    boundary = "killme"
    head = (f"POST /build HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {8 * 1024 * 1024}\r\n\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"build_id\"\r\n\r\n{build_id}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"build_tarball\"; filename=\"b.tar.gz\"\r\n\r\n"
            ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + os.urandom(2 * 1024 * 1024))
        time.sleep(0.5)
        kill_hard(server)
    assert not (spool.jobs / build_id).exists()

    restarted = WebServer(spool.root, tmp_path)
    try:
        assert os.listdir(spool.staging) == []
        assert os.listdir(spool.jobs) == []
        again = submit(restarted.url, good_tarball(), build_id)
        assert again.status_code == 200, again.text
    finally:
        restarted.stop()


def test_kill_during_intake_leaves_nothing(spool, tmp_path):
    """Kill apbd-web while it unpacks and reads the PKGBUILD of a complete upload."""
    server = WebServer(spool.root, tmp_path)
    build_id = new_id()
    tarball = good_tarball([regular(f"data/{i:03d}.bin", os.urandom(8 * 1024)) for i in range(300)])
    outcome = {}

    def upload():
        try:
            outcome["answer"] = submit(server.url, tarball, build_id, timeout=60)
        except requests.ConnectionError as e:
            outcome["error"] = e

    sender = threading.Thread(target=upload)
    sender.start()
    deadline = time.monotonic() + 30
    killed_with = None
    while time.monotonic() < deadline and sender.is_alive():
        staged = [name for name in os.listdir(spool.staging) if (spool.staging / name / "src" / "PKGBUILD").exists()]
        if staged:
            kill_hard(server)
            killed_with = staged
            break
        time.sleep(0.002)
    sender.join(timeout=60)
    assert killed_with, f"the upload finished before a staging folder appeared: {outcome}"
    assert "error" in outcome, f"the killed server still answered: {outcome}"

    published = (spool.jobs / build_id).exists()
    restarted = WebServer(spool.root, tmp_path)
    try:
        assert os.listdir(spool.staging) == [], "the staging folder of the killed upload is still there"
        if published:
            # The kill came after the publishing rename: the job must then be whole.
            job = spool.jobs / build_id
            assert (job / "request.json").is_file()
            assert (job / "status.json").is_file()
            assert (job / "queued").exists()
        else:
            assert os.listdir(spool.jobs) == []
            again = submit(restarted.url, tarball, build_id)
            assert again.status_code == 200, again.text
    finally:
        restarted.stop()
