"""Admin drops: a PKGBUILD folder or a .tar.gz placed in drop/ is imported and built."""

from __future__ import annotations

import io
import os
import tarfile
import time

from apbd import spool as spool_format
from apbd.runner.drops import DropImporter
from tests.doubles.builduser import build_tmp, write_tree  # noqa: F401
from tests.doubles.jobs import BUILD_USER, make_spool, trivial_pkgbuild, wait_for
from tests.support.servers import Runner


def wait_for_job(spool, timeout: float = 60.0, count: int = 1) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = spool.job_ids()
        if len(ids) >= count:
            return ids
        time.sleep(0.05)
    raise TimeoutError(f"no {count} job(s) imported from drop/ within {timeout} s")


def drop_folder(spool, name: str, pkgname: str) -> None:
    hidden = write_tree(spool.drop / f".{name}", {"PKGBUILD": trivial_pkgbuild(pkgname)})
    os.rename(hidden, spool.drop / name)


def tarball_bytes(pkgname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = trivial_pkgbuild(pkgname).encode()
        info = tarfile.TarInfo(f"{pkgname}/PKGBUILD")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_folder_drop_built(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        drop_folder(spool, "hello-folder", "apbd-dropped")
        [build_id] = wait_for_job(spool)
        status = wait_for(spool, build_id)
    finally:
        runner.stop()
    assert status["status"] == "completed"
    assert status["source"] == "drop"
    assert status["pkgname"] == "apbd-dropped"
    assert os.listdir(spool.job_dir(build_id) / "packages") == ["apbd-dropped-1.0-1-any.pkg.tar.zst"]
    assert sorted(os.listdir(spool.drop)) == [spool_format.REJECTED_DIR]
    assert os.listdir(spool.staging) == []


def test_tarball_drop_built(build_tmp):
    spool = make_spool(build_tmp)
    runner = Runner(spool.root, build_tmp)
    try:
        hidden = spool.drop / ".hello.tar.gz"
        hidden.write_bytes(tarball_bytes("apbd-tarred"))
        os.rename(hidden, spool.drop / "hello.tar.gz")
        [build_id] = wait_for_job(spool)
        status = wait_for(spool, build_id)
    finally:
        runner.stop()
    assert status["status"] == "completed"
    assert os.listdir(spool.job_dir(build_id) / "packages") == ["apbd-tarred-1.0-1-any.pkg.tar.zst"]
    assert sorted(os.listdir(spool.drop)) == [spool_format.REJECTED_DIR]


def test_invalid_drop_rejected(build_tmp):
    spool = make_spool(build_tmp)
    write_tree(spool.drop / "no-version", {"PKGBUILD": "pkgname=x\npkgrel=1\narch=(any)\n"})
    (spool.drop / "notes.txt").write_text("not a package\n")
    importer = DropImporter(spool, build_user=BUILD_USER, build_timeout=7200)
    assert importer.import_all() == []
    assert spool.job_ids() == []
    assert (spool.rejected / "no-version" / "PKGBUILD").is_file()
    assert "sets no pkgver" in (spool.rejected / "no-version.reason").read_text()
    assert (spool.rejected / "notes.txt").is_file()
    assert "must be a folder holding a PKGBUILD" in (spool.rejected / "notes.txt.reason").read_text()
    assert sorted(os.listdir(spool.drop)) == [spool_format.REJECTED_DIR]


def test_hidden_drop_ignored(build_tmp):
    spool = make_spool(build_tmp)
    write_tree(spool.drop / ".copying", {"PKGBUILD": trivial_pkgbuild("apbd-hidden")})
    importer = DropImporter(spool, build_user=BUILD_USER, build_timeout=7200)
    assert importer.import_all() == []
    assert (spool.drop / ".copying" / "PKGBUILD").is_file()


def test_interrupted_import_finished_once(build_tmp):
    spool = make_spool(build_tmp)
    importer = DropImporter(spool, build_user=BUILD_USER, build_timeout=7200)
    # A runner died after claiming this drop but before publishing it.
    pending_id = spool_format.new_build_id()
    write_tree(spool.drop / f".importing-{pending_id}-pending", {"PKGBUILD": trivial_pkgbuild("apbd-pending")})
    # A runner died after publishing this one but before removing the drop entry.
    done_id = spool_format.new_build_id()
    write_tree(spool.drop / f".importing-{done_id}-done", {"PKGBUILD": trivial_pkgbuild("apbd-done")})
    importer.import_claimed(spool.drop / f".importing-{done_id}-done", done_id, "done")
    write_tree(spool.drop / f".importing-{done_id}-done", {"PKGBUILD": trivial_pkgbuild("apbd-done")})

    assert importer.recover() == [pending_id]
    assert importer.recover() == []
    assert sorted(spool.job_ids()) == sorted([pending_id, done_id])
    assert spool.read_status(pending_id)["pkgname"] == "apbd-pending"
    assert sorted(os.listdir(spool.drop)) == [spool_format.REJECTED_DIR]
