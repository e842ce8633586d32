"""`apbd submit`: send a package folder to a server, follow the build, fetch its files.

It talks to the server as the APB client does when it talks to a server
directly. It sends one multipart POST /build with the file part
`build_tarball` (named build.tar.gz, type application/gzip) and no build_id.
Then it follows the build's live output, and downloads every listed package
and log into OUTPUT/ARCH/FILENAME.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import stat
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

TERMINAL_STATES = ("completed", "failed", "cancelled")

# Exit codes of `apbd submit`.
EXIT_COMPLETED = 0
EXIT_BUILD_FAILED = 1
EXIT_USAGE = 2
EXIT_SERVER_ERROR = 3
EXIT_TIMED_OUT = 4
# 128 + SIGINT, as shells report a command ended by Ctrl-C.
EXIT_INTERRUPTED = 130

# Folders and file patterns that makepkg leaves in a package folder; they are not uploaded.
SKIPPED_DIRS = {"src", "pkg", ".git", ".svn", ".hg", "__pycache__"}
SKIPPED_FILES = ["*.pkg.tar", "*.pkg.tar.*", "*.src.tar.*", "*-build.log", "*-package.log",
                 "*-prepare.log", "*-check.log", "*-pkgver.log", ".SRCINFO~"]

SERVER_URL_SCHEMES = ("http", "https")
SERVER_URL_EXAMPLE = "http://127.0.0.1:8080"

# Seconds: connecting, reading a normal response, and reading a stream (the server
# sends a heartbeat every 30 s, so silence beyond this means the stream broke).
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
STREAM_READ_TIMEOUT_S = 90
UPLOAD_TIMEOUT_S = 300
POLL_INTERVAL_S = 2.0
# The APB client waits this long for artifacts_ready after a build ends.
ARTIFACTS_WAIT_S = 300
PROGRESS_STEP_BYTES = 8 * 1024 * 1024


class SubmitError(Exception):
    """A failure of `apbd submit` with the exit code it ends with."""

    def __init__(self, message: str, exit_code: int = EXIT_SERVER_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(SubmitError):
    """Ctrl-C, with what it left behind on the server."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_INTERRUPTED)


def say(message: str) -> None:
    """Print a progress message of apbd submit itself (not build output) to stderr."""
    print(f":: {message}", file=sys.stderr, flush=True)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# Packing


def is_skipped(relative: Path) -> bool:
    if any(part in SKIPPED_DIRS for part in relative.parts[:-1]):
        return True
    return any(fnmatch.fnmatch(relative.name, pattern) for pattern in SKIPPED_FILES)


def check_folder(folder: Path) -> None:
    """Raise a usage error unless folder is a folder that contains a PKGBUILD."""
    if not folder.exists():
        raise SubmitError(f"the folder {folder} does not exist: give the folder that contains the PKGBUILD",
                          EXIT_USAGE)
    if not folder.is_dir():
        hint = f"give its folder, {folder.parent}" if folder.name == "PKGBUILD" else \
            "give the folder that contains the PKGBUILD"
        raise SubmitError(f"{folder} is a file, not a folder: {hint}", EXIT_USAGE)
    if not (folder / "PKGBUILD").is_file():
        raise SubmitError(f"{folder} contains no PKGBUILD: give the folder that contains the PKGBUILD",
                          EXIT_USAGE)


def pack_folder(folder: Path, tarball: Path) -> list[str]:
    """Write folder's PKGBUILD and sources to tarball (gzip), at the archive's root.

    Return the member names. Skip makepkg's src/ and pkg/ folders, built
    packages and makepkg's logs, which the server does not need.
    """
    check_folder(folder)
    members = []
    with tarfile.open(tarball, "w:gz") as archive:
        for root, dirs, files in os.walk(folder, onerror=raise_unreadable):
            root_path = Path(root)
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                relative = (root_path / name).relative_to(folder)
                if is_skipped(relative):
                    continue
                try:
                    check_file_type(root_path / name)
                    archive.add(root_path / name, arcname=str(relative), recursive=False)
                except OSError as e:
                    raise_unreadable(e)
                members.append(str(relative))
    return members


