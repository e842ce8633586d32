"""Opt-in access control: --allow-from and --token-file guard only requests that change state."""

from __future__ import annotations

import argparse
import io
import json
import os
import wsgiref.util
from pathlib import Path

import bottle
import pytest
import requests

from apbd.web import access
from tests.support.hostile import good_tarball, new_id, submit
from tests.support.servers import WebServer

TOKEN = "s3cret-token-for-tests"


class Ctx:
    def __init__(self, **options):
        self.args = argparse.Namespace(**options)


def make_app(**options) -> bottle.Bottle:
    """A small app with one safe and three state-changing routes, guarded by access.install."""
    app = bottle.Bottle()
    app.get("/")(lambda: {"ok": True})
    app.post("/build")(lambda: {"submitted": True})
    app.post("/build/<build_id>/cancel")(lambda build_id: {"cancelled": build_id})
    app.post("/admin/cleanup")(lambda: {"success": True})
    access.install(app, Ctx(**options))
    return app


def call(app, method: str, path: str, remote: str = "127.0.0.1", headers: dict | None = None):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": remote,
               "wsgi.input": io.BytesIO(b""), "CONTENT_LENGTH": "0"}
    wsgiref.util.setup_testing_defaults(environ)
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"] = int(status.split()[0])
        seen["headers"] = {name.lower(): value for name, value in response_headers}

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


STATE_CHANGING = [("POST", "/build"), ("POST", f"/build/{new_id()}/cancel"), ("POST", "/admin/cleanup")]


def test_access_off_by_default():
    app = make_app(allow_from="", token_file="")
    for method, path in STATE_CHANGING:
        status, _, _ = call(app, method, path, remote="203.0.113.9")
        assert status == 200, path


def test_access_off_without_attributes():
    app = make_app()
    status, _, _ = call(app, "POST", "/build", remote="203.0.113.9")
    assert status == 200


@pytest.mark.parametrize("method,path", STATE_CHANGING)
def test_allow_from_rejects_other_networks(method, path):
    app = make_app(allow_from="10.0.0.0/8, 192.168.1.0/24", token_file="")
    status, headers, body = call(app, method, path, remote="203.0.113.9")
    assert status == 403
    reply = json.loads(body)
    assert reply["error"] == "Forbidden"
    assert "203.0.113.9" in reply["detail"]
    assert headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("remote", ["10.1.2.3", "192.168.1.77", "::ffff:10.9.9.9"])
def test_allow_from_accepts_listed_networks(remote):
    app = make_app(allow_from="10.0.0.0/8,192.168.1.0/24")
    status, _, _ = call(app, "POST", "/build", remote=remote)
    assert status == 200


def test_allow_from_ipv6_network():
    app = make_app(allow_from="fd00::/8")
    assert call(app, "POST", "/build", remote="fd00::1")[0] == 200
    assert call(app, "POST", "/build", remote="2001:db8::1")[0] == 403


def test_allow_from_ignores_forwarded_for():
    app = make_app(allow_from="10.0.0.0/8")
    status, _, _ = call(app, "POST", "/build", remote="203.0.113.9",
                        headers={"X-Forwarded-For": "10.0.0.1", "X-Real-IP": "10.0.0.1"})
    assert status == 403


def test_allow_from_leaves_reads_open():
    app = make_app(allow_from="10.0.0.0/8")
    for method in ("GET", "HEAD"):
        status, _, _ = call(app, method, "/", remote="203.0.113.9")
        assert status == 200, method


def test_allow_from_guards_unknown_post_paths():
    app = make_app(allow_from="10.0.0.0/8")
    status, _, _ = call(app, "POST", "/no/such/route", remote="203.0.113.9")
    assert status == 403


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-a-network", "10.0.0.0/8,,bogus", ","])
def test_allow_from_invalid_value(value):
    with pytest.raises(access.AccessConfigError) as caught:
        make_app(allow_from=value)
    assert "--allow-from" in str(caught.value)


@pytest.mark.parametrize("method,path", STATE_CHANGING)
def test_token_required_for_state_changes(token_file, method, path):
    app = make_app(token_file=str(token_file))
    status, headers, body = call(app, method, path)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    reply = json.loads(body)
    assert reply["error"] == "Unauthorized"
    assert "Authorization: Bearer" in reply["detail"]


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}",
                                    TOKEN, f"Bearer  {TOKEN.upper()}"])
