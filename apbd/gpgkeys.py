"""OpenPGP keys for the signed sources of one build, in a GnuPG home of its own.

makepkg checks source signatures against the keys in GNUPGHOME and accepts a
signature only from a fingerprint listed in validpgpkeys. Each build gets its
own GnuPG home in its work/ folder, so keys one build imports never reach
another build or the host's keyring. Into it go the keys the upload ships in
keys/pgp/*.asc (makepkg's convention), then `gpg --recv-keys` fetches the
listed fingerprints that are still missing. A key that cannot be fetched is
only a warning: the build goes on, and makepkg's own signature check decides.

gpg parses upload contents, so it runs as the build user, never as root.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from apbd.sandbox import BuildUser

log = logging.getLogger(__name__)

GNUPG_HOME_NAME = "gnupg"
SHIPPED_KEYS_DIR = Path("keys") / "pgp"
# gpg --recv-keys against an unreachable keyserver gives up well within this.
FETCH_TIMEOUT_S = 120
IMPORT_TIMEOUT_S = 60

# OpenPGP v4 fingerprints have 40 hex digits, v5 ones 64.
_FINGERPRINT_RE = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")
_SHORT_ID_RE = re.compile(r"^(?:0X)?(?:[0-9A-F]{8}|[0-9A-F]{16})$")


@dataclass
class KeyResult:
    """The outcome of preparing one build's keys, with warnings as sentences for the build log."""

    gnupghome: Path
    imported: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_fingerprints(keys: list[str]) -> tuple[list[str], list[str]]:
    """Split validpgpkeys into full fingerprints (upper case) and messages about the rest."""
    valid = []
    messages = []
    for raw in keys:
        key = raw.strip().upper()
        if " " in key and _FINGERPRINT_RE.match(key.replace(" ", "")):
            messages.append(f"validpgpkeys entry '{raw}' contains spaces; write the fingerprint without "
                            f"spaces ({key.replace(' ', '')}), or makepkg will not match it")
        elif _SHORT_ID_RE.match(key):
            messages.append(f"validpgpkeys entry '{raw}' is a short key id; makepkg needs the full "
                            "40-digit fingerprint (gpg --fingerprint shows it)")
        elif not _FINGERPRINT_RE.match(key):
            messages.append(f"validpgpkeys entry '{raw}' is not an OpenPGP fingerprint (40 hex digits)")
        elif key not in valid:
            valid.append(key)
    return valid, messages


def gpg_env(gnupghome: Path) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GNUPGHOME": str(gnupghome), "LANG": "C.UTF-8"}


def run_gpg(gnupghome: Path, args: list[str], user: BuildUser | None, timeout: float,
            stdin_path: Path | None = None) -> subprocess.CompletedProcess:
    argv = ["gpg", "--homedir", str(gnupghome), "--batch", "--no-tty", *args]
    kwargs = user.popen_kwargs() if user else {}
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        return subprocess.run(argv, stdin=stdin, capture_output=True, env=gpg_env(gnupghome),
                              timeout=timeout, **kwargs)
    finally:
        if stdin_path:
            stdin.close()


def last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def create_gnupg_home(work_dir: Path, user: BuildUser | None = None) -> Path:
    """Create WORK/gnupg, mode 0700 and owned by the build user, as gpg requires."""
    home = Path(work_dir) / GNUPG_HOME_NAME
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    if user is not None:
        user.chown_tree(home)
    return home


def has_key(gnupghome: Path, fingerprint: str, user: BuildUser | None) -> bool:
    proc = run_gpg(gnupghome, ["--list-keys", "--with-colons", fingerprint], user, IMPORT_TIMEOUT_S)
    return proc.returncode == 0


