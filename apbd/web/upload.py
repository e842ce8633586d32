"""POST /build: read a multipart upload straight to disk and queue the build.

The multipart body is parsed here in chunks. Every file part goes to a
staging folder under SPOOL/tmp as it is read, so an upload is never held in
memory: a tarball is unpacked while it arrives, other files are written as
they are. waitress itself keeps large bodies in an unlinked temporary file,
which apbd-web places in SPOOL/tmp too. Two forms are accepted:

- the farm's: build_id, build_timeout, optional extra_repos (JSON), and the
  file part build_tarball (a .tar.gz with the PKGBUILD at its root);
- the legacy one: the file part pkgbuild (its file name must be PKGBUILD) and
  any number of file parts sources.

build_id is optional (the APB client talking to a server directly sends none),
and a staging folder is always removed when the request fails.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import bottle

from apbd import intake, limits
from apbd import spool as spool_format
from apbd.errors import ApiError
from apbd.tarball import PKGBUILD, extract_tarball_stream
from apbd.web.timeouts import current_deadline

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
# Multipart part headers and text fields are small; anything bigger is not a form we know.
MAX_PART_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 64 * 1024
# The staging subfolder a tarball is unpacked into; it becomes src/ once the upload is accepted.
UNPACKED_DIR = "unpacked"
TEXT_FIELDS = ("build_id", "build_timeout", "extra_repos")
_BOUNDARY_RE = re.compile(r'boundary="?([^";,]+)"?', re.IGNORECASE)
_PARAM_RE = re.compile(r';\s*([a-zA-Z0-9_*-]+)="((?:[^"\\]|\\.)*)"|;\s*([a-zA-Z0-9_*-]+)=([^;\s]*)')


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "Invalid request", detail)


@dataclass
class Upload:
    """The content of a multipart upload: text fields in memory, file parts already on disk."""

    fields: dict[str, str] = field(default_factory=dict)
    tarball_seen: bool = False
    tarball_sha256: str | None = None
    # Why the tarball could not be unpacked. It is raised only after a retry or
    # conflict check, which needs build_id, a field that may follow the file.
    tarball_error: ApiError | None = None
    pkgbuild_seen: bool = False
    sources: list[tuple[str, str]] = field(default_factory=list)  # (file name, sha256)


# Multipart parsing


def parse_disposition(value: str) -> dict[str, str]:
    params = {}
    for match in _PARAM_RE.finditer(value):
        if match.group(1):
            params[match.group(1).lower()] = match.group(2).replace('\\"', '"').replace("\\\\", "\\")
        else:
            params[match.group(3).lower()] = match.group(4)
    return params


class MultipartReader:
    """A streaming multipart/form-data parser over a file-like body of known length."""

    def __init__(self, stream, length: int, boundary: bytes):
        self.stream = stream
        self.left = length
        self.buffer = b""
        self.delimiter = b"\r\n--" + boundary

    def fill(self) -> bool:
        """Read one more chunk into the buffer; return False at the end of the body."""
        current_deadline().check()
        if self.left <= 0:
            return False
        chunk = self.stream.read(min(READ_CHUNK, self.left))
        if not chunk:
            raise bad_request("The upload ended early: the body is shorter than its Content-Length")
        self.left -= len(chunk)
        self.buffer += chunk
        return True

    def parts(self):
        """Yield (headers dict, body chunk iterator) for each part; consume each iterator fully."""
        # The first delimiter has no CRLF before it.
        self.buffer = b"\r\n"
        while True:
            index = self.buffer.find(self.delimiter)
            if index >= 0:
                self.buffer = self.buffer[index + len(self.delimiter):]
                break
            self.buffer = self.buffer[-len(self.delimiter):]
            if not self.fill():
                raise bad_request("The multipart body contains no part")
        while True:
            while len(self.buffer) < 2 and self.fill():
                pass
            if self.buffer.startswith(b"--"):
                return
            if not self.buffer.startswith(b"\r\n"):
                raise bad_request("The multipart body is malformed after a boundary")
            self.buffer = self.buffer[2:]
            headers = self.read_headers()
            yield headers, self.read_body()

    def read_headers(self) -> dict[str, str]:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_PART_HEADER_BYTES:
                raise bad_request("A multipart part header is too long")
            if not self.fill():
                raise bad_request("The upload ended inside a multipart part header")
        raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        headers = {}
        for line in raw.decode("utf-8", errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def read_body(self):
        keep = len(self.delimiter) - 1
        while True:
            index = self.buffer.find(self.delimiter)
            if index >= 0:
                data, self.buffer = self.buffer[:index], self.buffer[index + len(self.delimiter):]
                if data:
                    yield data
                return
            if len(self.buffer) > keep:
                data, self.buffer = self.buffer[:-keep], self.buffer[-keep:]
                yield data
            if not self.fill():
                raise bad_request("The upload ended inside a multipart part: the body is incomplete")


def write_part(chunks, path: Path, limit: int, label: str) -> str:
    """Write a part's chunks to a new file at path; return its sha256. 413 beyond limit bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "xb") as out:
        for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "File too large", f"{label} exceeds {limit} bytes")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


