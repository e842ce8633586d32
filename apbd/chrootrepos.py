"""The farm's extra repositories inside one makechrootpkg build, and nowhere else.

makechrootpkg copies the buildroot and runs every pacman call of the build
(the -u update and makepkg --syncdeps) inside systemd-nspawn, with the
folders given by -D (read-only) and -d (read-write) bound in. apbd writes
the build's own pacman.conf into work/ (the buildroot's file with a section
per extra repository appended) and binds it over /etc/pacman.conf of the
chroot copy. The buildroot's pacman.conf and keyring, and the host's, stay
as they are.

A repository with a gpg_key_id needs its key trusted by pacman, so the build
gets a keyring of its own in work/pacman-keyring. It contains the public keys
and trust database of the buildroot's keyring, so the official repositories
verify as before. It also contains a local key made for this build only and
the repository key, locally signed by that local key. The build's pacman.conf
points GPGDir at that keyring, bound at KEYRING_MOUNT. The key itself comes from the build's
GnuPG home (apbd.gpgkeys): shipped in keys/pgp/ or fetched from a keyserver.

A file:// repository is a folder on the host; it is bound read-only at the
same path, because otherwise no host folder is visible in the chroot.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from apbd import gpgkeys, repos as repo_format
from apbd.sandbox import BuildUser

log = logging.getLogger(__name__)

CONF_NAME = "pacman.conf"
KEYRING_NAME = "pacman-keyring"
KEY_EXPORT_NAME = "repo-keys"
CHROOT_PACMAN_CONF = "/etc/pacman.conf"
KEYRING_MOUNT = "/apbd/pacman-keyring"
DEFAULT_GPGDIR = "/etc/pacman.d/gnupg/"
# The files of a pacman keyring that hold public keys and trust, never secrets.
PUBLIC_KEYRING_FILES = ("pubring.gpg", "pubring.kbx", "trustdb.gpg", "gpg.conf")
# The gpg.conf options pacman-key writes, used when the buildroot's keyring has no gpg.conf.
KEYRING_GPG_CONF = "no-permission-warning\nlock-never\n"
KEY_TIMEOUT_S = 60
SHORT_HOME_PARENT = "/tmp"

_OPTION_RE = re.compile(r"^\s*(\w+)\s*=\s*(.*?)\s*$")


@dataclass
class ChrootRepos:
    """The makechrootpkg arguments and build log lines for one build's extra repositories."""

    args: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def options_value(conf_text: str, option: str) -> str | None:
    """Return the value of option in the [options] section of a pacman.conf, or None."""
    section = None
    for line in conf_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            continue
        match = _OPTION_RE.match(line)
        if section == "options" and match and match.group(1) == option:
            return match.group(2)
    return None


def set_gpgdir(conf_text: str, gpgdir: str) -> str:
    """Return conf_text with GPGDir in [options] set to gpgdir, replacing any GPGDir there."""
    out = []
    section = None
    placed = False
    for line in conf_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            out.append(line)
            if section == "options" and not placed:
                out.append(f"GPGDir = {gpgdir}")
                placed = True
            continue
        match = _OPTION_RE.match(line)
        if section == "options" and match and match.group(1) == "GPGDir":
            continue
        out.append(line)
    if not placed:
        out = ["[options]", f"GPGDir = {gpgdir}", "", *out]
    return "\n".join(out) + "\n"


