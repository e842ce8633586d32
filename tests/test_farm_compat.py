"""Play the APB farm and the APB client against a real apbd, as they really call it.

The farm sends a multipart POST /build with build_id (a uuid4 it made),
build_timeout as a decimal string and the client's tarball as build_tarball
(build.tar.gz, application/gzip), retries with the same id and bytes after a
timeout, polls status-api, reads GET / for routing and load, downloads every
listed file, relays the stream, and reads /builds/latest?limit=50. The client,
pointed straight at a server, submits without build_id and polls
/build/ID/status?format=json until artifacts_ready.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from apbd.spool import is_build_id
from tests.support.packages import submit_tarball, tarball_from_text
from tests.support.servers import wait_for_status
from tests.support.sse import collect_until_complete, read_events

PROBE_PKGBUILD = r"""pkgname=farm-probe
pkgver=3.4
pkgrel=2
pkgdesc='Package that prints lines an event stream must carry unchanged'
arch=('any')
license=('MIT')

build() {
  echo "probe line one"
  printf 'progress 50%%\rprogress 100%%\n'
  echo 'event: complete'
  echo 'data: {"status": "failed"}'
  echo "probe line last"
}

package() {
  install -d "$pkgdir/usr/share/farm-probe"
  echo probe > "$pkgdir/usr/share/farm-probe/probe.txt"
}
"""

SLOW_PKGBUILD = r"""pkgname=farm-slow
pkgver=1.0
pkgrel=1
pkgdesc='Package whose build prints a line every half second for two minutes'
arch=('any')
license=('MIT')

build() {
  for i in $(seq 1 240); do
    echo "tick $i"
    sleep 0.5
  done
}

package() {
  install -d "$pkgdir/usr/share/farm-slow"
}
"""

QUEUE_FIELDS = {
    "current_builds_count": int,
    "queued_builds": int,
    "max_concurrent_builds": int,
    "server_busy_with_buildroot": bool,
    "buildroot_recreation_count": int,
}
TERMINAL = ("completed", "failed", "cancelled")
STATES = ("queued", "building", *TERMINAL)


def farm_submit(url: str, build_id: str, tarball: bytes, build_timeout: str = "7200") -> requests.Response:
    return submit_tarball(url, tarball, build_id=build_id, build_timeout=build_timeout)


def assert_no_null(value, where: str = "") -> None:
    """The farm and client expect absent fields, never null ones."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, f"{where}{key} is null"
            assert_no_null(item, f"{where}{key}.")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_no_null(item, f"{where}{index}.")


def assert_file_entries(entries: list, build_id: str) -> None:
    assert isinstance(entries, list)
    for entry in entries:
        assert isinstance(entry["filename"], str) and entry["filename"]
        assert isinstance(entry["size"], int)
        assert entry["download_url"] == f"/build/{build_id}/download/{entry['filename']}"


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def probe_tarball() -> bytes:
    return tarball_from_text({"PKGBUILD": PROBE_PKGBUILD})


@pytest.fixture(scope="module")
def probe_build(module_server, probe_tarball):
    """The probe package submitted as the farm does and built to the end: (build id, final status)."""
    build_id = str(uuid.uuid4())
    answer = farm_submit(module_server.url, build_id, probe_tarball)
    assert answer.status_code == 200, answer.text
    assert answer.json()["build_id"] == build_id
    status = wait_for_status(module_server.url, build_id)
    return build_id, status


def test_farm_submit_accepted(module_server, probe_build):
    build_id, status = probe_build
    assert status["status"] == "completed", status
    assert status["build_id"] == build_id


def test_farm_retry_builds_once(module_server, probe_build, probe_tarball):
    build_id, _ = probe_build
    answer = farm_submit(module_server.url, build_id, probe_tarball)
    assert answer.status_code == 200, answer.text
    assert answer.json()["build_id"] == build_id

    latest = requests.get(f"{module_server.url}/builds/latest", params={"limit": 50}, timeout=10).json()
    assert [b["build_id"] for b in latest["builds"]].count(build_id) == 1
    log_text = requests.get(f"{module_server.url}/build/{build_id}/download/build.log", timeout=10).text
    assert log_text.count("==> Making package: farm-probe") == 1


def test_farm_retry_other_bytes_conflict(module_server, probe_build):
    build_id, _ = probe_build
    other = tarball_from_text({"PKGBUILD": PROBE_PKGBUILD.replace("pkgrel=2", "pkgrel=3")})
    answer = farm_submit(module_server.url, build_id, other)
    assert answer.status_code == 409
    body = answer.json()
    assert set(body) >= {"error", "detail"}


