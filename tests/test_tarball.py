"""Checks of apbd.tarball on real archives, including hostile ones."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from apbd.errors import ApiError
from apbd.tarball import copy_package_folder, extract_tarball

PKGBUILD_TEXT = b"pkgname=demo\npkgver=1.0\npkgrel=1\narch=(any)\n"
LIMITS = dict(max_file_size=1024 * 1024, max_total_size=4 * 1024 * 1024, max_members=100)


def make_tar(path: Path, members: list[tuple], fmt=tarfile.PAX_FORMAT) -> Path:
    """Write a .tar.gz from (name, kind, data_or_target, mode) tuples."""
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for name, kind, payload, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = payload
            tar.addfile(info)
    return path


def extract(tmp_path: Path, members: list[tuple], **limits) -> list[str]:
    archive = make_tar(tmp_path / "in.tar.gz", members)
    return extract_tarball(archive, tmp_path / "out", **{**LIMITS, **limits})


def rejected(tmp_path: Path, members: list[tuple], **limits) -> ApiError:
    with pytest.raises(ApiError) as info:
        extract(tmp_path, members, **limits)
    assert not (tmp_path / "out").exists(), "partial extraction left behind"
    return info.value


def test_plain_tarball_extracts(tmp_path):
    names = extract(tmp_path, [("PKGBUILD", "file", PKGBUILD_TEXT, 0o600),
                               ("run.sh", "file", b"#!/bin/sh\n", 0o700),
                               ("sub", "dir", None, 0o700),
                               ("sub/data", "file", b"x", 0o666)])
    out = tmp_path / "out"
    assert sorted(names) == ["PKGBUILD", "run.sh", "sub/data"]
    assert (out / "PKGBUILD").read_bytes() == PKGBUILD_TEXT
    assert stat.S_IMODE((out / "PKGBUILD").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "sub/data").stat().st_mode) == 0o644


def test_top_folder_is_stripped(tmp_path):
    src = tmp_path / "pkgdir"
    src.mkdir()
    (src / "PKGBUILD").write_bytes(PKGBUILD_TEXT)
    (src / "patch.diff").write_text("diff\n")
    subprocess.run(["tar", "czf", "x.tar.gz", "pkgdir/"], cwd=tmp_path, check=True)
    names = extract_tarball(tmp_path / "x.tar.gz", tmp_path / "out", **LIMITS)
    assert sorted(names) == ["PKGBUILD", "patch.diff"]
    assert (tmp_path / "out/PKGBUILD").is_file()


def test_dot_slash_names_work(tmp_path):
    names = extract(tmp_path, [(".", "dir", None, 0o755), ("./PKGBUILD", "file", PKGBUILD_TEXT, 0o644)])
    assert names == ["PKGBUILD"]


def test_inside_symlink_is_kept(tmp_path):
    names = extract(tmp_path, [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644),
                               ("a", "file", b"a", 0o644), ("b", "sym", "a", 0o777)])
    assert "b" in names
    assert os.readlink(tmp_path / "out/b") == "a"


def test_hardlink_becomes_copy(tmp_path):
    extract(tmp_path, [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644),
                       ("a", "file", b"abc", 0o644), ("b", "hard", "a", 0o644)])
    b = tmp_path / "out/b"
    assert b.read_bytes() == b"abc"
    assert b.stat().st_nlink == 1


@pytest.mark.parametrize("members, words", [
    ([("../evil", "file", b"x", 0o644)], "'..'"),
    ([("a/../../evil", "file", b"x", 0o644)], "'..'"),
    ([("/etc/evil", "file", b"x", 0o644)], "absolute"),
    ([("link", "sym", "/etc/passwd", 0o777)], "outside"),
    ([("link", "sym", "../../etc", 0o777)], "outside"),
    ([("d", "dir", None, 0o755), ("d/link", "sym", "../..", 0o777)], "outside"),
    ([("hl", "hard", "/etc/passwd", 0o644)], "absolute"),
    ([("hl", "hard", "missing", 0o644)], "not an earlier file"),
    ([("dev", "chr", None, 0o644)], "device"),
    ([("pipe", "fifo", None, 0o644)], "FIFO"),
    ([("suid", "file", b"x", 0o4755)], "setuid"),
    ([("sgid", "file", b"x", 0o2755)], "setgid"),
    ([("bad\nname", "file", b"x", 0o644)], "newline"),
    ([("bad\\name", "file", b"x", 0o644)], "backslash"),
    ([("a", "file", b"1", 0o644), ("a", "file", b"2", 0o644)], "twice"),
    ([("d", "sym", ".", 0o777), ("d/x", "file", b"x", 0o644)], "below the symlink"),
])
def test_hostile_member_rejected(tmp_path, members, words):
    error = rejected(tmp_path, [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644)] + members)
    assert error.status == 400
    assert words in error.detail


def test_pkgbuild_symlink_rejected(tmp_path):
    error = rejected(tmp_path, [("real", "file", PKGBUILD_TEXT, 0o644), ("PKGBUILD", "sym", "real", 0o777)])
    assert error.status == 400
    assert "PKGBUILD must be a regular file" in error.detail


def test_pkgbuild_hardlink_rejected(tmp_path):
    error = rejected(tmp_path, [("real", "file", PKGBUILD_TEXT, 0o644), ("PKGBUILD", "hard", "real", 0o644)])
    assert "PKGBUILD must be a regular file" in error.detail


def test_missing_pkgbuild_rejected(tmp_path):
    error = rejected(tmp_path, [("README", "file", b"x", 0o644)])
    assert error.status == 400
    assert "must contain a PKGBUILD" in error.detail


def test_pkgbuild_deeper_than_one_folder_rejected(tmp_path):
    error = rejected(tmp_path, [("a/b/PKGBUILD", "file", PKGBUILD_TEXT, 0o644)])
    assert "must contain a PKGBUILD" in error.detail


def test_non_utf8_name_rejected(tmp_path):
    archive = tmp_path / "in.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        info = tarfile.TarInfo("PKGBUILD")
        info.size = len(PKGBUILD_TEXT)
        tar.addfile(info, io.BytesIO(PKGBUILD_TEXT))
        info = tarfile.TarInfo("caf\xe9")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ApiError) as error:
        extract_tarball(archive, tmp_path / "out", **LIMITS)
    assert "UTF-8" in error.value.detail


def test_not_gzip_rejected(tmp_path):
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo("PKGBUILD")
        info.size = len(PKGBUILD_TEXT)
        tar.addfile(info, io.BytesIO(PKGBUILD_TEXT))
    with pytest.raises(ApiError) as error:
        extract_tarball(plain, tmp_path / "out", **LIMITS)
    assert error.value.status == 400
    assert "gzip" in error.value.detail


def test_truncated_archive_rejected(tmp_path):
    archive = make_tar(tmp_path / "in.tar.gz", [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644),
                                                ("big", "file", os.urandom(200_000), 0o644)])
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ApiError) as error:
        extract_tarball(archive, tmp_path / "out", **LIMITS)
    assert error.value.status == 400
    assert "truncated" in error.value.detail
    assert not (tmp_path / "out").exists()


def test_too_many_members_is_413(tmp_path):
    members = [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644)] + [(f"f{i}", "file", b"", 0o644) for i in range(10)]
    error = rejected(tmp_path, members, max_members=5)
    assert error.status == 413
    assert "5 members" in error.detail


def test_single_file_too_large_is_413(tmp_path):
    error = rejected(tmp_path, [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644), ("big", "file", b"x" * 2000, 0o644)],
                     max_file_size=1000)
    assert error.status == 413
    assert error.error == "File too large"
    assert "big exceeds 1000 bytes" in error.detail


def test_extracted_size_limit_is_413(tmp_path):
    members = [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644)] + [(f"f{i}", "file", b"x" * 900, 0o644) for i in range(5)]
    error = rejected(tmp_path, members, max_file_size=1000, max_total_size=3000)
    assert error.status == 413
    assert "extracted size limit of 3000 bytes" in error.detail


def test_hardlinks_count_toward_size(tmp_path):
    members = [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644), ("a", "file", b"x" * 900, 0o644)]
    members += [(f"l{i}", "hard", "a", 0o644) for i in range(5)]
    error = rejected(tmp_path, members, max_file_size=1000, max_total_size=3000)
    assert error.status == 413


def test_copy_package_folder(tmp_path):
    src = tmp_path / "drop" / "mypkg"
    src.mkdir(parents=True)
    (src / "PKGBUILD").write_bytes(PKGBUILD_TEXT)
    (src / "tool").write_text("#!/bin/sh\n")
    (src / "tool").chmod(0o700)
    (src / "alias").symlink_to("tool")
    names = copy_package_folder(tmp_path / "drop", tmp_path / "out", **LIMITS)
    assert sorted(names) == ["PKGBUILD", "alias", "tool"]
    assert stat.S_IMODE((tmp_path / "out/tool").stat().st_mode) == 0o755
    assert (tmp_path / "out/alias").is_symlink()


def test_copy_package_folder_rejects_link_out(tmp_path):
    src = tmp_path / "drop"
    src.mkdir()
    (src / "PKGBUILD").write_bytes(PKGBUILD_TEXT)
    (src / "secret").symlink_to("/etc/shadow")
    with pytest.raises(ApiError) as error:
        copy_package_folder(src, tmp_path / "out", **LIMITS)
    assert "outside" in error.value.detail
    assert not (tmp_path / "out").exists()


def test_copy_package_folder_rejects_fifo(tmp_path):
    src = tmp_path / "drop"
    src.mkdir()
    (src / "PKGBUILD").write_bytes(PKGBUILD_TEXT)
    os.mkfifo(src / "pipe")
    with pytest.raises(ApiError) as error:
        copy_package_folder(src, tmp_path / "out", **LIMITS)
    assert "not a regular file" in error.value.detail


# The single streaming pass over the gzip data


def plain_tar_bytes(members: list[tuple]) -> bytes:
    """Return an uncompressed tar archive of (name, data) regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_wrong_crc_rejected(tmp_path):
    archive = make_tar(tmp_path / "in.tar.gz", [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644)])
    data = bytearray(archive.read_bytes())
    data[-8] ^= 0xFF  # the first byte of the gzip trailer's CRC-32
    archive.write_bytes(bytes(data))
    with pytest.raises(ApiError) as error:
        extract_tarball(archive, tmp_path / "out", **LIMITS)
    assert error.value.status == 400
    assert "damaged" in error.value.detail
    assert not (tmp_path / "out").exists()


