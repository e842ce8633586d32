"""Property tests of the tarball checker: whatever the archive holds, nothing lands outside dest.

Hypothesis builds archives from members chosen to be dangerous: names with
`..`, absolute paths, backslashes, newlines, non-UTF-8 bytes; symlinks and
hard links with targets inside and outside; devices, FIFOs, setuid files;
duplicate names; files below symlinks. extract_tarball must either succeed
with a safe tree or raise ApiError 400/413, and leave nothing behind on error.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apbd.errors import ApiError
from apbd.tarball import copy_package_folder, extract_tarball

MAX_FILE = 4096
MAX_TOTAL = 16384
MAX_MEMBERS = 40

name_parts = st.sampled_from(["PKGBUILD", "a", "b", "src", "..", ".", "", "x\ny", "back\\slash",
                              "pct%41", "\udcff\udcfe", "é", "dir", "link"])
names = st.one_of(
    st.lists(name_parts, min_size=1, max_size=4).map("/".join),
    st.sampled_from(["/etc/apbd-fuzz-escape", "/tmp/apbd-fuzz-escape", "../apbd-fuzz-escape",
                     "a/../../apbd-fuzz-escape", "./PKGBUILD", "top/PKGBUILD"]),
)
link_targets = st.sampled_from(["PKGBUILD", "a", "../outside", "/etc/passwd", "/tmp", "..",
                                "a/../..", "dir/../PKGBUILD", ".", "", "../" * 8 + "tmp",
                                "top/PKGBUILD"])
kinds = st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE,
                         tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                         tarfile.FIFOTYPE])
modes = st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o000, 0o777])
member = st.tuples(names, kinds, link_targets, modes, st.integers(min_value=0, max_value=MAX_FILE + 10))
benign = st.one_of(
    st.tuples(st.sampled_from(["a", "b", "src/c", "dir/d", "top/e"]), st.just(tarfile.REGTYPE), st.just(""),
              st.sampled_from([0o644, 0o755]), st.integers(min_value=0, max_value=100)),
    st.tuples(st.sampled_from(["src", "dir"]), st.just(tarfile.DIRTYPE), st.just(""), st.just(0o755), st.just(0)),
)
hostile = st.one_of(
    st.tuples(names, kinds, link_targets, modes, st.integers(min_value=0, max_value=MAX_FILE + 10)),
    st.tuples(st.sampled_from(["l1", "src/l2", "PKGBUILD", "dir/l3"]), st.sampled_from([tarfile.SYMTYPE, tarfile.LNKTYPE]),
              link_targets, st.sampled_from([0o777, 0o644]), st.just(0)),
    st.tuples(st.sampled_from(["l1/f", "src/l2/g", "dir/l3/h"]), st.just(tarfile.REGTYPE), st.just(""),
              st.just(0o644), st.just(3)),
)


@st.composite
def archives(draw):
    """A mostly benign package with zero to two hostile members at random places."""
    members = draw(st.lists(benign, max_size=5, unique_by=lambda m: m[0]))
    if draw(st.integers(min_value=0, max_value=9)):
        members.insert(0, ("PKGBUILD", tarfile.REGTYPE, "", 0o644, 10))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        members.insert(draw(st.integers(min_value=0, max_value=len(members))), draw(hostile))
    return members


def build_archive(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as archive:
        for name, kind, target, mode, size in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            if kind == tarfile.REGTYPE:
                info.size = size
                archive.addfile(info, io.BytesIO(b"p" * size))
            else:
                info.linkname = target
                archive.addfile(info)
    return buffer.getvalue()


def assert_tree_safe(box: Path, dest: Path) -> None:
    """Check that box holds only the tarball and dest, and dest only safe entries."""
    assert sorted(os.listdir(box)) == sorted(["upload.tar.gz"] + (["dest"] if dest.exists() else []))
    if not dest.exists():
        return
    real_dest = os.path.realpath(dest)
    for folder, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(folder) / name
            st_ = path.lstat()
            assert not st_.st_mode & (stat.S_ISUID | stat.S_ISGID), path
            assert stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode) or stat.S_ISLNK(st_.st_mode), path
            if stat.S_ISLNK(st_.st_mode):
                resolved = os.path.realpath(path)
                assert resolved == real_dest or resolved.startswith(real_dest + os.sep), (path, os.readlink(path))
            if stat.S_ISREG(st_.st_mode):
                assert st_.st_size <= MAX_FILE, path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.one_of(archives(), st.lists(member, max_size=8)))
def test_extract_never_escapes(tmp_path_factory, members):
    box = tmp_path_factory.mktemp("box")
    upload = box / "upload.tar.gz"
    upload.write_bytes(build_archive(members))
    dest = box / "dest"
    escapes_before = set(Path("/tmp").glob("apbd-fuzz-escape*")) | set(Path("/etc").glob("apbd-fuzz-escape*"))

    try:
        written = extract_tarball(upload, dest, max_file_size=MAX_FILE, max_total_size=MAX_TOTAL,
                                  max_members=MAX_MEMBERS)
    except ApiError as e:
        assert e.status in (400, 413), e
        assert e.detail
        assert not dest.exists() or not any(dest.iterdir()), "a refused tarball left files in dest"
    else:
        pkgbuild = dest / "PKGBUILD"
        assert stat.S_ISREG(pkgbuild.lstat().st_mode), "accepted without a regular PKGBUILD at the root"
        assert "PKGBUILD" in written

    assert_tree_safe(box, dest)
    escapes_after = set(Path("/tmp").glob("apbd-fuzz-escape*")) | set(Path("/etc").glob("apbd-fuzz-escape*"))
    assert escapes_after == escapes_before, "a member was written outside dest"
    escaped_neighbours = [p for p in box.parent.iterdir() if "apbd-fuzz-escape" in p.name]
    assert escaped_neighbours == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=600), keep_gzip_magic=st.booleans())
def test_extract_random_bytes_rejected(tmp_path_factory, data, keep_gzip_magic):
    box = tmp_path_factory.mktemp("bytes")
    upload = box / "upload.tar.gz"
    upload.write_bytes((b"\x1f\x8b\x08\x00" if keep_gzip_magic else b"") + data)
    dest = box / "dest"
    try:
        extract_tarball(upload, dest, max_file_size=MAX_FILE, max_total_size=MAX_TOTAL, max_members=MAX_MEMBERS)
    except ApiError as e:
        assert e.status == 400, e
    else:
        assert (dest / "PKGBUILD").is_file()
    assert_tree_safe(box, dest)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(st.tuples(st.sampled_from(["a", "b", "PKGBUILD", "sub/c", "sub"]),
                                  st.sampled_from(["file", "dir", "inlink", "outlink", "fifo", "setuid"])),
                        min_size=1, max_size=6))
def test_copy_folder_never_escapes(tmp_path_factory, members):
    box = tmp_path_factory.mktemp("folder")
    src = box / "drop"
    src.mkdir()
    outside = box / "outside-secret"
    outside.write_text("secret")
    for name, kind in members:
        path = src / name
        if path.exists() or path.is_symlink():
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue
        if kind == "file":
            path.write_text("pkgname=x\n")
        elif kind == "dir":
            path.mkdir()
        elif kind == "inlink":
            path.symlink_to("PKGBUILD")
        elif kind == "outlink":
            path.symlink_to(outside)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "setuid":
            path.write_text("x")
            path.chmod(0o4755)
    dest = box / "dest"
    try:
        copy_package_folder(src, dest, max_file_size=MAX_FILE, max_total_size=MAX_TOTAL, max_members=MAX_MEMBERS)
    except ApiError as e:
        assert e.status in (400, 413), e
        assert not dest.exists() or not any(dest.iterdir())
    else:
        assert stat.S_ISREG((dest / "PKGBUILD").lstat().st_mode)
        for folder, dirs, files in os.walk(dest):
            for name in dirs + files:
                path = Path(folder) / name
                mode = path.lstat().st_mode
                assert not stat.S_ISFIFO(mode), path
                assert not mode & stat.S_ISUID, path
                if stat.S_ISLNK(mode):
                    assert os.path.realpath(path).startswith(os.path.realpath(dest) + os.sep), path
    assert outside.read_text() == "secret"