class PartReader:
    """A part's chunk iterator as a file-like object with read(size), hashing and counting what passes.

    Raises ApiError 413 as soon as more than limit bytes arrived. failed is
    True once reading the part itself raised (413, or a multipart body that
    ended early), as opposed to an error about what the part contains.
    """

    def __init__(self, chunks, limit: int, label: str):
        self.chunks = chunks
        self.limit = limit
        self.label = label
        self.digest = hashlib.sha256()
        self.size = 0
        self.leftover = b""
        self.failed = False

    def read(self, size: int = -1) -> bytes:
        data = self.leftover or self.next_chunk()
        self.leftover = b""
        if size is not None and 0 <= size < len(data):
            data, self.leftover = data[:size], data[size:]
        return data

    def next_chunk(self) -> bytes:
        try:
            data = next(self.chunks, b"")
        except ApiError:
            self.failed = True
            raise
        self.size += len(data)
        if self.size > self.limit:
            self.failed = True
            raise ApiError(413, "File too large", f"{self.label} exceeds {self.limit} bytes")
        self.digest.update(data)
        return data

    def drain(self) -> None:
        """Read the rest of the part, so that its digest covers all of it."""
        while self.read(READ_CHUNK):
            pass


def unpack_part(chunks, dest: Path, *, max_file_size: int, upload: Upload) -> None:
    """Unpack a build_tarball part into dest while hashing it; keep a 400 in upload.tarball_error."""
    reader = PartReader(chunks, max_file_size, "Tarball")
    try:
        extract_tarball_stream(reader, dest, max_file_size=max_file_size,
                               max_total_size=limits.MAX_EXTRACTED_SIZE_DEFAULT,
                               max_members=limits.MAX_TAR_MEMBERS_DEFAULT)
    except ApiError as e:
        if reader.failed or e.status != 400:
            raise
        upload.tarball_error = e
    reader.drain()
    upload.tarball_sha256 = reader.digest.hexdigest()


def read_field(chunks, name: str) -> str:
    data = b""
    for chunk in chunks:
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise bad_request(f"The form field {name} is longer than {MAX_FIELD_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"The form field {name} is not valid UTF-8") from None


def safe_source_name(filename: str) -> str:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "\0\n\r"):
        raise bad_request(f"Invalid source file name {filename!r}")
    return name


def receive_upload(environ: dict, staging: Path, max_file_size: int) -> Upload:
    """Parse the multipart body in environ into staging: fields in memory, files on disk."""
    content_type = environ.get("CONTENT_TYPE", "")
    match = _BOUNDARY_RE.search(content_type)
    if not content_type.lower().startswith("multipart/form-data") or not match:
        raise bad_request("POST /build expects multipart/form-data with a build_tarball or pkgbuild file part")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    reader = MultipartReader(environ["wsgi.input"], length, match.group(1).encode("latin-1"))

    upload = Upload()
    src = staging / spool_format.SOURCES_DIR
    src.mkdir(mode=0o755)
    for headers, chunks in reader.parts():
        params = parse_disposition(headers.get("content-disposition", ""))
        name = params.get("name", "")
        filename = params.get("filename")

        if name == "build_tarball":
            if upload.tarball_seen:
                raise bad_request("The upload contains more than one build_tarball part")
            upload.tarball_seen = True
            unpack_part(chunks, staging / UNPACKED_DIR, max_file_size=max_file_size, upload=upload)
        elif name == "pkgbuild":
            if filename is not None and filename.replace("\\", "/").rsplit("/", 1)[-1] != PKGBUILD:
                raise bad_request(f"The pkgbuild file must be named 'PKGBUILD', not {filename!r}")
            if upload.pkgbuild_seen:
                raise bad_request("The upload contains more than one pkgbuild part")
            upload.pkgbuild_seen = True
            upload.sources.append((PKGBUILD, write_part(chunks, src / PKGBUILD, max_file_size, PKGBUILD)))
        elif name in ("sources", "sources[]") and filename is not None:
            source = safe_source_name(filename)
            if (src / source).exists():
                raise bad_request(f"The source file {source!r} is uploaded twice")
            upload.sources.append((source, write_part(chunks, src / source, max_file_size, source)))
        elif name in TEXT_FIELDS:
            upload.fields[name] = read_field(chunks, name).strip()
        else:
            # Unknown parts are read and dropped, as form parsers do.
            for _ in chunks:
                pass
    return upload