def test_token_wrong_values(token_file, header):
    app = make_app(token_file=str(token_file))
    status, _, _ = call(app, "POST", "/build", headers={"Authorization": header})
    assert status == 401, header


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer {TOKEN} "])
def test_token_accepted(token_file, header):
    app = make_app(token_file=str(token_file))
    status, _, _ = call(app, "POST", "/build", headers={"Authorization": header})
    assert status == 200, header


def test_token_not_needed_for_reads(token_file):
    app = make_app(token_file=str(token_file))
    assert call(app, "GET", "/")[0] == 200


def test_token_and_allow_from_both_apply(token_file):
    app = make_app(token_file=str(token_file), allow_from="127.0.0.0/8")
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert call(app, "POST", "/build", remote="127.0.0.1", headers=good)[0] == 200
    assert call(app, "POST", "/build", remote="203.0.113.9", headers=good)[0] == 403
    assert call(app, "POST", "/build", remote="127.0.0.1")[0] == 401


def test_token_file_missing(tmp_path):
    with pytest.raises(access.AccessConfigError) as caught:
        make_app(token_file=str(tmp_path / "absent"))
    assert "cannot read" in str(caught.value)


def test_token_file_empty(tmp_path):
    path = tmp_path / "token"
    path.write_text("  \n")
    with pytest.raises(access.AccessConfigError) as caught:
        make_app(token_file=str(path))
    assert "empty" in str(caught.value)


def test_token_file_with_space_rejected(tmp_path):
    path = tmp_path / "token"
    path.write_text("two words\n")
    with pytest.raises(access.AccessConfigError):
        make_app(token_file=str(path))


# The real server: the options must reach apbd-web and guard its real routes.


def test_server_token_guards_submit(spool, tmp_path, token_file):
    server = WebServer(spool.root, tmp_path, extra_args=["--token-file", str(token_file)])
    try:
        build_id = new_id()
        refused = submit(server.url, good_tarball(), build_id)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "Unauthorized"
        assert not (spool.jobs / build_id).exists()
        assert os.listdir(spool.staging) == []

        cancel = requests.post(f"{server.url}/build/{build_id}/cancel", timeout=10)
        assert cancel.status_code == 401
        cleanup = requests.post(f"{server.url}/admin/cleanup", timeout=10)
        assert cleanup.status_code == 401

        accepted = submit(server.url, good_tarball(), build_id,
                          headers={"Authorization": f"Bearer {TOKEN}"})
        assert accepted.status_code == 200, accepted.text
        assert (spool.jobs / build_id).is_dir()

        status = requests.get(f"{server.url}/build/{build_id}/status-api", timeout=10)
        assert status.status_code == 200
    finally:
        server.stop()


def test_server_allow_from_guards_submit(spool, tmp_path):
    server = WebServer(spool.root, tmp_path, extra_args=["--allow-from", "192.0.2.0/24"])
    try:
        build_id = new_id()
        refused = submit(server.url, good_tarball(), build_id)
        assert refused.status_code == 403, refused.text
        assert "127.0.0.1" in refused.json()["detail"]
        assert not (spool.jobs / build_id).exists()
        assert requests.get(server.url + "/", headers={"Accept": "application/json"}, timeout=10).status_code == 200
    finally:
        server.stop()


def test_server_allow_from_loopback_accepts(spool, tmp_path):
    server = WebServer(spool.root, tmp_path, extra_args=["--allow-from", "127.0.0.0/8"])
    try:
        accepted = submit(server.url, good_tarball(), new_id())
        assert accepted.status_code == 200, accepted.text
    finally:
        server.stop()


def test_server_refuses_bad_allow_from(spool, tmp_path):
    with pytest.raises(RuntimeError) as caught:
        WebServer(spool.root, tmp_path, extra_args=["--allow-from", "10.0.0.0/99"])
    assert "--allow-from" in str(caught.value)


def test_server_sends_no_wildcard_cors(spool, tmp_path):
    server = WebServer(spool.root, tmp_path)
    try:
        origin = {"Origin": "https://evil.example"}
        answers = [
            requests.get(server.url + "/", headers={**origin, "Accept": "application/json"}, timeout=10),
            requests.get(server.url + "/builds/latest", headers=origin, timeout=10),
            requests.get(server.url + "/openapi.json", headers=origin, timeout=10),
            requests.options(server.url + "/build", headers={**origin, "Access-Control-Request-Method": "POST"},
                             timeout=10),
            submit(server.url, b"not a tarball", new_id(), headers=origin),
        ]
        for answer in answers:
            allowed = answer.headers.get("Access-Control-Allow-Origin")
            assert allowed in (None, ""), (answer.request.method, answer.url, allowed)
            assert "Access-Control-Allow-Credentials" not in answer.headers
    finally:
        server.stop()
