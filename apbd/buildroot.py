"""The buildroot that makechrootpkg copies for every build, and its periodic recreation.

makechrootpkg -c -r BUILDROOT builds in a fresh copy of BUILDROOT/root. That
root is made once with devtools' mkarchroot from the host's pacman.conf and
makepkg.conf (mkarchroot's -C and -M copy both into the chroot) with
base-devel and ccache installed. With --buildroot-autorecreate N it is made
anew after every N builds, so packages left from updates do not pile up.

Recreation never happens while a build uses the buildroot. Once it is due,
new builds wait until the running builds finish. The first waiting build then
recreates it before it starts, and gets the longer kill grace meanwhile. The new root is made beside the old one and swapped in only
when mkarchroot succeeds, so a failed recreation keeps the old buildroot.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from apbd import limits

log = logging.getLogger(__name__)

MKARCHROOT = "mkarchroot"
BUILDROOT_PACKAGES = ("base-devel", "ccache")
HOST_PACMAN_CONF = "/etc/pacman.conf"
HOST_MAKEPKG_CONF = "/etc/makepkg.conf"
# mkarchroot downloads and installs a base system; this bounds a hung mirror.
MKARCHROOT_TIMEOUT_S = 3600
# Seconds between checks of should_stop while a build waits for a recreation.
WAIT_POLL_S = 0.5

Runner = Callable[..., subprocess.CompletedProcess]


class BuildrootError(Exception):
    """mkarchroot or the swap of the new buildroot failed; the message names the step."""


def mkarchroot_argv(root: Path, pacman_conf: str, makepkg_conf: str) -> list[str]:
    """Return the command that creates the chroot root (BUILDROOT/root)."""
    return ["sudo", MKARCHROOT, "-C", pacman_conf, "-M", makepkg_conf, str(root), *BUILDROOT_PACKAGES]


def remove_tree_argv(path: Path) -> list[str]:
    """Return the command that removes a root-owned chroot tree an unprivileged runner cannot delete."""
    return ["sudo", "rm", "-rf", "--one-file-system", str(path)]


def stoppable_runner(should_stop: Callable[[], bool] | None, grace: float | None = None) -> Runner:
    """Return a subprocess.run stand-in that ends the command grace seconds after should_stop() turns True.

    mkarchroot stopped half way leaves a broken tree, so a cancelled build
    lets it run up to the buildroot grace before SIGTERM (which sudo passes
    on), then SIGKILL.
    """

    if grace is None:
        grace = limits.KILL_GRACE_BUILDROOT_S

    def run(argv: list[str], *, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
        started = time.monotonic()
        stop_deadline = None
        with subprocess.Popen(argv, **kwargs) as proc:
            output = []
            reader = None
            if proc.stdout is not None:
                reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
                reader.start()
            while True:
                try:
                    proc.wait(WAIT_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if timeout is not None and now - started > timeout:
                    proc.kill()
                    proc.wait()
                    raise subprocess.TimeoutExpired(argv, timeout)
                if stop_deadline is None and should_stop is not None and should_stop():
                    log.info("stop requested while %s runs; waiting up to %.0f s for it", argv[:2], grace)
                    stop_deadline = now + grace
                elif stop_deadline is not None and now >= stop_deadline:
                    proc.terminate()
                    try:
                        proc.wait(limits.KILL_GRACE_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    break
            if reader is not None:
                reader.join(limits.KILL_GRACE_S)
            return subprocess.CompletedProcess(argv, proc.returncode, b"".join(output), None)

    return run


def run_step(argv: list[str], run: Runner, what: str) -> None:
    log.info("buildroot: running %s", " ".join(argv))
    try:
        proc = run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   timeout=MKARCHROOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildrootError(f"{what} timed out after {MKARCHROOT_TIMEOUT_S} s") from None
    except OSError as e:
        raise BuildrootError(f"{what} could not start: {e}") from None
    if proc.returncode != 0:
        output = (proc.stdout or b"").decode("utf-8", "replace").strip().splitlines()
        tail = output[-1] if output else "no output"
        raise BuildrootError(f"{what} exited with status {proc.returncode}: {tail}")


def create_buildroot(buildroot: Path, *, run: Runner = subprocess.run, pacman_conf: str = HOST_PACMAN_CONF,
                     makepkg_conf: str = HOST_MAKEPKG_CONF) -> None:
    """Create BUILDROOT/root with mkarchroot; raise BuildrootError when it fails."""
    buildroot.mkdir(parents=True, exist_ok=True)
    run_step(mkarchroot_argv(buildroot / "root", pacman_conf, makepkg_conf), run, "mkarchroot")
    if not (buildroot / "root").is_dir():
        raise BuildrootError(f"mkarchroot succeeded but {buildroot / 'root'} does not exist")


def ensure_buildroot(buildroot: str | os.PathLike, run: Runner = subprocess.run, *,
                     pacman_conf: str = HOST_PACMAN_CONF, makepkg_conf: str = HOST_MAKEPKG_CONF) -> bool:
    """Create the buildroot when BUILDROOT/root is missing; return True when it was created."""
    buildroot = Path(buildroot)
    if (buildroot / "root").is_dir():
        return False
    log.info("buildroot %s is missing; creating it with mkarchroot", buildroot)
    create_buildroot(buildroot, run=run, pacman_conf=pacman_conf, makepkg_conf=makepkg_conf)
    return True


def remove_tree(path: Path, run: Runner) -> None:
    if not path.exists():
        return
    if os.geteuid() == 0:
        shutil.rmtree(path)
    else:
        run_step(remove_tree_argv(path), run, f"removing {path}")


def recreate_buildroot(buildroot: Path, *, run: Runner = subprocess.run, pacman_conf: str = HOST_PACMAN_CONF,
                       makepkg_conf: str = HOST_MAKEPKG_CONF) -> None:
    """Make a new buildroot beside the old one and swap it in; keep the old one if mkarchroot fails."""
    fresh = buildroot.with_name(buildroot.name + ".new")
    old = buildroot.with_name(buildroot.name + ".old")
    remove_tree(fresh, run)
    try:
        create_buildroot(fresh, run=run, pacman_conf=pacman_conf, makepkg_conf=makepkg_conf)
    except BuildrootError:
        try:
            remove_tree(fresh, run)
        except BuildrootError as e:
            log.warning("could not remove the failed new buildroot %s: %s", fresh, e)
        raise
    remove_tree(old, run)
    os.rename(buildroot, old)
    os.rename(fresh, buildroot)
    try:
        remove_tree(old, run)
    except BuildrootError as e:
        # The new buildroot is in place; the old one only takes space until the next recreation.
        log.warning("could not remove the old buildroot %s: %s", old, e)


class BuildrootManager:
    """Counts the builds that used the buildroot and recreates it after every `autorecreate` builds.

    autorecreate 0 never recreates. Builds call use(build_id) around their
    makechrootpkg run; state() gives the runner state file's buildroot fields.
    """

    def __init__(self, buildroot: str | os.PathLike, autorecreate: int = 0, *, run: Runner | None = None,
                 pacman_conf: str = HOST_PACMAN_CONF, makepkg_conf: str = HOST_MAKEPKG_CONF):
        self.buildroot = Path(buildroot)
        self.autorecreate = autorecreate
        self.run = run
        self.pacman_conf = pacman_conf
        self.makepkg_conf = makepkg_conf
        self.builds_since_recreation = 0
        self.recreations = 0
        self.failed_recreations = 0
        self.active: set[str] = set()
        self.recreating: list[str] = []
        self._cond = threading.Condition()

    def ensure(self) -> bool:
        """Create the buildroot if it is missing (runner start); return True when created."""
        with self._cond:
            return ensure_buildroot(self.buildroot, self.run or stoppable_runner(None), pacman_conf=self.pacman_conf,
                                    makepkg_conf=self.makepkg_conf)

    @property
    def recreation_due(self) -> bool:
        return self.autorecreate > 0 and self.builds_since_recreation >= self.autorecreate

    def state(self) -> dict:
        """Return the buildroot fields of the runner state file and GET /'s queue_status."""
        with self._cond:
            return {
                "buildroot_recreation_count": len(self.recreating),
                "buildroot_recreation_builds": list(self.recreating),
                "server_busy_with_buildroot": bool(self.recreating) or (self.recreation_due and bool(self.active)),
            }

    def is_recreating(self, build_id: str) -> bool:
        """Tell whether build_id is recreating the buildroot now (its cancel waits the longer grace)."""
        with self._cond:
            return build_id in self.recreating

    @contextmanager
    def use(self, build_id: str, note: Callable[[str], None] | None = None,
            should_stop: Callable[[], bool] | None = None):
        """Hold the buildroot for one build; recreate it first when due and no build uses it.

        note receives sentences for the build log. should_stop is polled
        while waiting for other builds to finish, and when it returns True
        the build gives up waiting and raises InterruptedError. While this
        build recreates the buildroot, a True should_stop lets mkarchroot
        run up to limits.KILL_GRACE_BUILDROOT_S longer before it is stopped;
        the old buildroot stays and InterruptedError follows.
        """
        self._enter(build_id, note, should_stop)
        try:
            yield self
        finally:
            with self._cond:
                self.active.discard(build_id)
                self.builds_since_recreation += 1
                self._cond.notify_all()

    def _enter(self, build_id: str, note, should_stop) -> None:
        told = False
        with self._cond:
            while True:
                if self.recreating or (self.recreation_due and self.active):
                    if not told and note:
                        note("waiting for the buildroot: it is being recreated after "
                             f"{self.autorecreate} builds once the running builds finish")
                    told = True
                    if should_stop and should_stop():
                        raise InterruptedError("stopped while waiting for the buildroot")
                    self._cond.wait(WAIT_POLL_S)
                    continue
                if self.recreation_due:
                    self.recreating.append(build_id)
                    break
                self.active.add(build_id)
                return
        # This build recreates the buildroot; no other build uses it meanwhile.
        self._recreate(build_id, note, should_stop)
        stopped = should_stop is not None and should_stop()
        with self._cond:
            self.recreating.remove(build_id)
            if not stopped:
                self.active.add(build_id)
            self._cond.notify_all()
        if stopped:
            raise InterruptedError("stopped while recreating the buildroot")

    def _recreate(self, build_id: str, note, should_stop) -> None:
        started = time.monotonic()
        log.info("build %s: recreating buildroot %s after %d builds", build_id, self.buildroot,
                 self.builds_since_recreation)
        if note:
            note(f"recreating the buildroot {self.buildroot} after {self.builds_since_recreation} builds")
        try:
            recreate_buildroot(self.buildroot, run=self.run or stoppable_runner(should_stop),
                               pacman_conf=self.pacman_conf,
                               makepkg_conf=self.makepkg_conf)
        except (BuildrootError, OSError) as e:
            self.failed_recreations += 1
            message = f"recreating the buildroot failed ({e}); keeping the old buildroot"
            log.error("build %s: %s", build_id, message)
            if note:
                note(message)
        else:
            self.recreations += 1
            log.info("build %s: buildroot recreated in %.0f s", build_id, time.monotonic() - started)
            if note:
                note(f"buildroot recreated in {time.monotonic() - started:.0f} s")
        with self._cond:
            # Counted from now on either way: a failing mirror must not make every build retry.
            self.builds_since_recreation = 0
