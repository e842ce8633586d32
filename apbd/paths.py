"""Where apbd finds the files it ships beside its code: www/ and apbd/data/."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def www_dir() -> Path:
    """Return the folder holding templates/ and static/.

    A checkout (and an editable install) uses www/ beside the apbd package; an
    installed copy uses PREFIX/share/apbd/www, where setup.py puts it.
    Raise FileNotFoundError naming every place tried when none exists.
    """
    candidates = [PACKAGE_DIR.parent / "www"]
    for prefix in (sys.prefix, sysconfig.get_config_var("prefix"), "/usr/local", "/usr"):
        if prefix:
            candidates.append(Path(prefix) / "share" / "apbd" / "www")
    for candidate in candidates:
        if (candidate / "templates").is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"apbd's www folder (templates and static files) was not found; looked in {tried}")


def data_file(name: str) -> Path:
    """Return the path of a file shipped in apbd/data/, such as makepkg.conf."""
    return PACKAGE_DIR / "data" / name