def local_repo_dir(url: str, name: str, architecture: str) -> Path | None:
    """Return the host folder of a file:// repository, with $repo and $arch filled in as pacman does."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    path = unquote(parts.path).replace("$repo", name).replace("$arch", architecture)
    return Path(path)


def nspawn_path(path: Path | str) -> str:
    """Escape the colons systemd-nspawn would read as the source:target separator."""
    return str(path).replace(":", "\\:")


def bind_ro(source: Path | str, target: str | None = None) -> list[str]:
    spec = nspawn_path(source) if target is None else f"{nspawn_path(source)}:{target}"
    return ["-D", spec]


def bind_rw(source: Path | str, target: str) -> list[str]:
    return ["-d", f"{nspawn_path(source)}:{target}"]


def copy_public_keyring(source: Path, dest: Path) -> list[str]:
    """Copy the public files of the keyring source into dest; return the names copied."""
    copied = []
    for name in PUBLIC_KEYRING_FILES:
        path = source / name
        if path.is_file() and not path.is_symlink():
            shutil.copyfile(path, dest / name)
            copied.append(name)
    return copied


@contextmanager
def short_home(home: Path):
    """Yield a short path to the GnuPG home: a symlink in a fresh folder under /tmp.

    gpg-agent puts its sockets in the home, and a Unix socket path must fit
    in 107 bytes. A keyring deep in the spool can be longer than that.
    """
    alias_dir = Path(tempfile.mkdtemp(prefix="apbd-gpg-", dir=SHORT_HOME_PARENT))
    try:
        alias_dir.chmod(0o755)
        alias = alias_dir / "home"
        alias.symlink_to(home)
        yield alias
    finally:
        shutil.rmtree(alias_dir, ignore_errors=True)


def make_local_key(keyring: Path, build_id: str, user: BuildUser | None) -> str | None:
    """Create this build's local signing key in keyring; return None on success, else gpg's message."""
    uid = f"apbd build {build_id} <apbd-build@localhost>"
    proc = gpgkeys.run_gpg(keyring, ["--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                           user, KEY_TIMEOUT_S)
    return None if proc.returncode == 0 else gpgkeys.last_line(proc.stderr)


def trust_repo_key(keyring: Path, key_file: Path, fingerprint: str, user: BuildUser | None) -> str | None:
    """Import the key in key_file and sign it locally; return None on success, else a reason."""
    proc = gpgkeys.run_gpg(keyring, ["--import"], user, KEY_TIMEOUT_S, stdin_path=key_file)
    if proc.returncode != 0:
        return gpgkeys.last_line(proc.stderr)
    proc = gpgkeys.run_gpg(keyring, ["--yes", "--quick-lsign-key", fingerprint], user, KEY_TIMEOUT_S)
    if proc.returncode != 0:
        return gpgkeys.last_line(proc.stderr)
    proc = gpgkeys.run_gpg(keyring, ["--list-keys", "--with-colons", fingerprint], user, KEY_TIMEOUT_S)
    validity = [line.split(":")[1] for line in proc.stdout.decode("utf-8", "replace").splitlines()
                if line.startswith("pub:")]
    if not validity or validity[0] not in ("f", "u"):
        return "the key is not valid after signing it"
    return None


def export_key(gnupghome: Path, fingerprint: str, dest: Path, user: BuildUser | None) -> bool:
    """Write the key fingerprint from the build's GnuPG home to dest; return False when it is not there."""
    proc = gpgkeys.run_gpg(gnupghome, ["--export", fingerprint], user, KEY_TIMEOUT_S)
    if proc.returncode != 0 or not proc.stdout:
        return False
    dest.write_bytes(proc.stdout)
    return True