def check_file_type(path: Path) -> None:
    """Raise a usage error for a FIFO, socket or device, which the server rejects (or tarfile skips)."""
    mode = path.lstat().st_mode
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return
    kind = "device file"
    if stat.S_ISFIFO(mode):
        kind = "FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "socket"
    raise SubmitError(f"{path} is a {kind}: the server accepts only regular files, folders and symbolic "
                      "links, so move it out of the package folder", EXIT_USAGE)


def raise_unreadable(error: OSError) -> None:
    raise SubmitError(f"cannot read {error.filename} to pack it: {error.strerror}", EXIT_USAGE)


class MultipartUpload(io.RawIOBase):
    """A multipart/form-data body read from disk in chunks, reporting upload progress.

    requests streams any object with read() and a length, so the tarball is
    never held in memory.
    """

    def __init__(self, fields: dict[str, str], file_field: str, file_name: str, content_type: str,
                 path: Path, show_progress: bool):
        self.boundary = f"apbd-{uuid.uuid4().hex}"
        head = b""
        for name, value in fields.items():
            head += (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                     f"{value}\r\n").encode()
        head += (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; "
                 f"filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
        self._parts = [io.BytesIO(head), open(path, "rb"), io.BytesIO(f"\r\n--{self.boundary}--\r\n".encode())]
        self.total = len(head) + path.stat().st_size + len(self._parts[2].getvalue())
        self.sent = 0
        self._next_report = PROGRESS_STEP_BYTES
        self._show_progress = show_progress

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self.total

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = b""
        while self._parts and (size < 0 or len(chunk) < size):
            piece = self._parts[0].read(-1 if size < 0 else size - len(chunk))
            if not piece:
                self._parts.pop(0).close()
                continue
            chunk += piece
        self.sent += len(chunk)
        if self._show_progress and self.sent >= self._next_report:
            say(f"uploaded {human_size(self.sent)} of {human_size(self.total)}")
            self._next_report += PROGRESS_STEP_BYTES
        return chunk

    def close(self) -> None:
        for part in self._parts:
            part.close()
        self._parts = []
        super().close()


# Talking to the server


def error_detail(answer: requests.Response) -> str:
    """Return the server's {"error", "detail"} as one line, or the start of its body."""
    try:
        body = answer.json()
        return f"{body.get('error', '')}: {body.get('detail', '')}".strip(": ")
    except ValueError:
        return answer.text[:300].strip()


def submit_tarball(server: str, tarball: Path, build_timeout: int | None, token: str | None = None) -> str:
    """POST the tarball as the APB client does (no build_id); return the build id.

    token, when given, is sent as `Authorization: Bearer`, for servers started with --token-file.
    """
    fields = {} if build_timeout is None else {"build_timeout": str(build_timeout)}
    headers = {"Content-Type": "", "Authorization": f"Bearer {token}"} if token else {"Content-Type": ""}
    size = tarball.stat().st_size
    body = MultipartUpload(fields, "build_tarball", "build.tar.gz", "application/gzip", tarball,
                           show_progress=size >= PROGRESS_STEP_BYTES)
    say(f"uploading {human_size(size)} to {server}/build")
    try:
        headers["Content-Type"] = body.content_type
        answer = requests.post(f"{server}/build", data=body, headers=headers,
                               timeout=(CONNECT_TIMEOUT_S, UPLOAD_TIMEOUT_S))
    except requests.RequestException as e:
        raise SubmitError(f"could not submit to {server}: {e}")
    finally:
        body.close()
    if answer.status_code != 200:
        raise SubmitError(f"the server rejected the build (HTTP {answer.status_code}): {error_detail(answer)}")
    try:
        return answer.json()["build_id"]
    except (ValueError, KeyError):
        raise SubmitError(f"the server accepted the build but sent no build_id: {answer.text[:300]}")


def get_json(url: str, **params) -> dict | None:
    """GET a JSON object; None on 404, SubmitError on any other failure."""
    try:
        answer = requests.get(url, params=params, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    except requests.RequestException as e:
        raise SubmitError(f"GET {url} failed: {e}")
    if answer.status_code == 404:
        return None
    if answer.status_code != 200:
        raise SubmitError(f"GET {url} returned HTTP {answer.status_code}: {error_detail(answer)}")
    return answer.json()


def read_status(server: str, build_id: str) -> dict:
    status = get_json(f"{server}/build/{build_id}/status-api")
    if status is None:
        raise SubmitError(f"build {build_id} is not known to {server}")
    return status


# Following the output


@dataclass
class Follower:
    """Prints a build's output once: over the stream, then by polling if the stream breaks."""

    server: str
    build_id: str
    quiet: bool = False
    lines_printed: int = 0

    def emit(self, line: str) -> None:
        self.lines_printed += 1
        if not self.quiet:
            print(line, flush=True)

    def follow_stream(self, deadline: float) -> str | None:
        """Print output events until `complete`; return the final status, None if the stream broke."""
        url = f"{self.server}/build/{self.build_id}/stream"
        try:
            with requests.get(url, stream=True, headers={"Accept": "text/event-stream"},
                              timeout=(CONNECT_TIMEOUT_S, STREAM_READ_TIMEOUT_S)) as answer:
                if answer.status_code != 200:
                    say(f"live output unavailable (HTTP {answer.status_code}); polling instead")
                    return None
                for event, data in read_events(answer):
                    if event == "output":
                        self.emit(data)
                    elif event == "complete":
                        return json.loads(data).get("status")
                    if time.monotonic() > deadline:
                        return None
        except (requests.RequestException, ValueError) as e:
            say(f"live output stream broke ({e}); polling instead")
            return None
        say("live output stream ended early; polling instead")
        return None

    def follow_polling(self, deadline: float) -> str | None:
        """Print new lines from /output until the build is terminal; None at the deadline."""
        while time.monotonic() < deadline:
            status = read_status(self.server, self.build_id)["status"]
            self.print_new_lines()
            if status in TERMINAL_STATES:
                return status
            time.sleep(POLL_INTERVAL_S)
        return None

    def print_new_lines(self) -> None:
        while True:
            page = get_json(f"{self.server}/build/{self.build_id}/output",
                            start_index=self.lines_printed, limit=1000) or {}
            lines = page.get("output", [])
            for line in lines:
                self.emit(line)
            if not lines or self.lines_printed >= page.get("total_lines", 0):
                return


def read_events(answer: requests.Response):
    """Yield (event, data) pairs of a server-sent event stream.

    Lines are split on LF only, so a carriage return inside build output stays
    inside its line.
    """
    event, data, pending = "message", [], b""
    for chunk in answer.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if line.endswith("\r"):
                line = line[:-1]
            if line == "":
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)


# Downloading


def wait_artifacts_ready(server: str, build_id: str) -> dict:
    """Wait for artifacts_ready as the APB client does; return the last status object."""
    deadline = time.monotonic() + ARTIFACTS_WAIT_S
    while True:
        status = get_json(f"{server}/build/{build_id}/status", format="json")
        if status is None:
            # A server without the client's path: status-api is all there is.
            return read_status(server, build_id)
        if status.get("artifacts_ready"):
            return status
        if time.monotonic() > deadline:
            say(f"artifacts were not ready after {ARTIFACTS_WAIT_S} s; downloading what is listed")
            return status
        time.sleep(POLL_INTERVAL_S)


def build_arch(status: dict) -> str:
    """Return the folder name for the build's files: the first arch, as the APB client uses."""
    arch = status.get("arch") or "unknown"
    if isinstance(arch, list):
        arch = arch[0] if arch else "unknown"
    return str(arch)


def download_file(server: str, entry: dict, dest: Path) -> int:
    """Download one listed file to dest; return its size. An empty body is a failure."""
    url = server + entry["download_url"]
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with requests.get(url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as answer:
            if answer.status_code != 200:
                raise SubmitError(f"download of {entry['filename']} failed (HTTP {answer.status_code}): "
                                  f"{error_detail(answer)}")
            size = 0
            with open(tmp, "wb") as out:
                for chunk in answer.iter_content(chunk_size=1024 * 1024):
                    out.write(chunk)
                    size += len(chunk)
    except requests.RequestException as e:
        tmp.unlink(missing_ok=True)
        raise SubmitError(f"download of {entry['filename']} from {url} failed: {e}")
    if size == 0:
        tmp.unlink(missing_ok=True)
        raise SubmitError(f"download of {entry['filename']} returned an empty body")
    os.replace(tmp, dest)
    return size


def download_artifacts(server: str, status: dict, output: Path) -> list[Path]:
    """Download every listed package and log into OUTPUT/ARCH/FILENAME."""
    folder = output / build_arch(status)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for entry in [*status.get("packages", []), *status.get("logs", [])]:
        name = Path(entry["filename"]).name
        size = download_file(server, entry, folder / name)
        say(f"downloaded {name} ({human_size(size)})")
        saved.append(folder / name)
    return saved


# The whole command


def read_token(path: str | None) -> str | None:
    """Read the bearer token from path (surrounding whitespace removed); None without a path."""
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise SubmitError(f"cannot read the token file {path}: {e.strerror}", EXIT_USAGE)
    if not token:
        raise SubmitError(f"the token file {path} is empty", EXIT_USAGE)
    return token


def check_server_url(server: str, source: str = "--server") -> str:
    """Return server without a trailing slash, or raise a usage error unless it is an http(s) URL.

    Without this check, a value like 127.0.0.1:8080 reaches requests, which
    fails with a message about connection adapters. source names where the
    value came from (the option or an environment variable) for the message.
    """
    problem = find_url_problem(server.strip())
    if problem is not None:
        suggestion = f"http://{server}" if server and "://" not in server else SERVER_URL_EXAMPLE
        raise SubmitError(f"{source} needs a URL such as {suggestion}, not {server!r} ({problem})", EXIT_USAGE)
    return server.strip().rstrip("/")


def find_url_problem(url: str) -> str | None:
    """Describe what keeps url from being a server's base URL; None when it is one."""
    if "://" not in url:
        return "it has no http:// or https:// in front"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as e:
        return str(e)
    if parts.scheme.lower() not in SERVER_URL_SCHEMES:
        return f"the scheme {parts.scheme}:// is not http:// or https://"
    if not parts.hostname:
        return "it names no host"
    if parts.query or parts.fragment:
        return "a server's base URL has no query or fragment"
    return None


def check_output(output: Path) -> None:
    """Raise a usage error unless output is a folder or can be created as one."""
    existing = output
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SubmitError(f"--output {output}: {existing} is a file, not a folder", EXIT_USAGE)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SubmitError(f"--output {output}: the folder {existing} is not writable", EXIT_USAGE)


def run_submit(folder: Path, server: str, output: Path, timeout: float | None,
               build_timeout: int | None, quiet: bool, token_file: str | None = None,
               server_source: str = "--server") -> int:
    """Submit folder, follow the build, download its files; return the exit code.

    Every argument is checked before anything is sent, so a usage error
    (exit code EXIT_USAGE) never leaves a build behind on the server.
    """
    server = check_server_url(server, server_source)
    check_folder(folder)
    check_output(output)
    token = read_token(token_file)
    deadline = time.monotonic() + timeout if timeout else float("inf")

    with tempfile.TemporaryDirectory(prefix="apbd-submit-") as scratch:
        tarball = Path(scratch) / "build.tar.gz"
        members = pack_folder(folder, tarball)
        say(f"packed {len(members)} files from {folder}: {', '.join(members)}")
        try:
            build_id = submit_tarball(server, tarball, build_timeout, token)
        except KeyboardInterrupt:
            raise Interrupted("interrupted while uploading; the server may or may not have accepted "
                              f"the build (see {server}/builds/latest)") from None
    print(f"build_id: {build_id}", flush=True)
    say(f"build page: {server}/build/{build_id}")
    try:
        return follow_and_download(server, build_id, output, timeout, deadline, quiet)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; build {build_id} goes on on the server "
                          f"(cancel it with: curl -X POST {server}/build/{build_id}/cancel)") from None


def follow_and_download(server: str, build_id: str, output: Path, timeout: float | None, deadline: float,
                        quiet: bool) -> int:
    """Follow the build's output until it ends, then download its files; return the exit code."""
    follower = Follower(server, build_id, quiet=quiet)
    final = follower.follow_stream(deadline)
    if final is None:
        final = follower.follow_polling(deadline)
    if final is None:
        say(f"build {build_id} did not finish within {timeout} s; it keeps running on the server")
        return EXIT_TIMED_OUT

    status = wait_artifacts_ready(server, build_id)
    final = status.get("status", final)
    saved = download_artifacts(server, status, output)
    say(f"build {build_id} {final}; files in {output / build_arch(status)}:")
    for path in saved:
        print(path, flush=True)
    if final != "completed":
        reason = status.get("reason")
        say(f"build {build_id} {final}" + (f": {reason}" if reason else "") + "; see the log above")
        return EXIT_BUILD_FAILED
    return EXIT_COMPLETED
