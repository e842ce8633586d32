"""Running code from a PKGBUILD as the unprivileged build user, in bubblewrap where it works.

A PKGBUILD is a bash script: reading its metadata and building it both run its
code. apbd therefore never runs it as the service user. When apbd runs as root
it starts the command as the build user (makepkg refuses root anyway); when
apbd runs as an ordinary user, the command runs as that user.

Where unprivileged user namespaces work, the command runs inside bwrap, which
bwrap itself must be started as the build user for: the host is read-only,
there is no network, /tmp is private, and only the folders passed as writable
can be changed. bwrap gets its own PID namespace and --die-with-parent, so
killing bwrap (or the runner) ends every process of the build, including ones
that called setsid. The sandbox also makes a Debian host look more like an
Arch chroot: bash is /bin/sh, and an en_US.UTF-8 locale compiled by localedef
into a folder apbd owns is available through LOCPATH.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BWRAP = "bwrap"
# The probe that checks whether bwrap works takes about 0.05 s here. This bounds a hang.
BWRAP_PROBE_TIMEOUT_S = 20
LOCALE_NAME = "en_US.UTF-8"
LOCALEDEF_TIMEOUT_S = 120
# Top-level folders that are symlinks into /usr on merged-/usr systems, or real folders.
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# PATH inside builds: the usual order on Arch.
BUILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin"


@dataclass(frozen=True)
class BuildUser:
    """The account that runs PKGBUILD code. switch is True when apbd must change to it."""

    name: str
    uid: int
    gid: int
    switch: bool

    def popen_kwargs(self) -> dict:
        """Return the subprocess.Popen arguments that start a child as this user."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown_tree(self, path: Path) -> None:
        """Give path and everything below it to this user (nothing to do without a switch)."""
        if not self.switch:
            return
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


def resolve_build_user(name: str | None) -> BuildUser:
    """Return who runs PKGBUILD code: name when apbd is root, else apbd's own user.

    Raise ValueError when apbd is root and name is missing or unknown, because
    makepkg refuses root and PKGBUILD code must not run as root.
    """
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return BuildUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=False)
    if not name:
        raise ValueError("apbd runs as root, so a build user is needed (--build-user)")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"build user {name!r} does not exist; create it (useradd --system {name}) "
                         "or pass another --build-user") from None
    if entry.pw_uid == 0:
        raise ValueError(f"build user {name!r} is root; pass an unprivileged --build-user")
    return BuildUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


def unreachable_folder(path: Path, user: BuildUser) -> Path | None:
    """Return the first folder above path that user cannot enter, or None when all can be.

    bwrap runs as the build user, so it can bind a folder only if that user
    may search every folder on the way to it.
    """
    if not user.switch:
        return None
    for folder in reversed(Path(path).absolute().parents):
        st = folder.stat()
        if st.st_uid == user.uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid == user.gid:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return folder
    return None


def sandbox_argv(command: list[str], *, writable: list[Path] = (), readable: list[Path] = (),
                 chdir: Path | None = None, locale_dir: Path | None = None) -> list[str]:
    """Return the bwrap command line that runs command in the sandbox.

    writable and readable folders appear at their own paths; everything else
    of the host is read-only or absent, and there is no network.
    """
    argv = [BWRAP, "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr"]
    for name in _ROOT_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--ro-bind", "/etc", "/etc"]
    # makepkg asks pacman for the installed packages (.BUILDINFO); an empty database answers.
    if os.path.isdir("/var/lib/pacman/local"):
        argv += ["--ro-bind", "/var/lib/pacman", "/var/lib/pacman"]
    else:
        argv += ["--dir", "/var/lib/pacman/local"]
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    # Arch's /bin/sh is bash; Debian's is dash, and test suites notice.
    bash = shutil.which("bash", path="/usr/bin:/bin")
    if bash and os.path.realpath("/usr/bin/sh") != os.path.realpath(bash):
        argv += ["--ro-bind", os.path.realpath(bash), "/usr/bin/sh"]
    if locale_dir is not None:
        argv += ["--ro-bind", str(locale_dir), str(locale_dir)]
    for path in readable:
        argv += ["--ro-bind", str(path), str(path)]
    for path in writable:
        argv += ["--bind", str(path), str(path)]
    if chdir is not None:
        argv += ["--chdir", str(chdir)]
    return argv + ["--", *command]