def test_farm_submit_with_extra_repos(module_server, probe_tarball):
    build_id = str(uuid.uuid4())
    repos = [{"name": "farm-extra", "url": "file:///srv/repo/$arch", "gpg_key_id": ""}]
    fields = {"build_id": build_id, "build_timeout": "7200", "extra_repos": json.dumps(repos)}
    files = {"build_tarball": ("build.tar.gz", probe_tarball, "application/gzip")}
    answer = requests.post(f"{module_server.url}/build", data=fields, files=files, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["build_id"] == build_id

    status = wait_for_status(module_server.url, build_id)
    # The makepkg builder installs no dependencies, so the extra repository is never read.
    assert status["status"] == "completed", status
    assert "build.log" in [entry["filename"] for entry in status["logs"]]
    assert module_server.spool.read_request(build_id)["extra_repos"][0]["name"] == "farm-extra"
    log_text = (module_server.spool.job_dir(build_id) / "build.log").read_text(errors="replace")
    assert "extra repositories farm-extra are not used: makepkg installs no dependencies" in log_text


@pytest.mark.parametrize("value", ["299", "14401", "soon"])
def test_build_timeout_out_of_range(module_server, probe_tarball, value):
    answer = farm_submit(module_server.url, str(uuid.uuid4()), probe_tarball, build_timeout=value)
    assert answer.status_code == 400
    assert set(answer.json()) >= {"error", "detail"}


def test_status_api_finished_fields(module_server, probe_build):
    build_id, _ = probe_build
    answer = requests.get(f"{module_server.url}/build/{build_id}/status-api", timeout=10)
    assert answer.status_code == 200
    status = answer.json()
    assert_no_null(status)
    assert status["build_id"] == build_id
    assert status["status"] == "completed"
    assert status["pkgname"] == "farm-probe"
    assert status["arch"] == ["any"]
    assert status["build_timeout"] == 7200
    for field in ("created_at", "start_time", "end_time", "duration"):
        assert is_number(status[field]), f"{field} = {status[field]!r}"
    assert status["exit_code"] == 0
    assert status["start_time"] <= status["end_time"]
    assert_file_entries(status["packages"], build_id)
    assert_file_entries(status["logs"], build_id)
    assert [p["filename"] for p in status["packages"]] == ["farm-probe-3.4-2-any.pkg.tar.zst"]
    assert "build.log" in [entry["filename"] for entry in status["logs"]]


def test_download_every_listed_file(module_server, probe_build):
    build_id, _ = probe_build
    status = requests.get(f"{module_server.url}/build/{build_id}/status-api", timeout=10).json()
    entries = status["packages"] + status["logs"]
    assert len(entries) >= 2
    for entry in entries:
        answer = requests.get(module_server.url + entry["download_url"], timeout=30)
        assert answer.status_code == 200, entry
        assert len(answer.content) > 0, f"{entry['filename']} downloaded empty"
        assert len(answer.content) == entry["size"]


def test_root_fields_for_routing(module_server):
    started = time.monotonic()
    answer = requests.get(module_server.url + "/", headers={"Accept": "application/json"}, timeout=10)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200
    info = answer.json()
    assert isinstance(info["supported_architecture"], str) and info["supported_architecture"]
    queue = info["queue_status"]
    for field, kind in QUEUE_FIELDS.items():
        assert isinstance(queue[field], kind), f"queue_status.{field} = {queue.get(field)!r}"
    assert queue["max_concurrent_builds"] >= 1
    # The farm's timeout for GET / is 10 s and it calls it often.
    assert elapsed < 2.0, f"GET / took {elapsed:.2f} s"


def test_stream_of_finished_build(module_server, probe_build):
    build_id, _ = probe_build
    events = collect_until_complete(f"{module_server.url}/build/{build_id}/stream")
    outputs = [e.data for e in events if e.event == "output"]
    page = requests.get(f"{module_server.url}/build/{build_id}/output",
                        params={"start_index": 0, "limit": 1000}, timeout=10).json()
    assert len(outputs) == page["total_lines"]
    # The line holding a carriage return may be encoded differently; every other line is verbatim.
    assert [o for o in outputs if "progress" not in o] == [o for o in page["output"] if "progress" not in o]
    assert "probe line one" in outputs
    assert "event: complete" in outputs
    assert 'data: {"status": "failed"}' in outputs
    progress = [o for o in outputs if "progress 100%" in o]
    assert len(progress) == 1, f"the line with a carriage return became {outputs}"
    assert "progress 50%" in progress[0]
    completes = [e for e in events if e.event == "complete"]
    assert len(completes) == 1
    assert events[-1].event == "complete"
    assert json.loads(events[-1].data) == {"status": "completed", "exit_code": 0}


def test_stream_unknown_build_not_found(module_server):
    answer = requests.get(f"{module_server.url}/build/{uuid.uuid4()}/stream", timeout=10, stream=True)
    assert answer.status_code == 404
    answer.close()


def test_status_api_unknown_build_not_found(module_server):
    answer = requests.get(f"{module_server.url}/build/{uuid.uuid4()}/status-api", timeout=10)
    assert answer.status_code == 404
    assert set(answer.json()) >= {"error", "detail"}


def test_builds_latest_fields(module_server, probe_build):
    build_id, _ = probe_build
    answer = requests.get(f"{module_server.url}/builds/latest", params={"limit": 50}, timeout=10)
    assert answer.status_code == 200
    builds = answer.json()["builds"]
    assert isinstance(builds, list)
    mine = [b for b in builds if b["build_id"] == build_id]
    assert len(mine) == 1
    for field in ("build_id", "pkgname", "status", "start_time", "end_time", "created_at"):
        assert mine[0].get(field) is not None, f"builds/latest entry lacks {field}: {mine[0]}"
    assert mine[0]["pkgname"] == "farm-probe"
    assert mine[0]["status"] == "completed"


def test_client_submit_without_build_id(module_server, probe_tarball):
    answer = submit_tarball(module_server.url, probe_tarball)
    assert answer.status_code == 200, answer.text
    build_id = answer.json()["build_id"]
    assert is_build_id(build_id)
    assert uuid.UUID(build_id).version == 4

    deadline = time.monotonic() + 300
    while True:
        status = requests.get(f"{module_server.url}/build/{build_id}/status", params={"format": "json"},
                              timeout=10).json()
        if status.get("artifacts_ready"):
            break
        assert time.monotonic() < deadline, f"artifacts never ready: {status}"
        time.sleep(0.5)

    assert_no_null(status)
    assert status["status"] == "completed"
    assert status["artifacts_ready"] is True
    assert status["build_id"] == build_id
    assert status["pkgname"] == "farm-probe"
    assert status["arch"][0] == "any"
    assert is_number(status["duration"])
    api = requests.get(f"{module_server.url}/build/{build_id}/status-api", timeout=10).json()
    for key, value in api.items():
        assert status[key] == value, f"status?format=json differs from status-api in {key}"
    for entry in status["packages"] + status["logs"]:
        body = requests.get(f"{module_server.url}/build/{build_id}/download/{entry['filename']}", timeout=30)
        assert body.status_code == 200
        assert body.content


def test_running_build_status_stream_and_cancel(module_server):
    build_id = str(uuid.uuid4())
    answer = farm_submit(module_server.url, build_id, tarball_from_text({"PKGBUILD": SLOW_PKGBUILD}))
    assert answer.status_code == 200, answer.text

    early = requests.get(f"{module_server.url}/build/{build_id}/status-api", timeout=10).json()
    assert early["status"] in ("queued", "building")
    assert_no_null(early)
    for field in ("end_time", "duration", "exit_code"):
        assert field not in early, f"{field} present before the build ended: {early}"
    assert isinstance(early["arch"], list)

    url = f"{module_server.url}/build/{build_id}/stream"
    events = []
    cancelled = False
    with requests.get(url, stream=True, timeout=(10, 120)) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.headers.get("X-Accel-Buffering") == "no"
        for event in read_events(stream):
            events.append(event)
            ticks = [e for e in events if e.event == "output" and e.data.startswith("tick ")]
            if len(ticks) == 3 and not cancelled:
                cancelled = True
                running = requests.get(f"{module_server.url}/build/{build_id}/status-api", timeout=10).json()
                assert running["status"] == "building"
                assert is_number(running["start_time"])
                cancel = requests.post(f"{module_server.url}/build/{build_id}/cancel", timeout=10)
                assert cancel.status_code == 200, cancel.text
            if event.event == "complete":
                break

    assert json.loads(events[-1].data)["status"] == "cancelled"
    final = wait_for_status(module_server.url, build_id, timeout=60)
    assert final["status"] == "cancelled"
    ticks = [e for e in events if e.event == "output" and e.data.startswith("tick ")]
    assert len(ticks) < 240, "the build ran to its end despite the cancel"
    assert "build.log" in [entry["filename"] for entry in final["logs"]]