def test_gzip_cut_after_tar_end_rejected(tmp_path):
    archive = make_tar(tmp_path / "in.tar.gz", [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644)])
    archive.write_bytes(archive.read_bytes()[:-4])
    with pytest.raises(ApiError) as error:
        extract_tarball(archive, tmp_path / "out", **LIMITS)
    assert "truncated" in error.value.detail
    assert not (tmp_path / "out").exists()


def test_garbage_after_gzip_rejected(tmp_path):
    archive = make_tar(tmp_path / "in.tar.gz", [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644)])
    archive.write_bytes(archive.read_bytes() + b"not gzip")
    with pytest.raises(ApiError) as error:
        extract_tarball(archive, tmp_path / "out", **LIMITS)
    assert error.value.status == 400
    assert not (tmp_path / "out").exists()


def test_concatenated_gzip_members_extract(tmp_path):
    tar = plain_tar_bytes([("PKGBUILD", PKGBUILD_TEXT), ("big", os.urandom(300_000))])
    half = len(tar) // 2
    archive = tmp_path / "in.tar.gz"
    archive.write_bytes(gzip.compress(tar[:half]) + gzip.compress(tar[half:]) + b"\0" * 10)
    names = extract_tarball(archive, tmp_path / "out", **LIMITS)
    assert sorted(names) == ["PKGBUILD", "big"]
    assert (tmp_path / "out/big").read_bytes() == tar_member(tar, "big")