class _Preparation:
    """The steps of prepare_chroot_repos for one build."""

    def __init__(self, work: Path, chroot_root: Path, gnupghome: Path, user: BuildUser | None, build_id: str,
                 keyserver: str | None):
        self.keyserver = keyserver
        self.work = work
        self.chroot_root = chroot_root
        self.gnupghome = gnupghome
        self.user = user
        self.build_id = build_id
        self.result = ChrootRepos()

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def build_keyring(self, conf_text: str, keyed: list[dict]) -> bool:
        """Make work/pacman-keyring with the buildroot's keys and the repository keys; False on failure."""
        gpgdir = (options_value(conf_text, "GPGDir") or DEFAULT_GPGDIR).lstrip("/")
        source = self.chroot_root / gpgdir
        keyring = self.work / KEYRING_NAME
        keyring.mkdir(mode=0o700)
        try:
            copied = copy_public_keyring(source, keyring)
        except OSError as e:
            self.note(f"WARNING: cannot read the buildroot's pacman keyring {source}: {e}")
            copied = []
        if not any(name.startswith("pubring") for name in copied):
            self.note(f"WARNING: the buildroot's pacman keyring {source} has no readable public keys; "
                      "the official repositories cannot be verified with this build's keyring")
        if "gpg.conf" not in copied:
            (keyring / "gpg.conf").write_text(KEYRING_GPG_CONF)
        if self.user is not None:
            self.user.chown_tree(keyring)

        exports = self.work / KEY_EXPORT_NAME
        exports.mkdir(mode=0o755)
        if self.user is not None:
            self.user.chown_tree(exports)
        self.fetch_missing([repo["gpg_key_id"] for repo in keyed])
        with short_home(keyring) as home:
            try:
                failure = make_local_key(home, self.build_id, self.user)
                if failure:
                    self.note(f"WARNING: cannot create this build's local pacman key: {failure}")
                    return False
                for repo in keyed:
                    self.trust(home, exports, repo)
            finally:
                gpgkeys.stop_gpg_daemons(home, self.user)
        return True

    def fetch_missing(self, fingerprints: list[str]) -> None:
        try:
            _, _, warnings = gpgkeys.fetch_missing_keys(self.gnupghome, fingerprints, self.user, self.keyserver)
        finally:
            gpgkeys.stop_gpg_daemons(self.gnupghome, self.user)
        for warning in warnings:
            log.info("build %s: %s", self.build_id, warning)

    def trust(self, keyring: Path, exports: Path, repo: dict) -> None:
        fingerprint = repo["gpg_key_id"]
        key_file = exports / f"{fingerprint}.gpg"
        if not export_key(self.gnupghome, fingerprint, key_file, self.user):
            self.note(f"WARNING: the key {fingerprint} of repository [{repo['name']}] was neither shipped in "
                      f"keys/pgp/ nor found on the keyserver; pacman will refuse that repository's packages")
            return
        failure = trust_repo_key(keyring, key_file, fingerprint, self.user)
        if failure:
            self.note(f"WARNING: cannot trust the key {fingerprint} of repository [{repo['name']}]: {failure}")
        else:
            self.note(f"repository [{repo['name']}]: key {fingerprint} is trusted in this build's keyring only")


def prepare_chroot_repos(work: Path, chroot_root: Path, extra_repos: list, *, gnupghome: Path,
                         architecture: str, user: BuildUser | None = None, build_id: str = "-",
                         keyserver: str | None = None) -> ChrootRepos:
    """Write the build's pacman.conf (and keyring) into work; return the makechrootpkg arguments.

    chroot_root is BUILDROOT/root, whose pacman.conf and keyring are read but
    never written. Without extra repositories nothing is written and no
    argument is returned. A repository whose key cannot be trusted is still
    added, with a warning: pacman then refuses its packages, which is the
    safe outcome. keyserver None uses gpg's default. Raises ValueError when the entries are invalid or a name
    is already a repository of the buildroot.
    """
    repos = repo_format.validate_extra_repos(extra_repos)
    prep = _Preparation(Path(work), Path(chroot_root), Path(gnupghome), user, build_id, keyserver)
    if not repos:
        return prep.result
    try:
        conf_text = (prep.chroot_root / CHROOT_PACMAN_CONF.lstrip("/")).read_text()
    except OSError as e:
        raise ValueError(f"cannot read the buildroot's pacman.conf: {e.strerror}") from None
    conf = repo_format.render_pacman_conf(conf_text, repos)

    keyed = [repo for repo in repos if repo.get("gpg_key_id")]
    args = []
    if keyed and prep.build_keyring(conf_text, keyed):
        conf = set_gpgdir(conf, KEYRING_MOUNT + "/")
        args += bind_rw(prep.work / KEYRING_NAME, KEYRING_MOUNT)

    conf_path = prep.work / CONF_NAME
    conf_path.write_text(conf)
    conf_path.chmod(0o644)
    args = [*bind_ro(conf_path, CHROOT_PACMAN_CONF), *args]

    for repo in repos:
        folder = local_repo_dir(repo["url"], repo["name"], architecture)
        if folder is None:
            continue
        if folder.is_dir():
            args += bind_ro(folder)
        else:
            prep.note(f"WARNING: repository [{repo['name']}] points to {folder}, which is not a folder "
                      "on this host")
    names = ", ".join(f"[{repo['name']}]" for repo in repos)
    prep.note(f"extra repositories {names} are added to this build's own pacman.conf, after the "
              "buildroot's repositories")
    log.info("build %s: extra repositories %s", build_id, names)
    prep.result.args = args
    return prep.result
