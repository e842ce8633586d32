"""Admin drops: a PKGBUILD folder or a .tar.gz placed in SPOOL/drop/ becomes a queued job.

An admin copies the folder or tarball under a name starting with '.', then
renames it to its final name; names starting with '.' are never imported.
The runner claims a drop by renaming it to drop/.importing-<build id>-<name>,
so the build id is fixed before anything is written. It then publishes the
job with apbd.intake.create_job and removes the drop entry. A drop that
cannot be built goes to drop/rejected/<name>, with the reason in
drop/rejected/<name>.reason.

A runner that dies during an import leaves the .importing- entry behind. At the
next start the entry is removed when jobs/<build id> exists (the import had
finished), and imported again with the same build id when it does not, so a
drop is neither lost nor built twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from apbd import intake, limits, tarball
from apbd import spool as spool_format
from apbd.errors import ApiError
from apbd.spool import Spool

log = logging.getLogger(__name__)

IMPORTING_PREFIX = ".importing-"
REASON_SUFFIX = ".reason"
TARBALL_SUFFIXES = (".tar.gz", ".tgz")
# Length of a canonical UUID string.
_BUILD_ID_LEN = 36


class DropImporter:
    """Imports the drops of one spool as jobs, with the server's limits and build user."""

    def __init__(self, spool: Spool, *, build_user: str | None, build_timeout: int,
                 max_file_size: int = limits.MAX_FILE_SIZE_DEFAULT,
                 max_total_size: int = limits.MAX_EXTRACTED_SIZE_DEFAULT,
                 max_members: int = limits.MAX_TAR_MEMBERS_DEFAULT):
        self.spool = spool
        self.build_user = build_user
        self.build_timeout = build_timeout
        self.limits = {"max_file_size": max_file_size, "max_total_size": max_total_size,
                       "max_members": max_members}

    def pending(self) -> list[str]:
        """Return the names in drop/ waiting for import (not hidden, not rejected/)."""
        try:
            names = os.listdir(self.spool.drop)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and n != spool_format.REJECTED_DIR)

    def import_all(self) -> list[str]:
        """Import every pending drop; return the build ids created."""
        created = []
        for name in self.pending():
            build_id = self.claim_and_import(name)
            if build_id:
                created.append(build_id)
        return created

    def claim_and_import(self, name: str) -> str | None:
        """Claim one drop by renaming it, then import it; return the build id, or None."""
        build_id = spool_format.new_build_id()
        claimed = self.spool.drop / f"{IMPORTING_PREFIX}{build_id}-{name}"
        try:
            os.rename(self.spool.drop / name, claimed)
        except FileNotFoundError:
            # Another runner claimed it first.
            return None
        return self.import_claimed(claimed, build_id, name)

    def recover(self) -> list[str]:
        """Finish imports a dead runner left as .importing- entries; return the build ids created."""
        created = []
        try:
            names = os.listdir(self.spool.drop)
        except FileNotFoundError:
            return created
        for entry in sorted(names):
            if not entry.startswith(IMPORTING_PREFIX):
                continue
            rest = entry[len(IMPORTING_PREFIX):]
            build_id, name = rest[:_BUILD_ID_LEN], rest[_BUILD_ID_LEN + 1:]
            claimed = self.spool.drop / entry
            if not spool_format.is_build_id(build_id) or not name:
                log.error("drop entry %s has an unexpected name; leaving it for an admin", claimed)
                continue
            if self.spool.exists(build_id):
                log.info("drop %s was already imported as build %s; removing the drop entry", name, build_id)
                _remove(claimed)
                continue
            log.warning("drop %s: finishing the import a stopped runner left, as build %s", name, build_id)
            if self.import_claimed(claimed, build_id, name):
                created.append(build_id)
        return created

    def import_claimed(self, claimed: Path, build_id: str, name: str) -> str | None:
        """Stage, check and publish a claimed drop, then remove it; return the build id or None."""
        staging = None
        try:
            staging = self.spool.make_staging_dir(build_id)
            sha256 = self.stage_sources(claimed, staging / spool_format.SOURCES_DIR)
            status = self.create_job(staging, build_id, sha256)
        except ApiError as e:
            self.reject(claimed, name, f"{e.error}: {e.detail}")
            return None
        except OSError as e:
            log.error("drop %s: import as build %s failed: %s; it stays as %s for the next start",
                      name, build_id, e, claimed)
            return None
        finally:
            # After a successful publish the staging folder is gone; after a failure it must go.
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        _remove(claimed)
        log.info("drop %s imported as build %s (%s %s)", name, build_id, status.get("pkgname"),
                 status.get("version"))
        return build_id

    def stage_sources(self, claimed: Path, dest: Path) -> str:
        """Copy or unpack the drop into dest; return a sha256 of its content."""
        if claimed.is_dir():
            names = tarball.copy_package_folder(claimed, dest, **self.limits)
            return _folder_sha256(dest, names)
        if claimed.is_file() and claimed.name.endswith(TARBALL_SUFFIXES):
            tarball.extract_tarball(claimed, dest, **self.limits)
            return _file_sha256(claimed)
        raise ApiError(400, "Invalid drop", "A drop must be a folder holding a PKGBUILD, or a .tar.gz of one")

    def create_job(self, staging: Path, build_id: str, sha256: str) -> dict:
        return intake.create_job(self.spool, staging, build_id=build_id, source="drop",
                                 build_timeout=self.build_timeout, extra_repos=[], sha256=sha256,
                                 remote_addr=None, build_user=self.build_user)

    def reject(self, claimed: Path, name: str, reason: str) -> None:
        """Move a drop that cannot be built to drop/rejected/, with a .reason file beside it."""
        self.spool.rejected.mkdir(parents=True, exist_ok=True)
        target = self.spool.rejected / name
        if target.exists() or Path(f"{target}{REASON_SUFFIX}").exists():
            target = self.spool.rejected / f"{name}.{spool_format.new_build_id()[:8]}"
        Path(f"{target}{REASON_SUFFIX}").write_text(reason + "\n")
        os.rename(claimed, target)
        log.warning("drop %s rejected (now %s): %s", name, target, reason)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_sha256(root: Path, names: list[str]) -> str:
    """Hash the file names and contents under root in a fixed order."""
    digest = hashlib.sha256()
    for name in sorted(names):
        path = root / name
        digest.update(name.encode() + b"\0")
        if path.is_file() and not path.is_symlink():
            digest.update(_file_sha256(path).encode())
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
