"""Helpers for tests that submit PKGBUILDs and inspect the packages that come back."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import requests

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def tarball_of(folder: Path) -> bytes:
    """Return a gzipped tarball of folder's files with the PKGBUILD at its root, as the APB client sends."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def tarball_from_text(files: dict[str, str]) -> bytes:
    """Return a gzipped tarball holding the given file names and texts at its root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def submit_tarball(url: str, tarball: bytes, build_id: str | None = None,
                   build_timeout: str | None = None) -> requests.Response:
    """POST /build the way the farm (with build_id) or the APB client (without) does."""
    fields = {}
    if build_id is not None:
        fields["build_id"] = build_id
    if build_timeout is not None:
        fields["build_timeout"] = build_timeout
    files = {"build_tarball": ("build.tar.gz", tarball, "application/gzip")}
    return requests.post(f"{url}/build", data=fields, files=files, timeout=120)


def download(url: str, entry: dict, dest_dir: Path) -> Path:
    """Download one listed file by its download_url into dest_dir; return its path."""
    answer = requests.get(url + entry["download_url"], timeout=60)
    assert answer.status_code == 200, f"GET {entry['download_url']}: HTTP {answer.status_code} {answer.text[:200]}"
    path = Path(dest_dir) / entry["filename"]
    path.write_bytes(answer.content)
    return path


def bsdtar_list(package: Path) -> list[str]:
    """Return the member names of a package, as `bsdtar -tf` lists them."""
    result = subprocess.run(["bsdtar", "-tf", str(package)], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def pkginfo(package: Path) -> dict[str, list[str]]:
    """Return the .PKGINFO of a package (`bsdtar -xOf PKG .PKGINFO`) as key -> values."""
    result = subprocess.run(["bsdtar", "-xOf", str(package), ".PKGINFO"], capture_output=True, text=True,
                            check=True)
    fields: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("#") or " = " not in line:
            continue
        key, value = line.split(" = ", 1)
        fields.setdefault(key, []).append(value)
    return fields
