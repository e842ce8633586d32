"""Let the unprivileged build user reach a test's tmp folders.

pytest makes /tmp/pytest-of-USER and the folders below it mode 0700, but
bwrap runs as the build user and can bind only folders that user may enter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


def open_for_build_user(path: Path) -> Path:
    """Add search permission for others on path and every folder above it; return path."""
    path = Path(path).absolute()
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            os.chmod(folder, (mode & 0o7777) | 0o011)
    return path


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write files (relative name -> text) under root, readable by everybody; return root."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        os.chmod(target, 0o644)
    return root


@pytest.fixture
def build_tmp():
    """A tmp folder the build user can enter, removed after the test.

    Not under pytest's tmp_path: every pytest run resets /tmp/pytest-of-USER to
    mode 0700, so a concurrent run would lock the build user out mid-test.
    """
    path = Path(tempfile.mkdtemp(prefix="apbd-test-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)
