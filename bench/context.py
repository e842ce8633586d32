"""The context every figure runs in: the smoke switch, a temporary folder, and a progress log."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from apbd.spool import Spool


@dataclass
class Context:
    smoke: bool
    root: Path
    keep: bool = False
    started: float = field(default_factory=time.monotonic)

    def folder(self, name: str) -> Path:
        """Return a new empty folder for one figure, readable by the build user."""
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.chmod(path, 0o755)
        return path

    def spool(self, folder: Path) -> Spool:
        spool = Spool(folder / "spool")
        spool.create()
        return spool

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", file=sys.stderr, flush=True)

    def pick(self, full, smoke):
        """Return the full-run value, or the smoke value under --smoke."""
        return smoke if self.smoke else full


def make_root(parent: str | None) -> Path:
    """Create the run's temporary folder, searchable by the unprivileged build user."""
    root = Path(tempfile.mkdtemp(prefix="apbd-bench-", dir=parent))
    os.chmod(root, 0o755)
    return root
