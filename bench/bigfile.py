"""Large files for the upload and download figures, written fast from one repeated random block."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

BLOCK = 16 * 1024 * 1024


def write_big_file(path: Path, size: int) -> Path:
    """Write size bytes of incompressible-looking data (one random 16 MiB block, repeated)."""
    block = os.urandom(min(BLOCK, size))
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[:left])
            left -= len(block)
    return path


class _Repeat(io.RawIOBase):
    """A readable stream of size bytes made of one random block, repeated."""

    def __init__(self, size: int):
        self.left = size
        self.block = os.urandom(min(BLOCK, max(size, 1)))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left, len(self.block))
        buffer[:n] = self.block[:n]
        self.left -= n
        return n


def write_big_tarball(path: Path, pkgbuild_text: str, payload_size: int) -> Path:
    """Write a .tar.gz holding PKGBUILD and a payload file of payload_size bytes.

    The gzip stream uses compression level 0 (stored blocks), so the tarball
    is as large as its contents and takes seconds, not minutes, to write.
    """
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:
        data = pkgbuild_text.encode()
        info = tarfile.TarInfo("PKGBUILD")
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("payload.bin")
        info.size, info.mode, info.mtime = payload_size, 0o644, int(time.time())
        tar.addfile(info, io.BufferedReader(_Repeat(payload_size), BLOCK))
    return path
