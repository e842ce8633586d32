"""The spool's atomic file writes: stat() alone distinguishes every version of a file."""

from __future__ import annotations

import os

from apbd.spool import write_file_atomic, write_json_atomic


def test_rewrites_get_later_mtimes(tmp_path):
    """Same-size rewrites in a tight loop: (inode, size, mtime) never repeats, and mtime only grows."""
    path = tmp_path / "status.json"
    keys = []
    for _ in range(500):
        write_file_atomic(path, b'{"status": "queued"}\n')
        st = os.stat(path)
        keys.append((st.st_ino, st.st_size, st.st_mtime_ns))
    mtimes = [key[2] for key in keys]
    assert all(later > earlier for earlier, later in zip(mtimes, mtimes[1:]))
    assert len(set(keys)) == len(keys)


def test_rewrite_keeps_content_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "status.json"
    write_json_atomic(path, {"status": "queued"})
    write_json_atomic(path, {"status": "building"})
    assert path.read_text() == '{\n "status": "building"\n}\n'
    assert os.listdir(tmp_path) == ["status.json"]
