"""Unpack an uploaded package tarball, or copy a dropped package folder, safely.

Every member is checked here before anything is written: Python's tarfile
extraction filters had bypasses (CVE-2025-4517 and relatives in 2025), so they
are not relied on. What passes:

- regular files, directories, and symlinks or hard links whose target stays
  inside the package;
- names that are valid UTF-8 without newline, carriage return, backslash or NUL,
  that are relative and never contain a `..` component.

Everything else (devices, FIFOs, sockets, setuid/setgid files, links that leave
the package, a PKGBUILD that is a link) is rejected with ApiError 400, and size
or member-count limits with 413. A PKGBUILD must be a regular file at the root;
one top-level folder wrapping everything, as `tar czf x.tar.gz pkgdir/` makes,
is stripped. Written files get mode 0644, or 0755 when any execute bit was set.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from apbd.errors import ApiError

PKGBUILD = "PKGBUILD"
_CHUNK = 1024 * 1024
# A "%" is rejected too: clients such as the APB farm put file names into
# download URLs unquoted, so "a%20b" would come back as "a b" and not be found.
_FORBIDDEN_CHARS = ("\n", "\r", "\\", "\0", "%")


@dataclass
class Entry:
    """One checked member of a package: what to create at `name` below the destination."""

    kind: str  # "file", "dir", "symlink" or "hardlink"
    name: str  # relative POSIX path, top folder already stripped
    size: int = 0
    executable: bool = False
    target: str = ""  # symlink text, or the entry name a hard link copies
    member: tarfile.TarInfo | None = None
    source: Path | None = None


def invalid(detail: str) -> ApiError:
    return ApiError(400, "Invalid tarball", detail)


# Checking names and members


def split_name(raw: str) -> list[str]:
    """Return the path components of a member name; reject names that could escape."""
    if any(c in raw for c in _FORBIDDEN_CHARS):
        raise invalid(f"Member name {raw!r} contains a newline, backslash, NUL or '%' character; "
                      "rename the file")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"Member name {raw!r} is not valid UTF-8") from None
    if raw.startswith("/"):
        raise invalid(f"Member {raw!r} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise invalid(f"Member {raw!r} contains a '..' path component")
    return parts


def entry_from_member(member: tarfile.TarInfo) -> Entry | None:
    """Turn one tar member into an Entry, or None for the archive's root folder."""
    parts = split_name(member.name)
    if not parts:
        if member.isdir():
            return None
        raise invalid(f"Member {member.name!r} has an empty name")
    name = "/".join(parts)
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise invalid(f"Member {name!r} has the setuid or setgid bit set")

    if member.isreg():
        return Entry("file", name, member.size, bool(member.mode & 0o111), member=member)
    if member.isdir():
        return Entry("dir", name)
    if member.issym():
        return Entry("symlink", name, target=member.linkname)
    if member.islnk():
        try:
            target = split_name(member.linkname)
        except ApiError as e:
            # The checks name the target as "Member ...", but the member at fault is the link.
            reason = e.detail.replace("Member", "its target", 1)
            raise invalid(f"Hard link {name!r} points outside the package folder: {reason}") from e
        return Entry("hardlink", name, target="/".join(target))
    if member.ischr() or member.isblk():
        raise invalid(f"Member {name!r} is a device file")
    if member.isfifo():
        raise invalid(f"Member {name!r} is a FIFO")
    raise invalid(f"Member {name!r} has an unsupported type {member.type!r}")


def strip_top_folder(entries: list[Entry]) -> list[Entry]:
    """Drop one folder that wraps every entry, unless a PKGBUILD already sits at the root."""
    if not entries or any(e.name == PKGBUILD for e in entries):
        return entries
    tops = {e.name.split("/", 1)[0] for e in entries}
    if len(tops) != 1:
        return entries
    top = tops.pop()
    if any(e.name == top and e.kind != "dir" for e in entries):
        return entries
    prefix = top + "/"
    stripped = []
    for e in entries:
        if e.name == top:
            continue
        e.name = e.name[len(prefix):]
        if e.kind == "hardlink" and e.target.startswith(prefix):
            e.target = e.target[len(prefix):]
        stripped.append(e)
    return stripped


def check_plan(entries: list[Entry], *, max_file_size: int, max_total_size: int, what: str) -> None:
    """Check the whole package before anything is written: sizes, links, duplicates, PKGBUILD."""
    by_name: dict[str, Entry] = {}
    total = 0
    for e in entries:
        if e.name in by_name:
            raise invalid(f"{what} contains {e.name!r} twice")
        by_name[e.name] = e
        if e.kind == "hardlink":
            linked = by_name.get(e.target)
            if linked is None or linked.kind != "file":
                raise invalid(f"Hard link {e.name!r} points to {e.target!r}, which is not an earlier file of the package")
            e.size, e.executable = linked.size, linked.executable
        if e.size > max_file_size:
            raise ApiError(413, "File too large", f"{e.name} exceeds {max_file_size} bytes")
        total += e.size
        if total > max_total_size:
            raise ApiError(413, "Tarball too large",
                           f"{what} expands to more than the extracted size limit of {max_total_size} bytes")

    symlinks = {e.name for e in entries if e.kind == "symlink"}
    for e in entries:
        if e.kind == "symlink":
            check_symlink_target(e)
        parents = e.name.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            parent = "/".join(parents[:i])
            if parent in symlinks:
                raise invalid(f"Member {e.name!r} lies below the symlink {parent!r}")
            if parent in by_name and by_name[parent].kind != "dir":
                raise invalid(f"Member {e.name!r} lies below {parent!r}, which is not a folder")

    pkgbuild = by_name.get(PKGBUILD)
    if pkgbuild is None:
        raise invalid(f"{what} must contain a PKGBUILD file at its root (or inside one top-level folder)")
    if pkgbuild.kind != "file":
        raise invalid(f"PKGBUILD must be a regular file, not a {pkgbuild.kind}")