def build_env(home: Path | str, extra: dict | None = None, locale_dir: Path | None = None) -> dict:
    """Return the small, fixed environment PKGBUILD code runs with.

    Nothing of the service's own environment leaks in.
    """
    env = {
        "PATH": BUILD_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        # fakeroot under a user namespace cannot chown to unmapped ids; keep its record instead.
        "FAKEROOTDONTTRYCHOWN": "1",
        # Debian's Python installs to /usr/local unless this selects the system layout.
        "DEB_PYTHON_INSTALL_LAYOUT": "deb_system",
    }
    if locale_dir is not None:
        env["LOCPATH"] = str(locale_dir)
        env["LANG"] = LOCALE_NAME
    env.update(extra or {})
    return env


@functools.lru_cache(maxsize=None)
def bwrap_works(user: BuildUser) -> bool:
    """Tell whether bwrap can start a sandbox as user on this host (probed once)."""
    if shutil.which(BWRAP) is None:
        log.warning("bwrap is not installed: PKGBUILD code runs without a sandbox")
        return False
    argv = sandbox_argv(["/bin/true"])
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=BWRAP_PROBE_TIMEOUT_S, env=build_env("/tmp"),
                                cwd="/", **user.popen_kwargs())
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("bwrap does not work as %s (%s): PKGBUILD code runs without a sandbox", user.name, e)
        return False
    if result.returncode != 0:
        log.warning("bwrap does not work as %s (exit %d: %s): PKGBUILD code runs without a sandbox",
                    user.name, result.returncode, result.stderr.decode(errors="replace").strip())
        return False
    return True


def default_locale_dir() -> Path:
    """Return the folder apbd compiles its locale into: system cache for root, else the user's."""
    if os.geteuid() == 0:
        return Path("/var/cache/apbd/locale")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "apbd" / "locale"


def ensure_locale(folder: Path | None = None) -> Path | None:
    """Compile en_US.UTF-8 into folder once and return the folder for LOCPATH.

    Return None when localedef is missing or fails; builds then run with
    C.UTF-8. The locale is compiled in a temporary folder and renamed into
    place, so concurrent runners never see half of it.
    """
    folder = Path(folder or default_locale_dir())
    if (folder / LOCALE_NAME / "LC_CTYPE").exists():
        return folder
    if shutil.which("localedef") is None:
        log.warning("localedef is not installed: builds run without the %s locale", LOCALE_NAME)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    staging = Path(tempfile.mkdtemp(prefix=".locale-", dir=folder))
    try:
        os.chmod(staging, 0o755)
        result = subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", str(staging / LOCALE_NAME)],
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=LOCALEDEF_TIMEOUT_S)
        if result.returncode != 0 or not (staging / LOCALE_NAME / "LC_CTYPE").exists():
            log.warning("localedef failed (exit %d: %s): builds run without the %s locale",
                        result.returncode, result.stderr.decode(errors="replace").strip(), LOCALE_NAME)
            return None
        try:
            os.rename(staging / LOCALE_NAME, folder / LOCALE_NAME)
        except OSError:
            # Another runner finished first; its copy is as good as ours.
            if not (folder / LOCALE_NAME / "LC_CTYPE").exists():
                raise
        log.info("compiled the %s locale into %s", LOCALE_NAME, folder)
        return folder
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("cannot compile the %s locale into %s (%s): builds run without it", LOCALE_NAME, folder, e)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def reachable_file(path: Path, user: BuildUser) -> Path:
    """Return path, or a copy in apbd's cache folder when user cannot enter path's folders.

    An apbd installed under /root, for one, ships its makepkg.conf where the
    build user cannot read it.
    """
    path = Path(path)
    if unreachable_folder(path, user) is None:
        return path
    folder = default_locale_dir().parent / "shared"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    copy = folder / path.name
    staging = folder / f".{path.name}.{os.getpid()}.tmp"
    shutil.copyfile(path, staging)
    os.chmod(staging, 0o644)
    os.rename(staging, copy)
    return copy
