"""Tests for the HTML pages, /static and the chart, against a real apbd-web process."""

from __future__ import annotations

import re
import time

import requests

from apbd import spool as spool_format
from apbd.web import chart, pages
from tests.support.servers import WebServer
from tests.test_stream import append_log, make_job, set_status

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def get_html(server, path: str) -> requests.Response:
    response = requests.get(server.url + path, headers=HTML, timeout=10, allow_redirects=False)
    return response


def write_runner(spool, **fields):
    state = {"runner_id": "host-1", "pid": 1, "hostname": "host", "heartbeat": time.time(),
             "builder": "makepkg", "clean_chroot": False, "sandbox": "bwrap", "max_concurrent": 3,
             "running": [], "architecture": "x86_64", **fields}
    spool_format.write_json_atomic(spool.runners / "host-1.json", state)


def test_index_page(web_server, spool):
    done = make_job(spool, spool_format.COMPLETED)
    set_status(spool, done, spool_format.COMPLETED, duration=42.0, exit_code=0, start_time=time.time() - 50)
    failed = make_job(spool, spool_format.FAILED)
    set_status(spool, failed, spool_format.FAILED, duration=7.0, exit_code=4)
    response = get_html(web_server, "/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    body = response.text
    assert "x86_64" in body
    assert f'href="/build/{done}"' in body
    assert f'href="/build/{failed}"' in body
    assert "No runner is running" in body
    assert body.count('class="bar bar-completed"') == 1
    assert body.count('class="bar bar-failed"') == 1
    assert "42 s" in body


def test_index_names_builder_without_chroot(web_server, spool):
    note = "devtools is not installed: building with makepkg in a bubblewrap sandbox, without a clean chroot"
    write_runner(spool, builder_note=note)
    body = get_html(web_server, "/").text
    assert note in body
    assert "host-1" in body


def test_index_json_by_default(web_server):
    response = requests.get(web_server.url + "/", timeout=10)
    assert response.headers["Content-Type"].startswith("application/json")
    assert "queue_status" in response.json()


def test_build_page_active(web_server, spool):
    build_id = make_job(spool, spool_format.BUILDING, b"==> Making package: demo\n")
    body = get_html(web_server, f"/build/{build_id}").text
    assert f'href="/build/{build_id}/confirm-cancel"' in body
    assert 'src="/static/build.js"' in body
    assert 'id="log"' in body
    assert "status-building" in body


def test_build_page_finished(web_server, spool):
    build_id = make_job(spool, spool_format.COMPLETED, b"done\n")
    set_status(spool, build_id, spool_format.COMPLETED, exit_code=0, duration=125.0,
               start_time=time.time() - 130, end_time=time.time() - 5)
    packages = spool.job_dir(build_id) / spool_format.PACKAGES_DIR
    packages.mkdir()
    (packages / "demo-1:1.0-1-x86_64.pkg.tar.zst").write_bytes(b"p" * 3000)
    body = get_html(web_server, f"/build/{build_id}").text
    assert "confirm-cancel" not in body
    assert "demo-1:1.0-1-x86_64.pkg.tar.zst" in body
    assert f'href="/build/{build_id}/download/demo-1:1.0-1-x86_64.pkg.tar.zst"' in body
    assert "2.9 KiB" in body
    assert "2 min 5 s" in body
    assert f'href="/build/{build_id}/view/build.log"' in body


def test_build_page_unknown_404_json(web_server):
    response = get_html(web_server, f"/build/{spool_format.new_build_id()}")
    assert response.status_code == 404
    assert response.json()["error"] == "Build not found"


def test_confirm_cancel_page(web_server, spool):
    build_id = make_job(spool, spool_format.BUILDING)
    body = get_html(web_server, f"/build/{build_id}/confirm-cancel").text
    assert 'id="cancel-form"' in body
    # A plain form to a page route: it works without JavaScript and never ends on the API's JSON.
    assert f'method="post" action="/build/{build_id}/confirm-cancel"' in body
    assert "<script" not in body


def post_cancel_form(server, build_id: str, session: requests.Session | None = None) -> requests.Response:
    """Submit the confirm-cancel form as a browser does, without following the redirect."""
    client = session or requests.Session()
    return client.post(f"{server.url}/build/{build_id}/confirm-cancel", headers=HTML, timeout=10,
                       allow_redirects=False)


def test_cancel_form_queued_build(web_server, spool):
    build_id = make_job(spool, spool_format.QUEUED)
    browser = requests.Session()
    response = post_cancel_form(web_server, build_id, browser)
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/build/{build_id}")
    assert spool.read_status(build_id)["status"] == spool_format.CANCELLED

    page = browser.get(web_server.url + response.headers["Location"], headers=HTML, timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert pages.BUILD_NOTICES[pages.NOTICE_CANCELLED] in page.text
    assert "status-cancelled" in page.text
    # The notice shows once: a reload no longer has it.
    again = browser.get(f"{web_server.url}/build/{build_id}", headers=HTML, timeout=10)
    assert pages.BUILD_NOTICES[pages.NOTICE_CANCELLED] not in again.text


def test_cancel_form_running_build(web_server, spool):
    build_id = make_job(spool, spool_format.BUILDING)
    browser = requests.Session()
    response = post_cancel_form(web_server, build_id, browser)
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/build/{build_id}")
    # The same cancel request the JSON API leaves for the runner.
    assert (spool.job_dir(build_id) / spool_format.CANCEL_MARKER).exists()

    page = browser.get(web_server.url + response.headers["Location"], headers=HTML, timeout=10)
    assert pages.BUILD_NOTICES[pages.NOTICE_CANCEL_REQUESTED] in page.text


def test_cancel_form_finished_build(web_server, spool):
    build_id = make_job(spool, spool_format.COMPLETED)
    browser = requests.Session()
    response = post_cancel_form(web_server, build_id, browser)
    assert response.status_code == 303
    assert spool.read_status(build_id)["status"] == spool_format.COMPLETED

    page = browser.get(web_server.url + response.headers["Location"], headers=HTML, timeout=10)
    assert pages.BUILD_NOTICES[pages.NOTICE_NOT_CANCELLED] in page.text


def test_cancel_form_unknown_build_json(web_server):
    for bad in (spool_format.new_build_id(), "not-a-uuid"):
        response = post_cancel_form(web_server, bad)
        assert response.status_code == 404, bad
        assert response.json()["error"] == "Build not found"


def test_cancel_form_needs_token(spool, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("form-token\n")
    token_file.chmod(0o600)
    server = WebServer(spool.root, tmp_path, ["--token-file", str(token_file)])
    try:
        build_id = make_job(spool, spool_format.QUEUED)
        rejected = post_cancel_form(server, build_id)
        assert rejected.status_code == 401
        assert spool.read_status(build_id)["status"] == spool_format.QUEUED

        session = requests.Session()
        session.headers["Authorization"] = "Bearer form-token"
        accepted = post_cancel_form(server, build_id, session)
        assert accepted.status_code == 303
        assert spool.read_status(build_id)["status"] == spool_format.CANCELLED
    finally:
        server.stop()


def test_cancel_api_stays_json(web_server, spool):
    build_id = make_job(spool, spool_format.QUEUED)
    response = requests.post(f"{web_server.url}/build/{build_id}/cancel", headers=HTML, timeout=10,
                             allow_redirects=False)
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Build cancelled successfully"}


def test_notice_cookie_shows_only_known_text(web_server, spool):
    build_id = make_job(spool, spool_format.BUILDING)
    cookies = {pages.NOTICE_COOKIE: "<script>alert(1)</script>"}
    body = requests.get(f"{web_server.url}/build/{build_id}", headers=HTML, cookies=cookies, timeout=10).text
    assert 'id="notice"' not in body
    assert "alert(1)" not in body


def test_build_page_arch_matches_status_api(web_server, spool):
    architecture = requests.get(web_server.url + "/", timeout=10).json()["supported_architecture"]
    build_id = make_job(spool, spool_format.BUILDING)
    set_status(spool, build_id, spool_format.BUILDING, arch=[architecture, "pentium4"])
    api_arch = requests.get(f"{web_server.url}/build/{build_id}/status-api", timeout=10).json()["arch"]
    assert api_arch == [architecture]

    body = get_html(web_server, f"/build/{build_id}").text
    expected = f'<dd id="arch">{architecture} <span class="muted">(PKGBUILD: {architecture}, pentium4)</span></dd>'
    assert expected in body


def test_build_page_arch_any(web_server, spool):
    build_id = make_job(spool, spool_format.COMPLETED)
    set_status(spool, build_id, spool_format.COMPLETED, arch=["any"])
    body = get_html(web_server, f"/build/{build_id}").text
    assert '<dd id="arch">any</dd>' in body
    assert "PKGBUILD:" not in body


def test_confirm_cancel_finished_build(web_server, spool):
    build_id = make_job(spool, spool_format.FAILED)
    body = get_html(web_server, f"/build/{build_id}/confirm-cancel").text
    assert "cancel-form" not in body
    assert "already failed" in body


def test_confirm_cancel_unknown_404(web_server):
    for bad in (spool_format.new_build_id(), "not-a-uuid"):
        response = get_html(web_server, f"/build/{bad}/confirm-cancel")
        assert response.status_code == 404
        assert set(response.json()) == {"error", "detail"}


def test_view_log_escaped_with_numbers(web_server, spool):
    log = (b"==> Making package\n<script>alert('x')</script>\n\x1b[1;31mred\x1b[0m\x00nul\n"
           b"bad \xff utf-8\ncr\rinside\n")
    build_id = make_job(spool, spool_format.BUILDING, log)
    response = get_html(web_server, f"/build/{build_id}/view/build.log")
    assert response.status_code == 200
    body = response.text
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in body
    assert '<td class="num">2</td>' in body
    assert "red\u2400nul" in body
    assert "\x1b" not in body
    assert "bad \ufffd utf-8" in body
    assert "cr\u240dinside" in body
    assert (spool.job_dir(build_id) / spool_format.LOG_FILE).read_bytes() == log


def test_view_pages_long_log(web_server, spool):
    build_id = make_job(spool, spool_format.COMPLETED,
                        b"".join(b"line %d\n" % i for i in range(pages.VIEW_PAGE_LINES + 10)))
    first = get_html(web_server, f"/build/{build_id}/view/build.log").text
    assert f'<tr id="L{pages.VIEW_PAGE_LINES}">' in first
    assert f'<tr id="L{pages.VIEW_PAGE_LINES + 1}">' not in first
    assert f"?start={pages.VIEW_PAGE_LINES}" in first
    second = get_html(web_server, f"/build/{build_id}/view/build.log?start={pages.VIEW_PAGE_LINES}").text
    assert f"line {pages.VIEW_PAGE_LINES + 9}" in second
    assert "line 0<" not in second


def test_view_binary_redirects(web_server, spool):
    build_id = make_job(spool, spool_format.COMPLETED)
    packages = spool.job_dir(build_id) / spool_format.PACKAGES_DIR
    packages.mkdir()
    (packages / "demo-1-1-x86_64.pkg.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd\x00\x01binary")
    response = get_html(web_server, f"/build/{build_id}/view/demo-1-1-x86_64.pkg.tar.zst")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/build/{build_id}/download/demo-1-1-x86_64.pkg.tar.zst")


def test_view_source_file(web_server, spool):
    build_id = make_job(spool, spool_format.COMPLETED)
    sources = spool.job_dir(build_id) / spool_format.SOURCES_DIR
    sources.mkdir(exist_ok=True)
    (sources / "PKGBUILD").write_text("pkgname=demo\npkgver=1\n")
    body = get_html(web_server, f"/build/{build_id}/view/PKGBUILD").text
    assert "pkgname=demo" in body


def test_view_rejects_unlisted_files(web_server, spool):
    build_id = make_job(spool, spool_format.COMPLETED, b"x\n")
    (spool.job_dir(build_id) / spool_format.PACKAGES_DIR).mkdir()
    (spool.job_dir(build_id) / spool_format.PACKAGES_DIR / "link").symlink_to("/etc/passwd")
    for name in ("status.json", "request.json", "..%2Fstatus.json", "%2e%2e%2fstatus.json", "link",
                 "%252e%252e%252fstatus.json", "%00", "/etc/passwd", "nothing.txt"):
        response = get_html(web_server, f"/build/{build_id}/view/{name}")
        assert response.status_code in (400, 404), name
        assert "root:" not in response.text
        assert set(response.json()) >= {"error", "detail"}, name


def test_cleanup_page_lists_old_builds(web_server, spool):
    old = make_job(spool, spool_format.COMPLETED, b"x\n")
    set_status(spool, old, spool_format.COMPLETED, end_time=time.time() - 9 * 86400)
    fresh = make_job(spool, spool_format.COMPLETED)
    response = get_html(web_server, "/admin/cleanup")
    assert response.status_code == 200
    body = response.text
    assert 'id="disk-use"' in body
    assert 'id="memory-use"' in body
    assert re.search(r"% used|\(\d+(\.\d+)? %\)", body)
    assert old in body
    assert fresh not in body
    assert 'action="/admin/cleanup"' in body
    assert 'src="/static/cleanup.js"' in body


def test_static_files(web_server):
    css = requests.get(web_server.url + "/static/style.css", timeout=10)
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")
    script = requests.get(web_server.url + "/static/build.js", timeout=10)
    assert script.status_code == 200
    assert "javascript" in script.headers["Content-Type"]


def test_static_rejects_traversal(web_server):
    for path in ("%2e%2e/apbd/spool.py", "..%2f..%2fapbd%2fspool.py", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                 "/etc/passwd", "nothing.css", ".hidden", "x" * 5000, "%C2%80" * 300, "a%00b"):
        response = requests.get(f"{web_server.url}/static/{path}", timeout=10)
        assert response.status_code == 404, path
        assert response.json()["error"], path


def test_visible_text():
    assert pages.visible_text("\x1b[1m\x1b[32m==>\x1b[m Done") == "==> Done"
    assert pages.visible_text("a\x00b\rc\td\x7f") == "a\u2400b\u240dc\td\u2421"


def test_chart_bars_follow_builds():
    builds = [
        {"build_id": "b3", "pkgname": "three", "status": "building", "start_time_unix": 1000.0},
        {"build_id": "b2", "pkgname": "<two>", "status": "failed", "duration": 10.0},
        {"build_id": "b1", "pkgname": "one", "status": "completed", "duration": 100.0},
    ]
    svg = str(chart.render_duration_chart(builds, now=1050.0))
    bars = re.findall(r'<rect class="bar (bar-\w+)"[^>]*height="([\d.]+)"', svg)
    assert [name for name, _ in bars] == ["bar-completed", "bar-failed", "bar-building"]
    heights = [float(h) for _, h in bars]
    assert heights[0] > heights[2] > heights[1]
    assert "&lt;two&gt;" in svg
    assert "<two>" not in svg


def test_chart_without_builds():
    assert "No builds yet" in str(chart.render_duration_chart([]))


def test_format_duration():
    assert chart.format_duration(None) == "–"
    assert chart.format_duration(42.4) == "42 s"
    assert chart.format_duration(125) == "2 min 5 s"
    assert chart.format_duration(7260) == "2 h 1 min"


def test_log_line_appended_while_building(web_server, spool):
    build_id = make_job(spool, spool_format.BUILDING, b"first\n")
    append_log(spool, build_id, b"second\n")
    body = get_html(web_server, f"/build/{build_id}/view/build.log").text
    assert '<tr id="L2"><td class="num">2</td><td class="text">second</td></tr>' in body


def test_view_names_legal_in_arch(web_server, spool):
    build_id = make_job(spool, spool_format.COMPLETED)
    sources = spool.job_dir(build_id) / spool_format.SOURCES_DIR
    sources.mkdir(exist_ok=True)
    (sources / "fix+build@2:1.patch").write_text("--- a\n+++ b\n")
    for spelled in ("fix+build@2:1.patch", "fix%2Bbuild%402%3A1.patch"):
        response = get_html(web_server, f"/build/{build_id}/view/{spelled}")
        assert response.status_code == 200, spelled
        assert "+++ b" in response.text