# Form fields


def parse_build_id(value: str | None) -> str:
    if not value:
        return spool_format.new_build_id()
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise bad_request(f"build_id {value!r} is not a UUID") from None
    if str(parsed) != value.lower():
        raise bad_request(f"build_id {value!r} is not a UUID in its usual 8-4-4-4-12 form")
    return str(parsed)


def parse_build_timeout(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    low, high = limits.BUILD_TIMEOUT_MIN_S, limits.BUILD_TIMEOUT_MAX_S
    try:
        seconds = int(value)
    except ValueError:
        raise bad_request(f"build_timeout {value!r} is not a whole number of seconds") from None
    if not low <= seconds <= high:
        raise bad_request(f"build_timeout must be between {low} and {high} seconds, not {seconds}")
    return seconds


def parse_extra_repos(value: str | None) -> list[dict]:
    from apbd.repos import validate_extra_repos

    return validate_extra_repos(value)


def legacy_sha256(sources: list[tuple[str, str]]) -> str:
    """Return one digest for the legacy form's files, independent of their order."""
    digest = hashlib.sha256()
    for name, file_digest in sorted(sources):
        digest.update(f"{name}\0{file_digest}\n".encode())
    return digest.hexdigest()


# The request


def check_request_size(environ: dict, max_request_size: int) -> None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise bad_request("Content-Length is not a number") from None
    if length > max_request_size:
        raise ApiError(413, "File too large", f"Request body exceeds {max_request_size} bytes")


def submit_build(ctx) -> dict:
    """Handle POST /build; return the response object (raise ApiError for every failure)."""
    args = ctx.args
    environ = bottle.request.environ
    check_request_size(environ, args.max_request_size)
    check_disk_space(ctx, int(environ.get("CONTENT_LENGTH") or 0))

    staging = ctx.spool.make_staging_dir("upload")
    try:
        upload = receive_upload(environ, staging, args.max_file_size)
        build_id = parse_build_id(upload.fields.get("build_id"))
        build_timeout = parse_build_timeout(upload.fields.get("build_timeout"))
        extra_repos = parse_extra_repos(upload.fields.get("extra_repos"))

        if upload.tarball_seen:
            if upload.pkgbuild_seen:
                raise bad_request("Send either build_tarball or pkgbuild, not both")
            source, sha256 = "tarball", upload.tarball_sha256
        elif upload.pkgbuild_seen:
            source, sha256 = "legacy", legacy_sha256(upload.sources)
        else:
            raise bad_request("The upload contains neither a build_tarball nor a pkgbuild file part")

        # A farm retry gets the existing build, and a different upload under its id a 409,
        # even when the tarball could not be unpacked.
        retry = intake.existing_build(ctx.spool, build_id, sha256)
        if retry is not None:
            log.info("build %s: the same upload arrived again; returning the existing build", build_id)
            return {"build_id": build_id, "status": retry.get("status", spool_format.QUEUED),
                    "message": "Build already submitted with the same content; it is built once"}

        if upload.tarball_seen:
            if upload.tarball_error is not None:
                raise upload.tarball_error
            shutil.rmtree(staging / spool_format.SOURCES_DIR)
            os.rename(staging / UNPACKED_DIR, staging / spool_format.SOURCES_DIR)
        current_deadline().check()
        if build_timeout is None:
            build_timeout = getattr(args, "build_timeout", None)
        status = create_job_committed(ctx, staging, build_id=build_id, source=source, build_timeout=build_timeout,
                                      extra_repos=extra_repos, sha256=sha256,
                                      remote_addr=environ.get("REMOTE_ADDR"))
    except ApiError as e:
        log.info("upload from %s rejected: %s %s: %s", environ.get("REMOTE_ADDR"), e.status, e.error, e.detail)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return accepted(status["build_id"])


def create_job_committed(ctx, staging: Path, **job) -> dict:
    """Read the metadata and publish, unless the request timed out before the publishing rename."""
    return intake.create_job(ctx.spool, staging, build_user=getattr(ctx.args, "build_user", None),
                             before_publish=current_deadline().commit, **job)


def accepted(build_id: str) -> dict:
    return {"build_id": build_id, "status": spool_format.QUEUED, "message": "Build queued successfully"}


def check_disk_space(ctx, needed_bytes: int) -> None:
    """Reject an upload with 503 when the spool's disk cannot take it (the only reason for a 503)."""
    try:
        from apbd.monitor import low_disk_reason
    except ImportError:
        return
    reason = low_disk_reason(ctx.spool, needed_bytes)
    if reason:
        log.warning("upload of %d bytes rejected: %s", needed_bytes, reason)
        raise ApiError(503, "Insufficient disk space", reason)
