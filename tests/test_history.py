"""The history endpoints on a real spool: order, filters, dedupe, removed builds, a big index."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid

import requests

from apbd.web.history import lines_backwards
from tests.test_web_common import add_build, spool, web  # noqa: F401


def get(web, path: str, **params) -> requests.Response:
    return requests.get(web.url + path, params=params, timeout=10)


def test_lines_backwards_small_blocks(tmp_path):
    path = tmp_path / "index.log"
    lines = [f"line-{i}".encode() * (i % 7 + 1) for i in range(500)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert list(lines_backwards(path, block=13)) == lines[::-1]
    assert list(lines_backwards(tmp_path / "missing.log")) == []


def test_latest_newest_first_with_limit(web, spool):
    ids = [add_build(spool, f"pkg{i}", created_at=1700000000.0 + i) for i in range(12)]
    answer = get(web, "/builds/latest").json()
    assert [b["build_id"] for b in answer["builds"]] == ids[::-1][:10]
    assert answer["total"] == 10
    item = answer["builds"][0]
    assert item["pkgname"] == "pkg11"
    assert item["status"] == "completed"
    assert item["created_at"] == "2023-11-14T22:13:31Z"
    assert item["start_time"] == "2023-11-14T22:13:32Z"
    assert item["end_time"] == "2023-11-14T22:13:42Z"
    assert item["duration"] == 10.0
    assert len(get(web, "/builds/latest", limit=3).json()["builds"]) == 3
    assert len(get(web, "/builds/latest", limit=1000).json()["builds"]) == 12
    assert get(web, "/builds/latest", limit=0).status_code == 400


def test_latest_status_filter(web, spool):
    failed = add_build(spool, state="failed")
    add_build(spool, state="completed")
    queued = add_build(spool, state="queued")
    assert [b["build_id"] for b in get(web, "/builds/latest", status="failed").json()["builds"]] == [failed]
    assert [b["build_id"] for b in get(web, "/builds/latest", status="queued").json()["builds"]] == [queued]
    bad = get(web, "/builds/latest", status="done")
    assert bad.status_code == 400
    assert "queued" in bad.json()["detail"]


def test_history_lists_each_build_once(web, spool):
    build_id = add_build(spool)
    index = spool.history / "builds.log"
    index.write_text(index.read_text() * 3)
    builds = get(web, "/builds/latest").json()["builds"]
    assert [b["build_id"] for b in builds] == [build_id]


def test_removed_builds_are_skipped(web, spool):
    kept = add_build(spool)
    gone = add_build(spool)
    shutil.rmtree(spool.job_dir(gone))
    assert [b["build_id"] for b in get(web, "/builds/latest").json()["builds"]] == [kept]


def test_missing_index_is_rebuilt(web, spool):
    first = add_build(spool, created_at=1000.0)
    second = add_build(spool, created_at=2000.0)
    shutil.rmtree(spool.history)
    assert [b["build_id"] for b in get(web, "/builds/latest").json()["builds"]] == [second, first]
    assert (spool.history / "builds.log").exists()
    assert [b["build_id"] for b in get(web, "/builds/pkgname/demo").json()["builds"]] == [second, first]


def test_pkgname_builds_and_limit(web, spool):
    ids = [add_build(spool, "foo", created_at=1000.0 + i) for i in range(7)]
    add_build(spool, "bar")
    answer = get(web, "/builds/pkgname/foo").json()
    assert answer["pkgname"] == "foo"
    assert [b["build_id"] for b in answer["builds"]] == ids[::-1][:5]
    assert answer["total"] == 5
    assert len(get(web, "/builds/pkgname/foo", limit=100).json()["builds"]) == 7
    assert get(web, "/builds/pkgname/nothing").json() == {"pkgname": "nothing", "builds": [], "total": 0}


def test_pkgname_latest_successful_only(web, spool):
    good = add_build(spool, "foo", packages=["foo-1.0-1-x86_64.pkg.tar.zst"], created_at=1000.0)
    bad = add_build(spool, "foo", state="failed", created_at=2000.0)
    latest = get(web, "/builds/pkgname/foo/latest").json()
    assert latest["build_id"] == good
    assert latest["packages"][0]["filename"] == "foo-1.0-1-x86_64.pkg.tar.zst"
    for value in ("True", "true", "1"):
        assert get(web, "/builds/pkgname/foo/latest", successful_only=value).json()["build_id"] == good
    for value in ("False", "false", "0"):
        assert get(web, "/builds/pkgname/foo/latest", successful_only=value).json()["build_id"] == bad
    assert get(web, "/builds/pkgname/foo/latest", successful_only="maybe").status_code == 400
    assert get(web, "/builds/pkgname/none/latest").status_code == 404


def test_pkgname_latest_downloads(web, spool):
    packages = ["foo-debug-1.0-1-x86_64.pkg.tar.zst", "foo-1.0-1-x86_64.pkg.tar.zst",
                "foo-extra-1.0-1-x86_64.pkg.tar.zst"]
    add_build(spool, "foo", packages=packages, log_text="the log\n")
    base = "/builds/pkgname/foo/latest/download/"
    package = get(web, base + "package")
    assert package.status_code == 200
    assert package.content == b"package foo-1.0-1-x86_64.pkg.tar.zst\n"
    assert 'filename="foo-1.0-1-x86_64.pkg.tar.zst"' in package.headers["Content-Disposition"]
    assert get(web, base + "debug").content == b"package foo-debug-1.0-1-x86_64.pkg.tar.zst\n"
    assert get(web, base + "log").content == b"the log\n"
    assert get(web, base + "pkgbuild").content.startswith(b"pkgname=foo")
    assert get(web, base + "source").status_code == 400


def test_pkgname_latest_download_without_debug_is_404(web, spool):
    add_build(spool, "foo", packages=["foo-1.0-1-any.pkg.tar.zst"])
    answer = get(web, "/builds/pkgname/foo/latest/download/debug")
    assert answer.status_code == 404
    assert "debug" in answer.json()["detail"]


def test_history_fast_with_100000_builds(web, spool):
    # 100,000 index lines whose job folders are gone (as after cleanup of the
    # folders but not the index) plus 20 real builds at the end.
    filler = b"".join(json.dumps({"build_id": str(uuid.uuid4()), "created_at": 1.0, "pkgname": "old"}).encode()
                      + b"\n" for _ in range(100_000))
    index = spool.history / "builds.log"
    index.write_bytes(filler)
    (spool.history / "pkgname" / "demo.log").write_bytes(filler)
    ids = [add_build(spool, created_at=5000.0 + i) for i in range(20)]

    started = time.monotonic()
    latest = get(web, "/builds/latest", limit=10).json()
    by_name = get(web, "/builds/pkgname/demo", limit=5).json()
    elapsed = time.monotonic() - started
    assert [b["build_id"] for b in latest["builds"]] == ids[::-1][:10]
    assert [b["build_id"] for b in by_name["builds"]] == ids[::-1][:5]
    assert elapsed < 1.0


def test_concurrent_requests_rebuild_index_once(web, spool):
    ids = [add_build(spool, created_at=1000.0 + i) for i in range(5)]
    shutil.rmtree(spool.history)
    results = []

    def fetch():
        results.append(get(web, "/builds/latest"))

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.status_code for r in results] == [200] * 6
    for answer in results:
        assert [b["build_id"] for b in answer.json()["builds"]] == ids[::-1]
