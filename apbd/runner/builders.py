"""The tools a build runs with: makechrootpkg in a clean chroot, or plain makepkg.

Both builders take a job's work folder (work/build holds a copy of the sources,
work/pkgdest receives the packages) and return the command that builds it.
`auto` picks makechrootpkg where devtools is installed and makepkg elsewhere,
and says so loudly, because a makepkg build has no clean chroot: it builds
against the host's libraries with no dependency resolution.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apbd import hostinfo, paths, sandbox
from apbd.runner.process import BUILD_ID_ENV, Command

log = logging.getLogger(__name__)

AUTO = "auto"
MAKECHROOTPKG = "makechrootpkg"
MAKEPKG = "makepkg"
# Hidden, for tests of the runner's scheduling only: writes a fake package at once.
TEST_TRIVIAL = "test-trivial"
BUILDER_CHOICES = (AUTO, MAKECHROOTPKG, MAKEPKG)

MAKEPKG_FLAGS = ["--nodeps", "--noconfirm", "--cleanbuild", "--force"]
# Environment that makes makepkg put products where the runner collects them.
_DEST_VARS = ("PKGDEST", "SRCDEST", "SRCPKGDEST", "LOGDEST")


def detect_architecture(override: str | None = None) -> str:
    """Return the architecture to build for: --architecture, pacman.conf, else uname -m."""
    return hostinfo.detect_architecture(override)


@dataclass
class WorkPaths:
    """The folders of one build under jobs/ID/work/."""

    work: Path

    @property
    def startdir(self) -> Path:
        return self.work / "build"

    @property
    def pkgdest(self) -> Path:
        return self.work / "pkgdest"

    @property
    def home(self) -> Path:
        return self.work / "home"

    def dest_env(self) -> dict:
        return {"PKGDEST": str(self.pkgdest), "SRCDEST": str(self.startdir),
                "SRCPKGDEST": str(self.pkgdest), "LOGDEST": str(self.startdir)}


class Builder:
    """One way to build a job; the subclasses fill in the command."""

    name = ""
    clean_chroot = False
    sandbox = "none"
    note = ""

    def header(self) -> list[str]:
        """Return the lines that open every build.log, saying how the build runs."""
        return [f"builder: {self.name}"]

    def command(self, paths_: WorkPaths, chroot_args: Sequence[str] = ()) -> Command:
        """Return the build command; chroot_args are extra makechrootpkg options (bind mounts)."""
        raise NotImplementedError

    def owner(self) -> sandbox.BuildUser | None:
        """Return the user the work folder must belong to, or None to leave it as it is."""
        return None


class MakechrootpkgBuilder(Builder):
    """devtools' makechrootpkg: a clean copy of the buildroot for every build, via sudo."""

    name = MAKECHROOTPKG
    clean_chroot = True

    def __init__(self, buildroot: str, architecture: str, build_user: str | None):
        self.buildroot = buildroot
        self.architecture = architecture
        self.build_user = build_user
        # makechrootpkg downloads and checks the sources as the -U user, in the work folder and
        # with the build's GNUPGHOME, so as root that user must own them. Unprivileged, it is this user.
        self.user = sandbox.resolve_build_user(build_user) if os.geteuid() == 0 else None
        self.note = f"building with makechrootpkg in a clean chroot of {buildroot}"

    def header(self) -> list[str]:
        return [f"builder: makechrootpkg (clean chroot from buildroot {self.buildroot}, "
                f"architecture {self.architecture})"]

    def command(self, paths_: WorkPaths, chroot_args: Sequence[str] = ()) -> Command:
        keep = ",".join([*_DEST_VARS, BUILD_ID_ENV, "GNUPGHOME"])
        argv = ["sudo", f"--preserve-env={keep}"]
        # Under ppc32, uname reports a 32-bit machine, so the chroot detects its 32-bit PowerPC userland.
        if hostinfo.needs_ppc32(self.architecture):
            argv.append("ppc32")
        argv += [MAKECHROOTPKG, "-cuT", "-r", self.buildroot, *chroot_args]
        # As root there is no SUDO_USER to build as, so name the unprivileged user.
        if os.geteuid() == 0 and self.build_user:
            argv += ["-U", self.build_user]
        env = {"PATH": os.environ.get("PATH", sandbox.BUILD_PATH), "LANG": "C.UTF-8",
               **paths_.dest_env()}
        # NOTE: processes inside the systemd-nspawn container lose APBD_BUILD_ID, and a stop
        # signals only sudo's process tree; whether the container always ends with it has not
        # been checked on an Arch host (a check with `machinectl list` would confirm it).
        return Command(argv, paths_.startdir, env)

    def owner(self) -> sandbox.BuildUser | None:
        return self.user


