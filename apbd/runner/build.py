"""One claimed build from start to end: prepare, run, watch, collect, finish.

The steps, in order: note the start in status.json, copy src/ to work/build
for the build user, open build.log with lines saying which builder runs, start
the build, copy its output to the log while watching the timeouts, the cancel
marker and the runner's own shutdown, move the packages from work/pkgdest to
packages/ once the build has succeeded, write the final status and remove work/.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from apbd import chrootrepos, gpgkeys, limits, srcdest
from apbd import spool as spool_format
from apbd.runner.builders import Builder, WorkPaths
from apbd.runner.process import BuildProcess, build_processes, signal_build
from apbd.spool import Claim, Spool

log = logging.getLogger(__name__)

# Seconds between checks of the cancel marker and the timeouts while a build runs.
POLL_INTERVAL_S = 0.5
# Writing a build's final status on a full disk: attempts, and seconds between them.
FINISH_ATTEMPTS = 30
FINISH_RETRY_S = 2
# Test only: multiplies every timeout and the kill grace, so tests need not wait minutes.
TIME_SCALE_ENV = "APBD_TEST_TIME_SCALE"


def time_scale() -> float:
    """Return the factor from APBD_TEST_TIME_SCALE (1 when unset); for tests only."""
    raw = os.environ.get(TIME_SCALE_ENV, "")
    try:
        value = float(raw) if raw else 1.0
    except ValueError:
        log.error("ignoring %s=%r: not a number", TIME_SCALE_ENV, raw)
        return 1.0
    return value if value > 0 else 1.0


class SetupFailed(Exception):
    """A step before the build command failed; the message is the build's reason."""


@dataclass
class RunnerContext:
    """The settings and state that every build of one runner shares."""

    spool: Spool
    runner_id: str
    builder: Builder
    default_build_timeout: int
    stopping: threading.Event
    scale: float = 1.0
    # makechrootpkg only: the buildroot (apbd.buildroot.BuildrootManager) and the shared SRCDEST.
    buildroot: object | None = None
    srcdest_dir: Path | None = None


