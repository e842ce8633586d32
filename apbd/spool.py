"""The spool: the folder tree that is the whole state of apbd.

The web layer and the runner share nothing but this tree, and both use this
module to read and change it. The protocol, in short:

- Every build has one folder, jobs/BUILD_ID/, named by its UUID. The request,
  the sources, status.json, build.log and the packages all live there.
- A publisher (the web layer, or the runner importing a drop) writes a job
  folder completely under tmp/, then renames it to jobs/BUILD_ID. That rename
  publishes the job. It fails when the id exists, so an id is never reused.
- A published job holds an empty file named `queued`. A runner claims the job
  by taking an exclusive flock on the job's `lock` file and then renaming
  `queued` to `claimed`. Only one rename can succeed, so only one runner builds
  a job. The lock stays held for the whole build: a `claimed` file whose lock
  nobody holds belongs to a dead runner.
- Only the holder of the lock writes status.json, and always by writing a
  temporary file and renaming it over the old one. The publisher writes the
  first one (queued) before publishing.
- Each status.json gets a later mtime than the version it replaces, so a
  reader can tell versions apart by stat() alone (the web layer caches
  status polls that way).
- When a build ends, its holder first moves the packages into packages/ and
  writes its last build.log line, then the final status.json, then removes
  `claimed` and work/. The packages, build.log and status.json do not change
  after the final status. So `ls jobs/*/queued` lists the queue and
  `ls jobs/*/claimed` lists what is running or was orphaned by a crash.
- A cancel request is the file `cancel` in the job folder. Whoever holds the
  lock acts on it; the web layer takes the lock itself for a job still queued.
- history/builds.log gets one JSON line per published build, and
  history/pkgname/NAME.log the same lines per package name, so history queries
  read a few lines from the end instead of every job folder. Both are an index
  that rebuild_history() can make again from the job folders.

See spool/README.md for the layout as an admin sees it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Job states, exactly as the API names them.
QUEUED = "queued"
BUILDING = "building"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STATES = (QUEUED, BUILDING, COMPLETED, FAILED, CANCELLED)
TERMINAL_STATES = (COMPLETED, FAILED, CANCELLED)

# Names inside a job folder.
REQUEST_FILE = "request.json"
STATUS_FILE = "status.json"
LOG_FILE = "build.log"
SOURCES_DIR = "src"
PACKAGES_DIR = "packages"
WORK_DIR = "work"
QUEUED_MARKER = "queued"
CLAIMED_MARKER = "claimed"
CANCEL_MARKER = "cancel"
LOCK_FILE = "lock"

# Names at the top of the spool.
JOBS_DIR = "jobs"
STAGING_DIR = "tmp"
DROP_DIR = "drop"
REJECTED_DIR = "rejected"
HISTORY_DIR = "history"
HISTORY_FILE = "builds.log"
RUNNERS_DIR = "runners"

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Package names as makepkg accepts them; anything else never names an index file.
_PKGNAME_RE = re.compile(r"^[a-zA-Z0-9@_+][a-zA-Z0-9@._+-]*$")


def is_build_id(value: str) -> bool:
    """Tell whether value is a build id: a UUID in its canonical lower-case form."""
    return bool(_UUID_RE.match(value))


def new_build_id() -> str:
    return str(uuid.uuid4())


def next_mtime_ns(path: Path) -> int:
    """Return a modification time for a new version of path, later than the current one's.

    The kernel stamps files from a coarse clock (a few milliseconds here), and
    ext4 hands a freed inode number straight to the next new file. Without
    this, two versions of status.json can share inode, size and mtime, and a
    reader that caches by stat() would keep the older one.
    """
    now = time.time_ns()
    try:
        return max(now, os.stat(path).st_mtime_ns + 1)
    except FileNotFoundError:
        return now


def write_file_atomic(path: Path, data: bytes) -> None:
    """Replace path with data so that readers see the old or the new file, never a torn one.

    Each version gets a later mtime than the one it replaces (next_mtime_ns).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.write(fd, data)
            mtime = next_mtime_ns(path)
            os.utime(fd, ns=(mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        # A full disk fails the write; the temporary file must not stay behind.
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: dict) -> None:
    write_file_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict | None:
    """Return the JSON object in path, or None when the file does not exist."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Claim:
    """The right to change one job: an open file descriptor holding the job's flock."""

    build_id: str
    lock_fd: int

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


class Spool:
    """One spool folder and the operations of the protocol on it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.jobs = self.root / JOBS_DIR
        self.staging = self.root / STAGING_DIR
        self.drop = self.root / DROP_DIR
        self.rejected = self.drop / REJECTED_DIR
        self.history = self.root / HISTORY_DIR
        self.runners = self.root / RUNNERS_DIR

    def create(self) -> None:
        """Create the spool's folders where they are missing."""
        for path in (self.jobs, self.staging, self.drop, self.rejected,
                     self.history / "pkgname", self.runners):
            path.mkdir(parents=True, exist_ok=True)

    # Paths

    def job_dir(self, build_id: str) -> Path:
        """Return the folder of build_id; raise ValueError unless it is a build id."""
        if not is_build_id(build_id):
            raise ValueError(f"not a build id: {build_id!r}")
        return self.jobs / build_id

    def exists(self, build_id: str) -> bool:
        return is_build_id(build_id) and (self.jobs / build_id).is_dir()

    def job_ids(self) -> list[str]:
        """Return the ids of every published job, in no particular order."""
        with os.scandir(self.jobs) as entries:
            return [e.name for e in entries if is_build_id(e.name)]

    # Publishing

    def make_staging_dir(self, build_id: str) -> Path:
        """Create an empty folder under tmp/ in which a publisher writes a job."""
        path = self.staging / f"{build_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        path.mkdir(mode=0o755)
        return path

    def remove_stale_staging(self) -> list[str]:
        """Remove folders under tmp/ whose writing process is gone; return their names.

        A staging folder is named BUILD_ID.PID.RANDOM, so a folder whose PID no
        longer runs is what a crashed publisher left behind.
        """
        removed = []
        for entry in self.staging.iterdir():
            parts = entry.name.split(".")
            if len(parts) >= 3 and parts[1].isdigit() and _pid_alive(int(parts[1])):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        return removed

    def publish(self, staging: Path, request: dict, status: dict) -> bool:
        """Write request.json, the first status.json and the markers, then publish.

        Return False, leaving staging in place, when a job with this id exists.
        """
        build_id = request["build_id"]
        write_json_atomic(staging / REQUEST_FILE, request)
        write_json_atomic(staging / STATUS_FILE, status)
        (staging / QUEUED_MARKER).touch()
        (staging / LOCK_FILE).touch()
        fsync_dir(staging)
        try:
            os.rename(staging, self.jobs / build_id)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        fsync_dir(self.jobs)
        self.append_history(request, status)
        return True

    # Claiming

    def _lock(self, build_id: str) -> int | None:
        """Take the job's flock without waiting; return its fd, or None if taken."""
        try:
            fd = os.open(self.job_dir(build_id) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def claim(self, build_id: str) -> Claim | None:
        """Claim a queued job; return None when another process has it or had it."""
        fd = self._lock(build_id)
        if fd is None:
            return None
        job = self.job_dir(build_id)
        try:
            os.rename(job / QUEUED_MARKER, job / CLAIMED_MARKER)
        except FileNotFoundError:
            os.close(fd)
            return None
        return Claim(build_id, fd)

    def lock_orphan(self, build_id: str) -> Claim | None:
        """Take over a claimed job whose claimer died; None if it is alive or not claimed."""
        job = self.job_dir(build_id)
        if not (job / CLAIMED_MARKER).exists():
            return None
        fd = self._lock(build_id)
        if fd is None:
            return None
        if not (job / CLAIMED_MARKER).exists():
            os.close(fd)
            return None
        return Claim(build_id, fd)

    def queued_ids(self) -> list[str]:
        """Return the ids of jobs waiting for a runner, oldest submission first."""
        waiting = []
        for build_id in self.job_ids():
            job = self.jobs / build_id
            if (job / QUEUED_MARKER).exists():
                waiting.append((self.created_at(build_id), build_id))
        waiting.sort()
        return [build_id for _, build_id in waiting]

    def claimed_ids(self) -> list[str]:
        return [i for i in self.job_ids() if (self.jobs / i / CLAIMED_MARKER).exists()]

    def created_at(self, build_id: str) -> float:
        request = read_json(self.job_dir(build_id) / REQUEST_FILE) or {}
        return float(request.get("created_at", 0.0))

    # Status

    def read_request(self, build_id: str) -> dict | None:
        return read_json(self.job_dir(build_id) / REQUEST_FILE)

    def read_status(self, build_id: str) -> dict | None:
        return read_json(self.job_dir(build_id) / STATUS_FILE)

    def write_status(self, claim: Claim, status: dict) -> None:
        """Replace the job's status.json; only the holder of the claim may."""
        assert claim.lock_fd >= 0, "status written without holding the job lock"
        write_json_atomic(self.job_dir(claim.build_id) / STATUS_FILE, status)

    def update_status(self, claim: Claim, **fields) -> dict:
        """Merge fields into the job's status.json and return the new status."""
        status = self.read_status(claim.build_id) or {}
        status.update(fields)
        self.write_status(claim, status)
        return status

    def finish(self, claim: Claim, state: str, **fields) -> dict:
        """Write the final status of a claimed job, drop its `claimed` marker, release it."""
        assert state in TERMINAL_STATES, state
        job = self.job_dir(claim.build_id)
        fields.setdefault("end_time", time.time())
        status = self.update_status(claim, status=state, **fields)
        try:
            (job / CLAIMED_MARKER).unlink()
        except FileNotFoundError:
            pass
        # A job cancelled before a runner claimed it still holds `queued`.
        try:
            (job / QUEUED_MARKER).unlink()
        except FileNotFoundError:
            pass
        fsync_dir(job)
        claim.release()
        return status

    # Cancelling

    def request_cancel(self, build_id: str) -> None:
        """Leave the cancel marker for whoever builds the job."""
        write_file_atomic(self.job_dir(build_id) / CANCEL_MARKER, f"{time.time()}\n".encode())

    def cancel_requested(self, build_id: str) -> bool:
        return (self.job_dir(build_id) / CANCEL_MARKER).exists()

    def cancel_if_queued(self, build_id: str) -> bool:
        """Cancel a job no runner has claimed yet; return False when one has it.

        The cancel marker is written first, so a runner that claims the job at
        the same moment still sees it and stops before building.
        """
        self.request_cancel(build_id)
        fd = self._lock(build_id)
        if fd is None:
            return False
        job = self.job_dir(build_id)
        if not (job / QUEUED_MARKER).exists():
            os.close(fd)
            return False
        claim = Claim(build_id, fd)
        self.finish(claim, CANCELLED, reason="Cancelled before the build started")
        return True

    # Logs

    def append_log(self, build_id: str, text: str) -> None:
        """Append a line from apbd itself (not from the build) to build.log."""
        line = f"==> apbd: {text}\n".encode()
        fd = os.open(self.job_dir(build_id) / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    # History index

    def append_history(self, request: dict, status: dict) -> None:
        """Add a published job to history/builds.log and its per-package files.

        Each line is written with one O_APPEND write, which Linux keeps whole
        for lines this short, so concurrent publishers never interleave.
        """
        names = {n for n in [status.get("pkgbase"), status.get("pkgname"), *status.get("pkgnames", [])]
                 if n and _PKGNAME_RE.match(n)}
        line = json.dumps({
            "build_id": request["build_id"],
            "created_at": request.get("created_at"),
            "pkgname": status.get("pkgname"),
        }, sort_keys=True).encode() + b"\n"
        targets = [self.history / HISTORY_FILE] + [self.history / "pkgname" / f"{n}.log" for n in sorted(names)]
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def rebuild_history(self) -> int:
        """Write the history index again from the job folders; return the job count."""
        entries = []
        for build_id in self.job_ids():
            request = self.read_request(build_id)
            status = self.read_status(build_id)
            if request is None or status is None:
                continue
            entries.append((request.get("created_at", 0.0), request, status))
        entries.sort(key=lambda e: e[0])
        fresh = self.root / f"{HISTORY_DIR}.new.{os.getpid()}"
        (fresh / "pkgname").mkdir(parents=True)
        staged = Spool(self.root)
        staged.history = fresh
        for _, request, status in entries:
            staged.append_history(request, status)
        old = self.root / f"{HISTORY_DIR}.old.{os.getpid()}"
        if self.history.exists():
            os.rename(self.history, old)
        os.rename(fresh, self.history)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        return len(entries)
