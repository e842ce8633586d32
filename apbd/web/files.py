"""The downloadable files of a build: listing them, finding one by name, sending it.

Only three places of a job folder are ever served: the package files in
packages/, build.log, and the top level of src/ (the PKGBUILD and its
sources). status.json, request.json, markers and anything below work/ are
never listed, so they can never be downloaded. A name must be listed to be
served, and symlinks are neither listed nor opened.
"""

from __future__ import annotations

import email.utils
import errno
import mmap
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import bottle

from apbd import spool as spool_format
from apbd.errors import ApiError
from apbd.spool import Spool

# Bytes read from a downloaded file per send, into one buffer per download.
# waitress 3.0 requests from its file wrapper as many bytes as the socket's send
# buffer holds (SO_SNDBUF, 3.9 MB on a Linux 6.18 loopback). A new bytes object
# of that size per read made glibc keep about 8 MB in the malloc arena of each
# thread that sent, so ten 1 GB downloads grew apbd-web by 48 MB.
SEND_CHUNK_BYTES = 1024 * 1024
# Characters left unescaped in download URLs: those of pacman package file
# names, so "foo-1:2.0-1-x86_64.pkg.tar.zst" appears as the spec shows it.
URL_SAFE_CHARS = "+@:=,~"
_BAD_NAME_CHARS = ("/", "\\", "\0", "\n", "\r")


def iso_time(timestamp: float | None) -> str | None:
    """Format a Unix time as the API's ISO 8601 UTC form, e.g. 2024-01-20T10:00:00Z."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(float(timestamp), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in _BAD_NAME_CHARS)


def download_url(build_id: str, filename: str) -> str:
    return f"/build/{build_id}/download/{quote(filename, safe=URL_SAFE_CHARS)}"


def regular_files(folder: Path) -> list[tuple[str, os.stat_result]]:
    """Return (name, lstat) of the regular files directly in folder, sorted by name."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(".") or not is_safe_name(entry.name):
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            found.append((entry.name, st))
    found.sort()
    return found


def file_item(build_id: str, name: str, st: os.stat_result) -> dict:
    return {
        "filename": name,
        "size": st.st_size,
        "download_url": download_url(build_id, name),
        "created_at": iso_time(st.st_mtime),
    }


def list_files(spool: Spool, build_id: str) -> dict:
    """List packages, logs and sources of a build, each {filename, size, download_url, created_at}."""
    job = spool.job_dir(build_id)
    packages = [file_item(build_id, n, st) for n, st in regular_files(job / spool_format.PACKAGES_DIR)]
    logs = [file_item(build_id, n, st) for n, st in regular_files(job) if n == spool_format.LOG_FILE]
    sources = [file_item(build_id, n, st) for n, st in regular_files(job / spool_format.SOURCES_DIR)]
    return {"packages": packages, "logs": logs, "sources": sources}


def short_item(build_id: str, name: str, st: os.stat_result) -> dict:
    """Return the three fields status-api shows of one file: filename, size, download_url."""
    return {"filename": name, "size": st.st_size, "download_url": download_url(build_id, name)}


def list_packages_and_log(spool: Spool, build_id: str) -> tuple[list[dict], list[dict]]:
    """Return the packages and the logs of a build as short items, for status-api.

    The same files list_files finds, read with fewer system calls: status-api
    is the most polled route, and it shows neither sources nor created_at.
    """
    job = spool.job_dir(build_id)
    packages = [short_item(build_id, n, st) for n, st in regular_files(job / spool_format.PACKAGES_DIR)]
    try:
        st = os.lstat(job / spool_format.LOG_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return packages, []
    logs = [short_item(build_id, spool_format.LOG_FILE, st)] if stat.S_ISREG(st.st_mode) else []
    return packages, logs


def short_items(items: list[dict]) -> list[dict]:
    """Return items with the three fields status-api shows: filename, size, download_url."""
    return [{k: item[k] for k in ("filename", "size", "download_url")} for item in items]


def resolve_file(spool: Spool, build_id: str, filename: str) -> Path | None:
    """Return the path of a listed file of the build, or None when filename is not one."""
    if not spool.exists(build_id) or not is_safe_name(filename) or filename.startswith("."):
        return None
    job = spool.job_dir(build_id)
    candidates = [job / spool_format.PACKAGES_DIR / filename, job / spool_format.SOURCES_DIR / filename]
    if filename == spool_format.LOG_FILE:
        candidates.insert(1, job / spool_format.LOG_FILE)
    for path in candidates:
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            # A name longer than the filesystem allows names no file of the build.
            if e.errno == errno.ENAMETOOLONG:
                return None
            raise
        if stat.S_ISREG(st.st_mode):
            return path
    return None


def file_not_found(filename: str) -> ApiError:
    return ApiError(404, "File not found", f"The build has no downloadable file named '{filename}'")


def content_disposition(filename: str) -> str:
    """Return `attachment; filename="NAME"`, adding the RFC 6266 filename* form for other characters."""
    plain = filename.replace("\\", "\\\\").replace('"', '\\"')
    if filename.isascii() and filename.isprintable():
        return f'attachment; filename="{plain}"'
    fallback = filename.encode("ascii", "replace").decode().replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class DownloadFile:
    """An open file read into one reused buffer, for waitress's wsgi.file_wrapper.

    read() returns a memoryview of the buffer that stays valid only until the
    next read(). waitress sends each chunk before it reads the next one, and
    re-reads whatever part a partial send left, so no chunk outlives its read.
    The buffer is an anonymous mmap rather than a bytearray: it goes back to
    the kernel when the download ends, and a malloc'ed one stayed in the arena
    of the thread that first read, 1 MiB more per download. tell() and seek()
    move a position of this object; the fd's own offset is unused.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.position = 0
        self.buffer: memoryview | None = None

    def read(self, size: int = -1) -> memoryview:
        if self.buffer is None:
            self.buffer = memoryview(mmap.mmap(-1, SEND_CHUNK_BYTES))
        if size < 0 or size > SEND_CHUNK_BYTES:
            size = SEND_CHUNK_BYTES
        count = os.preadv(self.fd, [self.buffer[:size]], self.position)
        self.position += count
        return self.buffer[:count]

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self.position = offset
        elif whence == os.SEEK_CUR:
            self.position += offset
        elif whence == os.SEEK_END:
            self.position = os.fstat(self.fd).st_size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        return self.position

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        # waitress may still hold the last chunk here, so the mmap is dropped
        # rather than closed. It is unmapped once that chunk is released too.
        self.buffer = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def send_file(path: Path, filename: str) -> bottle.HTTPResponse:
    """Send the file at path as a streamed attachment, never following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise file_not_found(filename) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise file_not_found(filename)
    body = DownloadFile(fd)
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(st.st_size),
        "Content-Disposition": content_disposition(filename),
        "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
    }
    if bottle.request.method == "HEAD":
        body.close()
        body = ""
    return bottle.HTTPResponse(body, 200, headers=headers)


def read_output(spool: Spool, build_id: str, start_index: int, limit: int) -> tuple[list[str], int]:
    """Return lines of build.log from start_index on, at most limit, and the total line count."""
    from apbd.web.logfile import read_lines

    return read_lines(spool.job_dir(build_id) / spool_format.LOG_FILE, start_index, limit)