def check_symlink_target(entry: Entry) -> None:
    target = entry.target
    if not target or target.startswith("/") or any(c in target for c in _FORBIDDEN_CHARS):
        raise invalid(f"Symlink {entry.name!r} points to {target!r}, outside the package")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(entry.name), target))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise invalid(f"Symlink {entry.name!r} points to {target!r}, outside the package")


# Writing


def write_entries(entries: list[Entry], dest: Path, open_source) -> list[str]:
    """Create the checked entries below dest; symlinks last, so nothing is written through one."""
    written = []
    for e in entries:
        path = dest / e.name
        if e.kind == "dir":
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(path, 0o755)
            continue
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if e.kind == "file":
            with open_source(e) as src:
                copy_limited(src, path, e)
            written.append(e.name)
        elif e.kind == "hardlink":
            with open(dest / e.target, "rb") as src:
                copy_limited(src, path, e)
            written.append(e.name)
    for e in entries:
        if e.kind == "symlink":
            os.symlink(e.target, dest / e.name)
            written.append(e.name)
    return written


def copy_limited(src, path: Path, entry: Entry) -> None:
    """Copy exactly entry.size bytes from src into a new file at path."""
    mode = 0o755 if entry.executable else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    copied = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            chunk = src.read(min(_CHUNK, entry.size - copied + 1))
            if not chunk:
                break
            copied += len(chunk)
            if copied > entry.size:
                raise invalid(f"{entry.name} contains more data than its tar header states")
            out.write(chunk)
    if copied != entry.size:
        raise invalid(f"{entry.name} is truncated: {copied} of {entry.size} bytes")
    os.chmod(path, mode)


def prepare_dest(dest: Path) -> None:
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"destination {dest} is not empty")


# Tarballs


def read_members(tar: tarfile.TarFile, max_members: int) -> list[tarfile.TarInfo]:
    """Read every member header, stopping as soon as there are too many."""
    members = []
    while True:
        member = tar.next()
        if member is None:
            return members
        members.append(member)
        if len(members) > max_members:
            raise ApiError(413, "Tarball too large", f"Tarball has more than the limit of {max_members} members")


def drain(fileobj) -> None:
    """Read the gzip stream to its end, so that truncation and CRC errors show now."""
    while fileobj.read(_CHUNK):
        pass


def extract_tarball(path: Path, dest: Path, *, max_file_size: int, max_total_size: int,
                    max_members: int) -> list[str]:
    """Unpack the gzipped tarball at path into dest (created, must be empty); return the names written.

    Raise ApiError 400 for a tarball that is not valid or not safe, and 413
    when a limit is exceeded. On any error dest is removed again.
    """
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise invalid("The upload is not a gzip-compressed tar archive (.tar.gz)")

    prepare_dest(dest)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = read_members(tar, max_members)
            drain(tar.fileobj)
            entries = [e for e in map(entry_from_member, members) if e is not None]
            entries = strip_top_folder(entries)
            check_plan(entries, max_file_size=max_file_size, max_total_size=max_total_size, what="Tarball")
            return write_entries(entries, dest, lambda e: tar.extractfile(e.member))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise invalid(f"The tarball is damaged or truncated: {e}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


# Folders


def entries_from_folder(src: Path) -> list[Entry]:
    """List a dropped package folder as entries, with the same checks as tar members."""
    entries = []
    for root, dirs, files in os.walk(src, followlinks=False):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            full = Path(root) / name
            rel = full.relative_to(src).as_posix()
            split_name(rel)
            st = full.lstat()
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                raise invalid(f"{rel!r} has the setuid or setgid bit set")
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry("symlink", rel, target=os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry("dir", rel))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry("file", rel, st.st_size, bool(st.st_mode & 0o111), source=full))
            else:
                raise invalid(f"{rel!r} is not a regular file, folder or symlink")
    return entries


def copy_package_folder(src: Path, dest: Path, *, max_file_size: int, max_total_size: int,
                        max_members: int) -> list[str]:
    """Copy a dropped package folder into dest with the checks of extract_tarball."""
    entries = entries_from_folder(src)
    if len(entries) > max_members:
        raise ApiError(413, "Folder too large", f"{src} has more than the limit of {max_members} entries")
    entries = strip_top_folder(entries)
    check_plan(entries, max_file_size=max_file_size, max_total_size=max_total_size, what="Package folder")

    prepare_dest(dest)
    try:
        return write_entries(entries, dest, lambda e: open(e.source, "rb", opener=_open_nofollow))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _open_nofollow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW)
