"""contrib/nginx/apbd.conf in front of a real apbd-web, with Debian's nginx on a loopback port.

The test wraps the site file in a minimal nginx.conf whose pid, logs and
temporary folders are all under tmp_path, points it at a tmp spool and the
test's apbd-web port, and runs nginx in the foreground. CI needs the Debian
package nginx-light (or any nginx with the proxy module).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import requests

from apbd import limits
from apbd.spool import Spool, new_build_id
from tests.support.servers import WebServer, free_port

SITE = Path(__file__).resolve().parents[1] / "contrib" / "nginx" / "apbd.conf"
LOOPBACK = "127.0.0.1"


def render_site(spool_root: Path, listen_port: int, web_port: int) -> str:
    """Return the site file pointed at this test's spool, port and apbd-web."""
    text = SITE.read_text()
    for old, new in (("listen 80;", f"listen {LOOPBACK}:{listen_port};"),
                     ("server 127.0.0.1:8000;", f"server {LOOPBACK}:{web_port};"),
                     ("/var/lib/apbd/builds", str(spool_root))):
        assert old in text, f"{old!r} not in {SITE}"
        text = text.replace(old, new)
    return text


class Nginx:
    """nginx in the foreground with everything it writes under folder; stopped by PID."""

    def __init__(self, folder: Path, site: str, port: int):
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(nginx), "nginx is missing: apt-get install nginx-light"
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        # The tmp spool belongs to the test's user; workers run as the same user.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = folder / "nginx.conf"
        conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
            f"error_log {folder}/error.log info;\n"
            "events { worker_connections 128; }\n"
            "http {\n"
            f"  access_log {folder}/access.log;\n"
            f"  client_body_temp_path {folder}/body;\n  proxy_temp_path {folder}/proxy;\n"
            f"  fastcgi_temp_path {folder}/fastcgi;\n  uwsgi_temp_path {folder}/uwsgi;\n"
            f"  scgi_temp_path {folder}/scgi;\n"
            f"{site}\n}}\n")
        self.folder = folder
        check = subprocess.run([nginx, "-t", "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([nginx, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.error_log()
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"nginx did not listen on {port}:\n{self.error_log()}")

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGQUIT: graceful shutdown of the master and its workers.
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def front(spool, tmp_path):
    web = WebServer(spool.root, tmp_path)
    port = free_port()
    nginx = Nginx(tmp_path / "nginx", render_site(spool.root, port, web.port), port)
    yield spool, web, nginx
    nginx.stop()
    web.stop()


def publish(spool: Spool, pkgname: str = "demo") -> str:
    build_id = new_build_id()
    staging = spool.make_staging_dir(build_id)
    (staging / "src").mkdir()
    (staging / "src" / "PKGBUILD").write_text(f"pkgname={pkgname}\npkgver=1\npkgrel=1\narch=(any)\n")
    now = time.time()
    request = {"build_id": build_id, "created_at": now, "source": "tarball"}
    status = {"build_id": build_id, "status": "queued", "created_at": now, "pkgname": pkgname,
              "pkgbase": pkgname, "pkgnames": [pkgname], "arch": ["any"]}
    assert spool.publish(staging, request, status)
    return build_id


def completed_job(spool: Spool) -> tuple[str, bytes, bytes]:
    build_id = publish(spool)
    claim = spool.claim(build_id)
    job = spool.jobs / build_id
    package = secrets.token_bytes(200_000)
    (job / "packages").mkdir()
    (job / "packages" / "demo-1-1-any.pkg.tar.zst").write_bytes(package)
    log_text = b"==> Making package: demo 1-1\n==> Finished making: demo\n"
    (job / "build.log").write_bytes(log_text)
    now = time.time()
    spool.finish(claim, "completed", start_time=now - 2, end_time=now, duration=2.0, exit_code=0)
    return build_id, package, log_text


def test_artifacts_served_from_spool_by_nginx(front):
    spool, web, nginx = front
    build_id, package, log_text = completed_job(spool)
    # With apbd-web stopped, only nginx itself can answer from the spool.
    web.stop()
    answer = requests.get(f"{nginx.url}/build/{build_id}/download/demo-1-1-any.pkg.tar.zst", timeout=10)
    assert answer.status_code == 200
    assert answer.content == package
    answer = requests.get(f"{nginx.url}/build/{build_id}/download/build.log", timeout=10)
    assert answer.status_code == 200
    assert answer.content == log_text
    answer = requests.get(f"{nginx.url}/build/{build_id}/download/PKGBUILD", timeout=10)
    assert answer.status_code == 200
    assert answer.text.startswith("pkgname=demo")
    # Files of the job folder outside the artifacts go to apbd-web (down here: 502), never to disk.
    for name in ("status.json", "request.json", "lock", "claimed"):
        answer = requests.get(f"{nginx.url}/build/{build_id}/download/{name}", timeout=10)
        assert answer.status_code == 502, name


def test_nothing_outside_artifacts_reachable(front):
    spool, web, nginx = front
    build_id, package, _ = completed_job(spool)
    secret = (spool.jobs / build_id / "status.json").read_bytes()
    paths = [
        f"/build/{build_id}/download/status.json",
        f"/build/{build_id}/download/request.json",
        f"/build/{build_id}/download/..%2Fstatus.json",
        f"/build/{build_id}/download/%2e%2e/status.json",
        f"/build/{build_id}/download/../status.json",
        f"/build/{build_id}/status.json",
        f"/jobs/{build_id}/status.json",
        f"/history/builds.log",
    ]
    for path in paths:
        answer = requests.get(nginx.url + path, timeout=10)
        assert answer.status_code in (404, 400), (path, answer.status_code)
        assert secret not in answer.content, path
    through_app = requests.get(f"{web.url}/build/{build_id}/download/demo-1-1-any.pkg.tar.zst", timeout=10)
    assert through_app.content == package


def test_api_proxied(front):
    _, web, nginx = front
    answer = requests.get(nginx.url + "/", headers={"Accept": "application/json"}, timeout=10)
    assert answer.status_code == 200
    assert "supported_architecture" in answer.json()
    assert requests.get(nginx.url + "/health", timeout=10).json()["checks"]["filesystem"]["status"] == "ok"


def read_event(lines) -> tuple[str, str]:
    """Read one server-sent event from an iterator of text lines; return (event, data)."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data or event != "message":
                return event, "\n".join(data)
            continue
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    raise AssertionError("the stream ended")


def test_stream_passes_through_unbuffered(front):
    spool, _, nginx = front
    build_id = publish(spool)
    claim = spool.claim(build_id)
    spool.update_status(claim, status="building", start_time=time.time())
    log_path = spool.jobs / build_id / "build.log"
    log_path.write_bytes(b"first line\n")

    with requests.get(f"{nginx.url}/build/{build_id}/stream", stream=True, timeout=30) as answer:
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        assert "gzip" not in answer.headers.get("Content-Encoding", "")
        lines = answer.iter_lines(chunk_size=1, decode_unicode=True)
        events = []
        while ("output", "first line") not in events:
            events.append(read_event(lines))

        # The next line must arrive while the build still runs: nginx must not hold it back.
        appended_at = time.monotonic()
        with open(log_path, "ab") as f:
            f.write(b"second line\n")
        while True:
            event = read_event(lines)
            if event == ("output", "second line"):
                break
        assert time.monotonic() - appended_at < 5

        spool.finish(claim, "completed", exit_code=0, duration=1.0)
        while True:
            event, data = read_event(lines)
            if event == "complete":
                break
        assert '"completed"' in data


def location_block(text: str, marker: str) -> str:
    start = text.index(marker)
    return text[start:text.index("\n    }\n", start)]


def test_site_limits_match_apbd():
    text = SITE.read_text()
    size = text.split("client_max_body_size ", 1)[1].split(";", 1)[0]
    assert size.endswith("m")
    assert int(size[:-1]) * 1024 * 1024 == limits.MAX_REQUEST_SIZE_DEFAULT
    stream = location_block(text, "/stream$")
    for setting in ("proxy_buffering off;", "gzip off;", "proxy_read_timeout 24h;", "proxy_cache off;"):
        assert setting in stream, setting
    assert "alias" not in text
    assert text.count("root /var/lib/apbd/builds/jobs;") == 2


def test_upload_through_nginx(front):
    spool, _, nginx = front
    tarball = io.BytesIO()
    pkgbuild = b"pkgname=viaproxy\npkgver=1\npkgrel=1\narch=(any)\npackage() { :; }\n"
    with tarfile.open(fileobj=tarball, mode="w:gz") as archive:
        info = tarfile.TarInfo("PKGBUILD")
        info.size = len(pkgbuild)
        archive.addfile(info, io.BytesIO(pkgbuild))
    build_id = new_build_id()
    answer = requests.post(f"{nginx.url}/build", data={"build_id": build_id, "build_timeout": "7200"},
                           files={"build_tarball": ("build.tar.gz", tarball.getvalue(), "application/gzip")},
                           timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["build_id"] == build_id
    assert spool.exists(build_id)
    assert spool.read_request(build_id)["remote_addr"] == LOOPBACK
