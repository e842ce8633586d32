"""create_job on a real spool, reading real PKGBUILDs with makepkg."""

from __future__ import annotations

import pytest

from apbd.errors import ApiError
from apbd.intake import create_job
from apbd.spool import Spool
from tests.doubles.builduser import open_for_build_user

BUILD_ID = "48ea1df5-f7f3-477e-a7a7-36e526ea7cd3"
PKGBUILD = "pkgname=demo\npkgver=1.0\npkgrel=3\nepoch=2\narch=(any)\npackage() { :; }\n"


@pytest.fixture
def spool(tmp_path):
    s = Spool(open_for_build_user(tmp_path) / "spool")
    s.create()
    return s


def stage(spool: Spool, text: str = PKGBUILD):
    staging = spool.make_staging_dir("test")
    (staging / "src").mkdir()
    (staging / "src" / "PKGBUILD").write_text(text)
    return staging


def submit(spool, staging, sha="aa", **kwargs):
    args = dict(build_id=BUILD_ID, source="tarball", build_timeout=600, extra_repos=None,
                sha256=sha, remote_addr="127.0.0.1", build_user="apbd-build")
    args.update(kwargs)
    return create_job(spool, staging, **args)


def test_create_job_publishes_queued(spool):
    status = submit(spool, stage(spool))
    assert status["status"] == "queued"
    assert status["pkgname"] == "demo"
    assert status["version"] == "2:1.0-3"
    assert status["arch"] == ["any"]
    assert status["build_timeout"] == 600
    assert spool.queued_ids() == [BUILD_ID]
    assert spool.read_request(BUILD_ID)["sha256"] == "aa"
    assert list(spool.staging.iterdir()) == []


def test_same_content_is_retry(spool):
    submit(spool, stage(spool))
    second = stage(spool)
    status = submit(spool, second)
    assert status["retry"] is True
    assert status["build_id"] == BUILD_ID
    assert not second.exists()
    assert spool.job_ids() == [BUILD_ID]


def test_different_content_is_conflict(spool):
    submit(spool, stage(spool))
    second = stage(spool)
    with pytest.raises(ApiError) as error:
        submit(spool, second, sha="bb")
    assert error.value.status == 409
    assert not second.exists()


def test_missing_pkgver_is_400(spool):
    staging = stage(spool, "pkgname=demo\npkgrel=1\narch=(any)\npackage() { :; }\n")
    with pytest.raises(ApiError) as error:
        submit(spool, staging)
    assert error.value.status == 400
    assert "pkgver" in error.value.detail
    assert not staging.exists()
    assert spool.job_ids() == []


def test_default_timeout_when_none(spool):
    status = submit(spool, stage(spool), build_timeout=None)
    assert status["build_timeout"] == 7200
    assert spool.read_request(BUILD_ID)["build_timeout"] is None
