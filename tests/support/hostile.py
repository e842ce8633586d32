"""Builders of hostile uploads and checks that an upload left nothing behind.

The hardening tests (test_hostile_*.py, test_faults_*.py, test_fuzz_*.py)
share these. Archives are built with tarfile where tarfile can express the
attack, and from raw headers where it cannot (names that are not UTF-8,
members with no data). The gzip bomb is written to a file piece by piece, so
building it never holds more than one chunk in memory.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import uuid
import zlib
from pathlib import Path

import requests

# The smallest PKGBUILD that makepkg --printsrcinfo accepts and builds in about a second.
PKGBUILD = b"""pkgname=hostile-probe
pkgver=1.0
pkgrel=1
pkgdesc="Probe package of the hardening tests"
arch=(any)
license=(MIT)
package() {
  mkdir -p "$pkgdir/usr/share/hostile-probe"
  echo probe > "$pkgdir/usr/share/hostile-probe/probe"
}
"""


def pkgbuild_with(body: str, pkgname: str = "hostile-probe") -> bytes:
    """Return a PKGBUILD for an arch=(any) package whose build() runs body."""
    return (f"pkgname={pkgname}\npkgver=1.0\npkgrel=1\narch=(any)\nlicense=(MIT)\n"
            f"build() {{\n{body}\n}}\n"
            f"package() {{\n  mkdir -p \"$pkgdir/usr/share/{pkgname}\"\n"
            f"  echo ok > \"$pkgdir/usr/share/{pkgname}/ok\"\n}}\n").encode()


def regular(name: str | bytes, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name if isinstance(name, str) else name.decode("utf-8", "surrogateescape"))
    info.size = len(data)
    info.mode = mode
    info.type = tarfile.REGTYPE
    return info, data


def special(name: str, kind: bytes, linkname: str = "", mode: int = 0o644,
            devmajor: int = 0, devminor: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.devmajor = devmajor
    info.devminor = devminor
    return info, b""


def make_tarball(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.GNU_FORMAT,
                 encoding: str = "utf-8") -> bytes:
    """Return a gzipped tar holding members in order, exactly as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt, encoding=encoding,
                      errors="surrogateescape") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def good_tarball(extra: list[tuple[tarfile.TarInfo, bytes]] = (), pkgbuild: bytes = PKGBUILD) -> bytes:
    return make_tarball([regular("PKGBUILD", pkgbuild), *extra])


def many_files_tarball(count: int) -> bytes:
    """Return a gzipped tar of a PKGBUILD and count one-byte files, built from raw headers."""
    raw = io.BytesIO()
    info, data = regular("PKGBUILD", PKGBUILD)
    raw.write(info.tobuf(tarfile.GNU_FORMAT))
    raw.write(data + b"\0" * (-len(data) % 512))
    for i in range(count):
        info = tarfile.TarInfo(f"f{i:06d}")
        info.size = 1
        raw.write(info.tobuf(tarfile.GNU_FORMAT))
        raw.write(b"x" + b"\0" * 511)
    raw.write(b"\0" * 1024)
    return gzip.compress(raw.getvalue(), compresslevel=6)


def _zero_member(size: int) -> bytes:
    """Return one gzip member that expands to size zero bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    parts = []
    left = size
    while left:
        piece = chunk[:min(left, len(chunk))]
        parts.append(compressor.compress(piece))
        left -= len(piece)
    parts.append(compressor.flush())
    return b"".join(parts)


def write_gzip_bomb(path: Path, member_size: int, members: int, block: int = 64 << 20) -> int:
    """Write a tar.gz at path whose members of member_size zero bytes sum to members * member_size.

    The file is a chain of gzip members (which gzip readers join): headers and
    padding in small members, and the zeros as one precompressed member of
    `block` bytes repeated. Return the size it expands to.
    """
    assert member_size % block == 0 or member_size < block
    step = min(block, member_size)
    zeros = _zero_member(step)
    with open(path, "wb") as out:
        out.write(gzip.compress(regular("PKGBUILD", PKGBUILD)[0].tobuf(tarfile.GNU_FORMAT)
                                + PKGBUILD + b"\0" * (-len(PKGBUILD) % 512)))
        for i in range(members):
            info = tarfile.TarInfo(f"zeros-{i:04d}")
            info.size = member_size
            out.write(gzip.compress(info.tobuf(tarfile.GNU_FORMAT)))
            for _ in range(member_size // step):
                out.write(zeros)
        out.write(gzip.compress(b"\0" * 1024))
    return members * member_size


def new_id() -> str:
    return str(uuid.uuid4())


def submit(url: str, tarball: bytes | None, build_id: str | None = None, build_timeout: str | None = "7200",
           extra_fields: dict | None = None, timeout: float = 120, **kwargs) -> requests.Response:
    """POST a tarball to url/build as the farm does; return the response."""
    data = {}
    if build_id is not None:
        data["build_id"] = build_id
    if build_timeout is not None:
        data["build_timeout"] = build_timeout
    data.update(extra_fields or {})
    files = None
    if tarball is not None:
        files = {"build_tarball": ("build.tar.gz", tarball, "application/gzip")}
    return requests.post(f"{url}/build", data=data, files=files, timeout=timeout, **kwargs)


def error_shape(response: requests.Response) -> dict:
    """Assert the response is the API's JSON error object with a non-empty reason; return it."""
    assert response.headers.get("Content-Type", "").startswith("application/json"), \
        (response.status_code, response.headers.get("Content-Type"), response.text[:300])
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert "Traceback" not in response.text, response.text[:2000]
    return body


def spool_entries(spool_root: Path) -> dict[str, list[str]]:
    """Return the names in jobs/ and tmp/ of a spool."""
    root = Path(spool_root)
    return {name: sorted(os.listdir(root / name)) for name in ("jobs", "tmp") if (root / name).is_dir()}


def files_named(top: Path, marker: str) -> list[Path]:
    """Return every path under top whose name contains marker, without following symlinks."""
    found = []
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            if marker in name:
                found.append(Path(folder) / name)
    return found
