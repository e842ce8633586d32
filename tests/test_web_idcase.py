"""Build ids in upper or mixed case reach the same build on every /build/ID/... route."""

from __future__ import annotations

import uuid

import pytest
import requests

from apbd.web.app import canonical_build_id
from tests.test_web_common import PKGBUILD_TEXT, add_build, make_tarball, spool, submit, web  # noqa: F401

PACKAGE = "demo-1.0-1-x86_64.pkg.tar.zst"
JSON_ROUTES = ["", "/status-api", "/status?format=json", "/output", "/packages"]


def mixed_case(build_id: str) -> str:
    return "".join(c.upper() if i % 2 else c for i, c in enumerate(build_id))


def get(web, path: str, **headers) -> requests.Response:
    return requests.get(web.url + path, headers=headers, timeout=10)


def test_canonical_build_id():
    build_id = "48ea1df5-f7f3-477e-a7a7-36e526ea7cd3"
    assert canonical_build_id(build_id.upper()) == build_id
    assert canonical_build_id(mixed_case(build_id)) == build_id
    assert canonical_build_id(build_id) == build_id
    assert canonical_build_id("NOT-A-BUILD-ID") == "NOT-A-BUILD-ID"


def test_posted_uppercase_id_is_found(web, spool):
    build_id = str(uuid.uuid4())
    answer = submit(web.url, make_tarball({"PKGBUILD": PKGBUILD_TEXT}), build_id=build_id.upper(),
                    build_timeout="900")
    assert answer.status_code == 200
    assert answer.json()["build_id"] == build_id
    status = get(web, f"/build/{build_id.upper()}/status-api")
    assert status.status_code == 200
    assert status.json()["build_id"] == build_id


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("change_case", [str.upper, mixed_case])
def test_json_routes_accept_any_case(web, spool, route, change_case):
    build_id = add_build(spool, packages=[PACKAGE])
    expected = get(web, f"/build/{build_id}{route}")
    answer = get(web, f"/build/{change_case(build_id)}{route}")
    assert expected.status_code == 200
    assert answer.status_code == 200
    assert answer.json() == expected.json()


def test_downloads_accept_any_case(web, spool):
    build_id = add_build(spool, packages=[PACKAGE], log_text="all output\n")
    upper = build_id.upper()
    assert get(web, f"/build/{upper}/download/build.log").content == b"all output\n"
    assert get(web, f"/build/{upper}/download/{PACKAGE}").content == f"package {PACKAGE}\n".encode()
    assert requests.head(f"{web.url}/build/{upper}/download/{PACKAGE}", timeout=10).status_code == 200


def test_stream_accepts_any_case(web, spool):
    build_id = add_build(spool, log_text="line one\n")
    answer = get(web, f"/build/{build_id.upper()}/stream")
    assert answer.status_code == 200
    assert "data: line one" in answer.text
    assert "event: complete" in answer.text


def test_html_pages_accept_any_case(web, spool):
    build_id = add_build(spool, log_text="line one\n")
    upper = build_id.upper()
    for path in (f"/build/{upper}", f"/build/{upper}/view/build.log", f"/build/{upper}/confirm-cancel"):
        page = get(web, path, Accept="text/html")
        assert page.status_code == 200, path
        assert page.headers["Content-Type"].startswith("text/html"), path
        assert build_id in page.text, path


def test_cancel_accepts_any_case(web, spool):
    build_id = add_build(spool, state="queued")
    answer = requests.post(f"{web.url}/build/{mixed_case(build_id)}/cancel", timeout=10)
    assert answer.status_code == 200
    assert spool.read_status(build_id)["status"] == "cancelled"


def test_unknown_id_in_upper_case_is_404(web, spool):
    add_build(spool)
    unknown = str(uuid.uuid4()).upper()
    answer = get(web, f"/build/{unknown}/status-api")
    assert answer.status_code == 404
    assert answer.json()["error"] == "Build not found"
    assert unknown.lower() in answer.json()["detail"]
    not_an_id = get(web, "/build/NOT-A-UUID/status-api")
    assert not_an_id.status_code == 404
    assert "NOT-A-UUID" in not_an_id.json()["detail"]