def tar_member(tar: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return archive.extractfile(name).read()


def test_large_member_extracts_exactly(tmp_path):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    archive = make_tar(tmp_path / "in.tar.gz", [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644),
                                                ("big", "file", payload, 0o644)])
    extract_tarball(archive, tmp_path / "out", **{**LIMITS, "max_file_size": len(payload)})
    assert (tmp_path / "out/big").read_bytes() == payload


def test_file_over_earlier_folder_rejected(tmp_path):
    error = rejected(tmp_path, [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644),
                                ("a/b", "file", b"x", 0o644), ("a", "file", b"y", 0o644)])
    assert error.status == 400
    assert "'a'" in error.detail


def test_symlink_declared_after_its_folder_rejected(tmp_path):
    error = rejected(tmp_path, [("PKGBUILD", "file", PKGBUILD_TEXT, 0o644),
                                ("d/x", "file", b"x", 0o644), ("d", "sym", ".", 0o777)])
    assert error.status == 400


def test_top_folder_with_symlink_is_stripped(tmp_path):
    names = extract(tmp_path, [("top", "dir", None, 0o755), ("top/PKGBUILD", "file", PKGBUILD_TEXT, 0o644),
                               ("top/sub/a", "file", b"a", 0o644), ("top/b", "sym", "sub/a", 0o777)])
    out = tmp_path / "out"
    assert names == ["PKGBUILD", "sub/a", "b"]
    assert os.readlink(out / "b") == "sub/a"
    assert (out / "b").read_bytes() == b"a"
    assert not (tmp_path / "out.unpacked").exists()