def import_shipped_keys(gnupghome: Path, src_dir: Path, user: BuildUser | None = None) -> tuple[list[str], list[str]]:
    """Import every keys/pgp/*.asc of the upload; return the file names imported and warnings."""
    folder = Path(src_dir) / SHIPPED_KEYS_DIR
    imported = []
    warnings = []
    if not folder.is_dir():
        return imported, warnings
    for path in sorted(folder.glob("*.asc")):
        if not path.is_file() or path.is_symlink():
            warnings.append(f"skipped key file {SHIPPED_KEYS_DIR / path.name}: not a regular file")
            continue
        try:
            # gpg reads the key from stdin, so the build user needs no access to src/.
            proc = run_gpg(gnupghome, ["--import"], user, IMPORT_TIMEOUT_S, stdin_path=path)
        except subprocess.TimeoutExpired:
            warnings.append(f"importing {SHIPPED_KEYS_DIR / path.name} timed out after {IMPORT_TIMEOUT_S} s")
            continue
        if proc.returncode != 0:
            warnings.append(f"could not import {SHIPPED_KEYS_DIR / path.name}: {last_line(proc.stderr)}")
            continue
        imported.append(path.name)
    return imported, warnings


def fetch_missing_keys(gnupghome: Path, fingerprints: list[str], user: BuildUser | None = None,
                       keyserver: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """Fetch the fingerprints not yet in gnupghome with gpg --recv-keys.

    Returns (fetched, still missing, warnings). keyserver None uses gpg's
    own default keyserver.
    """
    missing = [fpr for fpr in fingerprints if not has_key(gnupghome, fpr, user)]
    if not missing:
        return [], [], []
    args = ["--keyserver", keyserver] if keyserver else []
    warnings = []
    try:
        proc = run_gpg(gnupghome, [*args, "--recv-keys", *missing], user, FETCH_TIMEOUT_S)
        failure = None if proc.returncode == 0 else last_line(proc.stderr)
    except subprocess.TimeoutExpired:
        failure = f"gpg --recv-keys timed out after {FETCH_TIMEOUT_S} s"
    fetched = [fpr for fpr in missing if has_key(gnupghome, fpr, user)]
    still_missing = [fpr for fpr in missing if fpr not in fetched]
    for fpr in still_missing:
        warnings.append(f"warning: could not fetch PGP key {fpr} ({failure or 'not found on the keyserver'}); "
                        "the build goes on and makepkg's signature check decides")
    return fetched, still_missing, warnings


def stop_gpg_daemons(gnupghome: Path, user: BuildUser | None = None) -> None:
    """Stop the gpg-agent and dirmngr that gpg started for this GnuPG home."""
    if not shutil.which("gpgconf"):
        return
    kwargs = user.popen_kwargs() if user else {}
    try:
        subprocess.run(["gpgconf", "--homedir", str(gnupghome), "--kill", "all"], env=gpg_env(gnupghome),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not stop the gpg daemons of %s: %s", gnupghome, e)


def prepare_build_keys(work_dir: Path, src_dir: Path, validpgpkeys: list[str], *,
                       user: BuildUser | None = None, keyserver: str | None = None,
                       build_id: str = "-") -> KeyResult:
    """Make the build's GnuPG home, import shipped keys and fetch missing validpgpkeys.

    The caller sets GNUPGHOME=result.gnupghome for makepkg and writes
    result.warnings to the build log.
    """
    home = create_gnupg_home(work_dir, user)
    result = KeyResult(gnupghome=home)
    fingerprints, messages = check_fingerprints(validpgpkeys)
    result.warnings.extend(messages)
    # Without keys to import or fetch, no gpg process (and so no daemon) is started.
    if fingerprints or (Path(src_dir) / SHIPPED_KEYS_DIR).is_dir():
        import_and_fetch(result, src_dir, fingerprints, user, keyserver)
    for warning in result.warnings:
        log.warning("build %s: %s", build_id, warning)
    if result.imported or result.fetched:
        log.info("build %s: imported keys %s, fetched %s", build_id, result.imported, result.fetched)
    return result


def import_and_fetch(result: KeyResult, src_dir: Path, fingerprints: list[str], user: BuildUser | None,
                     keyserver: str | None) -> None:
    home = result.gnupghome
    try:
        result.imported, warnings = import_shipped_keys(home, src_dir, user)
        result.warnings.extend(warnings)
        if fingerprints:
            result.fetched, result.missing, warnings = fetch_missing_keys(home, fingerprints, user, keyserver)
            result.warnings.extend(warnings)
    except OSError as e:
        result.warnings.append(f"warning: could not run gpg to prepare PGP keys: {e}")
    finally:
        stop_gpg_daemons(home, user)