class Build:
    """One claimed job being built. run() does every step and writes a final status, even on errors."""

    def __init__(self, ctx: RunnerContext, claim: Claim):
        self.ctx = ctx
        self.spool = ctx.spool
        self.claim = claim
        self.build_id = claim.build_id
        self.job = self.spool.job_dir(self.build_id)
        self.paths = WorkPaths(self.job / spool_format.WORK_DIR)

    def note(self, text: str) -> None:
        self.spool.append_log(self.build_id, text)

    def run(self) -> dict:
        """Build the job and write its final status; return that status."""
        try:
            if self.spool.cancel_requested(self.build_id):
                log.info("build %s cancelled before it started", self.build_id)
                self.note("Cancelled before the build started")
                return self.spool.finish(self.claim, spool_format.CANCELLED,
                                         reason="Cancelled before the build started")
            return self.build()
        except Exception as e:
            log.exception("build %s: apbd failed to run the build", self.build_id)
            # A full disk is the usual cause here, and work/ holds most of what the build wrote.
            self.remove_work()
            return self.finish_despite_errors(spool_format.FAILED, f"apbd failed to run the build: {e}")
        finally:
            self.remove_work()
            self.claim.release()

    def finish_despite_errors(self, state: str, reason: str) -> dict:
        """Write the final status, retrying while the spool's disk has no room for it.

        The claim stays held meanwhile, so no other runner takes the job over.
        After FINISH_ATTEMPTS the error is raised and the job is left claimed;
        the next runner start then marks it failed.
        """
        noted = False
        for attempt in range(1, FINISH_ATTEMPTS + 1):
            try:
                if not noted:
                    self.note(reason)
                    noted = True
                return self.spool.finish(self.claim, state, reason=reason)
            except OSError as e:
                if attempt == FINISH_ATTEMPTS:
                    raise
                log.error("build %s: cannot write its final status (%s); retry %d of %d in %d s",
                          self.build_id, e, attempt, FINISH_ATTEMPTS - 1, FINISH_RETRY_S)
                time.sleep(FINISH_RETRY_S)
        raise AssertionError("unreachable")

    def build(self) -> dict:
        build_timeout, output_timeout = self.timeouts()
        start = time.time()
        self.spool.update_status(self.claim, status=spool_format.BUILDING, start_time=start,
                                 runner_id=self.ctx.runner_id, builder=self.ctx.builder.name,
                                 clean_chroot=self.ctx.builder.clean_chroot,
                                 build_timeout=build_timeout, output_timeout=output_timeout)
        log.info("build %s started by runner %s with %s", self.build_id, self.ctx.runner_id,
                 self.ctx.builder.name)
        for line in self.ctx.builder.header():
            self.note(line)

        self.prepare_work()
        gnupghome = self.prepare_keys()
        host = self.hold_host_resources()
        if host is None:
            return self.finish_stopped_before_start(start)
        try:
            try:
                chroot_args = self.prepare_extra_repos(gnupghome)
            except SetupFailed as e:
                return self.finish_before_start(start, spool_format.FAILED, str(e))
            command = self.ctx.builder.command(self.paths, chroot_args)
            command.env["GNUPGHOME"] = str(gnupghome)
            process = BuildProcess(self.build_id, command, self.job / spool_format.LOG_FILE)
            self.spool.update_status(self.claim, build_pid=process.pid, build_pgid=process.pgid,
                                     **({"build_started": process.create_time} if process.create_time else {}))
            try:
                state, reason = self.supervise(process, build_timeout, output_timeout)
            finally:
                process.close()
        finally:
            host.close()
        end = time.time()
        exit_code = process.returncode

        if state == spool_format.COMPLETED:
            moved = self.collect_artifacts()
            if not moved:
                state, reason = spool_format.FAILED, f"{self.ctx.builder.name} succeeded but produced no package"
            else:
                self.note(f"Packages: {', '.join(moved)}")
        if process.bytes_lost:
            lost = f"{process.bytes_lost} bytes of build output were lost: the disk was full"
            reason = f"{reason}; {lost}" if reason else lost
            if state == spool_format.COMPLETED:
                state = spool_format.FAILED
        if reason:
            self.note(reason)
        self.note(f"Build {state} in {end - start:.1f} s")
        log.info("build %s %s (exit code %s)%s", self.build_id, state, exit_code,
                 f": {reason}" if reason else "")
        fields = {"end_time": end, "duration": round(end - start, 3)}
        if exit_code is not None:
            fields["exit_code"] = exit_code
        if reason:
            fields["reason"] = reason
        return self.spool.finish(self.claim, state, **fields)

    def prepare_extra_repos(self, gnupghome: Path) -> list[str]:
        """Add the farm's extra_repos to this build's chroot; return makechrootpkg's extra arguments.

        Raises SetupFailed when they cannot be added: building without them
        would fail later, or worse, build against other packages than the
        farm asked for.
        """
        repos = (self.spool.read_status(self.build_id) or {}).get("extra_repos") or []
        if not repos:
            return []
        names = ", ".join(str(r.get("name", "?")) for r in repos if isinstance(r, dict))
        if self.ctx.buildroot is None:
            self.note(f"WARNING: extra repositories {names} are not used: {self.ctx.builder.name} installs "
                      "no dependencies (--nodeps), so no pacman.conf is involved")
            return []
        try:
            prepared = chrootrepos.prepare_chroot_repos(
                self.paths.work, self.ctx.buildroot.buildroot / "root", repos, gnupghome=gnupghome,
                architecture=getattr(self.ctx.builder, "architecture", ""), user=self.ctx.builder.owner(),
                build_id=self.build_id)
        except (OSError, ValueError) as e:
            raise SetupFailed(f"Cannot add the extra repositories {names}: {e}") from None
        for line in prepared.notes:
            self.note(line)
        return prepared.args

    def timeouts(self) -> tuple[int, int]:
        """Return the build timeout and output timeout of this job, in seconds."""
        request = self.spool.read_request(self.build_id) or {}
        status = self.spool.read_status(self.build_id) or {}
        build_timeout = request.get("build_timeout") or self.ctx.default_build_timeout
        output_timeout = status.get("output_timeout") or limits.OUTPUT_TIMEOUT_DEFAULT_S
        return int(build_timeout), int(output_timeout)

    def prepare_work(self) -> None:
        """Copy src/ into work/build and give work/ to the build user."""
        if self.paths.work.exists():
            shutil.rmtree(self.paths.work)
        (self.job / spool_format.PACKAGES_DIR).mkdir(mode=0o755, exist_ok=True)
        self.paths.work.mkdir(mode=0o755)
        shutil.copytree(self.job / spool_format.SOURCES_DIR, self.paths.startdir, symlinks=True)
        self.paths.pkgdest.mkdir()
        self.paths.home.mkdir(mode=0o700)
        owner = self.ctx.builder.owner()
        if owner is not None:
            owner.chown_tree(self.paths.work)

    def prepare_keys(self) -> Path:
        """Make the build's GnuPG home with the keys of validpgpkeys; return its path for GNUPGHOME."""
        status = self.spool.read_status(self.build_id) or {}
        keys = gpgkeys.prepare_build_keys(self.paths.work, self.paths.startdir, status.get("validpgpkeys", []),
                                          user=self.ctx.builder.owner(), build_id=self.build_id)
        for warning in keys.warnings:
            self.note(warning)
        return keys.gnupghome

    def stop_requested(self) -> bool:
        return self.spool.cancel_requested(self.build_id) or self.ctx.stopping.is_set()

    def hold_host_resources(self) -> contextlib.ExitStack | None:
        """Take the buildroot and this pkgbase's SRCDEST lock; return None when stopped while waiting.

        The SRCDEST lock is held for the whole build, because makechrootpkg
        downloads the sources and builds in one command.
        """
        host = contextlib.ExitStack()
        try:
            if self.ctx.buildroot is not None:
                host.enter_context(self.ctx.buildroot.use(self.build_id, self.note,
                                                          should_stop=self.stop_requested))
            pkgbase = (self.spool.read_status(self.build_id) or {}).get("pkgbase")
            if self.ctx.srcdest_dir is not None and pkgbase:
                host.enter_context(srcdest.acquire_srcdest_lock(self.ctx.srcdest_dir, pkgbase, on_wait=self.note,
                                                                build_id=self.build_id))
        except InterruptedError:
            host.close()
            return None
        return host

    def finish_stopped_before_start(self, start: float) -> dict:
        if self.spool.cancel_requested(self.build_id):
            return self.finish_before_start(start, spool_format.CANCELLED, "Cancelled by request")
        return self.finish_before_start(start, spool_format.FAILED, "The runner stopped during the build "
                                        f"(runner {self.ctx.runner_id} was shut down)")

    def finish_before_start(self, start: float, state: str, reason: str) -> dict:
        self.note(reason)
        log.info("build %s %s before the build command started: %s", self.build_id, state, reason)
        end = time.time()
        return self.spool.finish(self.claim, state, reason=reason, end_time=end, duration=round(end - start, 3))

    def supervise(self, process: BuildProcess, build_timeout: int, output_timeout: int) -> tuple[str, str | None]:
        """Copy output until the build ends; stop it on timeout, cancel or shutdown.

        Return the final state and the reason (None for a normal success).
        """
        scale = self.ctx.scale
        started = time.monotonic()
        kill_deadline = None
        state, reason = None, None
        while True:
            process.pump(POLL_INTERVAL_S)
            if process.exited() and process.eof:
                break
            now = time.monotonic()

            if kill_deadline is None:
                if self.spool.cancel_requested(self.build_id):
                    state, reason = spool_format.CANCELLED, "Cancelled by request"
                elif now - started > build_timeout * scale:
                    state, reason = spool_format.FAILED, f"Build timeout of {build_timeout} s exceeded"
                elif now - process.last_output > output_timeout * scale:
                    state, reason = spool_format.FAILED, f"No output for {output_timeout} s"
                elif self.ctx.stopping.is_set():
                    state, reason = (spool_format.FAILED, "The runner stopped during the build "
                                     f"(runner {self.ctx.runner_id} was shut down)")
                elif process.exited():
                    # The first process is gone, but a process it started keeps the pipe open.
                    leftovers = build_processes(self.build_id, pgid=process.pgid)
                    self.note(f"The build left {len(leftovers)} process(es) running; stopping them")
                    state = spool_format.COMPLETED if process.returncode == 0 else spool_format.FAILED
                    reason = None if process.returncode == 0 else self.exit_reason(process.returncode)
                if state is not None:
                    log.info("build %s: stopping: %s", self.build_id, reason or "leftover processes")
                    if reason:
                        self.note(f"Stopping the build: {reason}")
                    process.signal_tree(signal.SIGTERM)
                    kill_deadline = now + limits.KILL_GRACE_S * scale
            elif now >= kill_deadline:
                pids = process.signal_tree(signal.SIGKILL)
                if pids:
                    log.warning("build %s: killed %s after the grace period", self.build_id, pids)
                kill_deadline = now + POLL_INTERVAL_S
                if process.exited() and not build_processes(self.build_id, process.pid, process.pgid):
                    # Nothing is left that could still write: the pipe is closed or orphaned.
                    break

        # A process that called setsid outside bwrap survives the group; end it as well.
        leftovers = signal_build(self.build_id, signal.SIGKILL, pgid=process.pgid)
        if leftovers:
            self.note(f"Killed processes left behind by the build: {leftovers}")
        if state is None:
            if process.returncode == 0:
                return spool_format.COMPLETED, None
            return spool_format.FAILED, self.exit_reason(process.returncode)
        return state, reason

    def exit_reason(self, returncode: int) -> str:
        if returncode < 0:
            return f"{self.ctx.builder.name} was killed by signal {-returncode}"
        return f"{self.ctx.builder.name} exited with status {returncode}"

    def collect_artifacts(self) -> list[str]:
        """Move every package the build left in work/pkgdest into packages/; return the names.

        Each move is a rename within the job folder, so packages/ never contains
        a half-written file.
        """
        packages = self.job / spool_format.PACKAGES_DIR
        packages.mkdir(exist_ok=True)
        moved = []
        if not self.paths.pkgdest.is_dir():
            return moved
        for entry in sorted(os.scandir(self.paths.pkgdest), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False) or ".pkg.tar" not in entry.name:
                continue
            os.rename(entry.path, packages / entry.name)
            os.chmod(packages / entry.name, 0o644)
            moved.append(entry.name)
        return moved

    def remove_work(self) -> None:
        if self.paths.work.exists():
            shutil.rmtree(self.paths.work, onerror=_make_writable_and_retry)


def _make_writable_and_retry(function, path, _excinfo) -> None:
    # Builds leave read-only folders (Go module caches, for one); give the owner write access.
    parent = Path(path).parent
    try:
        os.chmod(parent, 0o700)
        function(path)
    except OSError as e:
        log.error("cannot remove %s: %s", path, e)