class MakepkgBuilder(Builder):
    """Plain makepkg as the build user, in bwrap where it works; no clean chroot."""

    name = MAKEPKG
    clean_chroot = False

    def __init__(self, build_user: sandbox.BuildUser, use_bwrap: bool, locale_dir: Path | None):
        self.user = build_user
        self.use_bwrap = use_bwrap
        self.locale_dir = locale_dir
        self.config = sandbox.reachable_file(paths.data_file("makepkg.conf"), build_user)
        self.sandbox = "bwrap" if use_bwrap else "none"
        where = "in a bubblewrap sandbox" if use_bwrap else "WITHOUT a sandbox (bubblewrap does not work here)"
        self.note = (f"devtools is not installed: building with makepkg {where}, as user "
                     f"{build_user.name}, without a clean chroot")

    def header(self) -> list[str]:
        lines = ["builder: makepkg (devtools/makechrootpkg is not used on this server)",
                 "WARNING: no clean chroot: the package is built against this host's libraries "
                 "and tools, makedepends are not installed, and dependencies are not checked (--nodeps)"]
        if self.use_bwrap:
            lines.append(f"sandbox: bubblewrap (no network, read-only host), user {self.user.name}")
        else:
            lines.append(f"WARNING: no sandbox: bubblewrap does not work here; the build runs as "
                         f"user {self.user.name} with network access")
        if self.locale_dir is None:
            lines.append(f"WARNING: the {sandbox.LOCALE_NAME} locale is not available; LANG is C.UTF-8")
        return lines

    def owner(self) -> sandbox.BuildUser:
        return self.user

    def command(self, paths_: WorkPaths, chroot_args: Sequence[str] = ()) -> Command:
        inner = [MAKEPKG, "--config", str(self.config), *MAKEPKG_FLAGS]
        env = sandbox.build_env(paths_.home, paths_.dest_env(), self.locale_dir)
        if self.use_bwrap:
            argv = sandbox.sandbox_argv(inner, writable=[paths_.work], readable=[self.config.parent],
                                        chdir=paths_.startdir, locale_dir=self.locale_dir)
        else:
            argv = inner
        return Command(argv, paths_.startdir, env, self.user.popen_kwargs())


class TrivialTestBuilder(Builder):
    """Test only: prints a line and leaves an empty fake package, in a few milliseconds."""

    name = TEST_TRIVIAL
    note = "test-only builder: builds nothing"

    def command(self, paths_: WorkPaths, chroot_args: Sequence[str] = ()) -> Command:
        script = ('echo "trivial build of $APBD_BUILD_ID"; '
                  ': > "$PKGDEST/trivial-1-1-any.pkg.tar.zst"')
        env = {"PATH": sandbox.BUILD_PATH, **paths_.dest_env()}
        return Command(["/bin/sh", "-c", script], paths_.startdir, env)


def make_builder(choice: str, *, buildroot: str, architecture: str, build_user: str | None) -> Builder:
    """Return the builder for --builder choice; raise ValueError for an unknown choice."""
    if choice == TEST_TRIVIAL:
        log.warning("using the test-only builder %s: no package is really built", TEST_TRIVIAL)
        return TrivialTestBuilder()
    if choice not in BUILDER_CHOICES:
        raise ValueError(f"unknown builder {choice!r}; choose one of {', '.join(BUILDER_CHOICES)}")
    if choice == MAKECHROOTPKG or (choice == AUTO and shutil.which(MAKECHROOTPKG)):
        builder = MakechrootpkgBuilder(buildroot, architecture, build_user)
        log.info("builder: %s", builder.note)
        return builder

    user = sandbox.resolve_build_user(build_user)
    use_bwrap = sandbox.bwrap_works(user)
    locale_dir = sandbox.ensure_locale()
    builder = MakepkgBuilder(user, use_bwrap, locale_dir)
    log.warning("builder: %s", builder.note)
    return builder
