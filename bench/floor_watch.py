"""The pickup floor: the least a runner can do between a publishing rename and the build start.

Run as `python -m bench.floor_watch DIR`. It waits on inotify for folders
renamed into DIR and, for each, lays out a work folder and starts the same
builder command apbd-runner uses, writing its output to FOLDER/build.log, one
build at a time. No scanning, no locking, no status files.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path

from bench import direct

IN_MOVED_TO = 0x00000080
IN_ONLYDIR = 0x01000000
_EVENT = struct.Struct("iIII")


def watch(folder: Path):
    """Yield the names of entries renamed into folder, as inotify reports them."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, str(folder).encode(), IN_MOVED_TO | IN_ONLYDIR) < 0:
        raise OSError(ctypes.get_errno(), "inotify setup failed")
    while True:
        data = os.read(fd, 65536)
        offset = 0
        while offset < len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0").decode()
            offset += _EVENT.size + length
            if mask & IN_MOVED_TO:
                yield name


def main() -> None:
    folder = Path(sys.argv[1])
    direct.make_builder()
    print("ready", flush=True)
    for name in watch(folder):
        job = folder / name
        paths = direct.prepare_work(job, (job / "src" / "PKGBUILD").read_text())
        with open(job / "build.log", "ab") as out:
            direct.start(paths, out).wait()
        (job / "done").touch()


if __name__ == "__main__":
    main()
