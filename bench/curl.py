"""curl as a separate load process: timed uploads and downloads."""

from __future__ import annotations

import subprocess

WRITE_OUT = "%{http_code} %{size_download} %{size_upload} %{time_total}"


def _run(argv: list[str], timeout: float) -> tuple[int, int, int, float]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with exit {out.returncode}: {out.stderr.strip()}")
    code, down, up, total = out.stdout.split()[-4:]
    return int(code), int(down), int(up), float(total)


def download(url: str, timeout: float = 600) -> tuple[int, float]:
    """GET url into /dev/null; return (bytes received, seconds); raise unless it returned 200."""
    code, down, _, total = _run(["curl", "-sS", "-o", "/dev/null", "-w", WRITE_OUT, url], timeout)
    if code != 200:
        raise RuntimeError(f"GET {url} returned HTTP {code}")
    return down, total


def upload(url: str, fields: dict[str, str], file_field: str, path, content_type: str,
           timeout: float = 600) -> tuple[int, bytes, float]:
    """POST a multipart form streaming path from disk; return (HTTP status, response body, seconds)."""
    argv = ["curl", "-sS", "-o", "-", "-w", "\n" + WRITE_OUT, "-H", "Expect:"]
    for name, value in fields.items():
        argv += ["-F", f"{name}={value}"]
    argv += ["-F", f"{file_field}=@{path};type={content_type}", url]
    out = subprocess.run(argv, capture_output=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"upload to {url} failed with exit {out.returncode}: {out.stderr.decode().strip()}")
    body, _, tail = out.stdout.rpartition(b"\n")
    code, _, _, total = tail.decode().split()
    return int(code), body, float(total)
