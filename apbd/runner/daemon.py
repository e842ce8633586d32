"""The runner's main loop: notice queued jobs, claim them in order, build a few at a time.

inotify (through watchdog) reports a job the moment its folder is renamed into
jobs/, so a build starts within milliseconds of its publication. A rescan every
RESCAN_INTERVAL_S catches anything inotify missed. Rescans stay cheap with
many job folders: ids already seen are remembered, and only new names cost a
stat. Queued jobs start oldest first (request.json created_at), at most
max_concurrent at a time per runner; several runners may share one spool,
because claiming a job is a rename that only one of them can win.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import threading
import time

import psutil
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from apbd import limits, sandbox
from apbd import spool as spool_format
from apbd.runner import recovery
from apbd.runner.build import Build, RunnerContext, time_scale, TIME_SCALE_ENV
from apbd.runner.builders import Builder, MakepkgBuilder
from apbd.runner.drops import DropImporter
from apbd.spool import Spool

log = logging.getLogger(__name__)


class _SpoolEvents(FileSystemEventHandler):
    """Collects names that appear in jobs/ and drop/ and wakes the main loop."""

    def __init__(self, runner: "Runner"):
        self.runner = runner

    def on_created(self, event):
        self._seen(event.src_path)

    def on_moved(self, event):
        self._seen(event.dest_path)

    def _seen(self, path) -> None:
        path = os.fsdecode(path)
        parent, name = os.path.split(path)
        if parent == str(self.runner.spool.jobs) and spool_format.is_build_id(name):
            self.runner.new_names.append(name)
            self.runner.wake.set()
        elif parent == str(self.runner.spool.drop) and not name.startswith("."):
            self.runner.drops_waiting = True
            self.runner.wake.set()


class Runner:
    """One runner process on one spool."""

    def __init__(self, spool: Spool, builder: Builder, *, architecture: str, max_concurrent: int,
                 build_timeout: int, build_user: str | None, stop_event: threading.Event | None = None,
                 buildroot=None, srcdest_dir=None):
        self.spool = spool
        self.builder = builder
        self.architecture = architecture
        self.max_concurrent = max_concurrent
        self.stop_event = stop_event or threading.Event()
        self.runner_id = f"{socket.gethostname()}-{os.getpid()}"
        self.started_at = time.time()
        self.state_path = spool.runners / f"{self.runner_id}.json"
        scale = time_scale()
        if scale != 1.0:
            log.warning("%s=%s: every timeout is scaled for tests", TIME_SCALE_ENV, scale)
        self.ctx = RunnerContext(spool, self.runner_id, builder, build_timeout, threading.Event(), scale,
                                 buildroot=buildroot, srcdest_dir=srcdest_dir)
        self.drops = DropImporter(spool, build_user=build_user, build_timeout=build_timeout)

        self.wake = threading.Event()
        self.new_names: collections.deque[str] = collections.deque()
        self.drops_waiting = True
        self.known: set[str] = set()
        self.queue: dict[str, float] = {}
        # Jobs another runner builds: checked on each rescan in case that runner dies.
        self.elsewhere: set[str] = set()
        self.running: dict[str, threading.Thread] = {}
        self.observer = None

    # Main loop

    def run(self) -> None:
        """Build jobs until the stop event is set, then stop the running builds."""
        self.spool.create()
        self.check_build_user_access()
        self.remove_stale_states()
        self.write_state()
        self.start_watching()
        log.info("runner %s started on %s: builder %s, architecture %s, at most %d builds at once",
                 self.runner_id, self.spool.root, self.builder.name, self.architecture, self.max_concurrent)
        try:
            self.rescan(first=True)
            self.drops.recover()
            next_rescan = time.monotonic() + limits.RESCAN_INTERVAL_S
            next_heartbeat = time.monotonic() + limits.HEARTBEAT_INTERVAL_S
            while not self.stop_event.is_set():
                self.wake.clear()
                now = time.monotonic()
                try:
                    self.take_new_names()
                    if now >= next_rescan:
                        next_rescan = now + limits.RESCAN_INTERVAL_S
                        self.rescan()
                    if self.drops_waiting:
                        self.drops_waiting = False
                        self.drops.import_all()
                        self.take_new_names()
                    self.reap()
                    self.schedule()
                except Exception:
                    # One broken job folder must not stop the builds of all others.
                    log.exception("runner %s: error in the main loop; retrying at the next rescan",
                                  self.runner_id)
                if now >= next_heartbeat:
                    self.write_state()
                    next_heartbeat = now + limits.HEARTBEAT_INTERVAL_S
                timeout = max(0.0, min(next_rescan, next_heartbeat) - time.monotonic())
                self.wake.wait(timeout)
        finally:
            self.shutdown()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def shutdown(self) -> None:
        """Stop the running builds (each is failed with the reason), then remove the state file."""
        log.info("runner %s stopping; %d build(s) running", self.runner_id, len(self.running))
        self.ctx.stopping.set()
        for thread in list(self.running.values()):
            thread.join()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
        self.state_path.unlink(missing_ok=True)
        log.info("runner %s stopped", self.runner_id)

    # Finding jobs

    def start_watching(self) -> None:
        handler = _SpoolEvents(self)
        self.observer = Observer()
        self.observer.schedule(handler, str(self.spool.jobs), recursive=False)
        self.observer.schedule(handler, str(self.spool.drop), recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def take_new_names(self) -> None:
        while self.new_names:
            self.examine(self.new_names.popleft())

    def examine(self, build_id: str) -> None:
        """Look at a job id for the first time: queue it, or watch it if another runner has it."""
        if build_id in self.known:
            return
        self.known.add(build_id)
        job = self.spool.jobs / build_id
        if (job / spool_format.QUEUED_MARKER).exists():
            try:
                created_at = self.spool.created_at(build_id)
            except (OSError, ValueError) as e:
                # Queue it anyway, last, so a damaged request.json still gets a build and a status.
                log.error("build %s: cannot read request.json (%s); queueing it last", build_id, e)
                created_at = float("inf")
            self.queue[build_id] = created_at
        elif (job / spool_format.CLAIMED_MARKER).exists() and build_id not in self.running:
            self.elsewhere.add(build_id)

    def rescan(self, first: bool = False) -> None:
        """List jobs/ for ids inotify missed, and fail builds whose runner died."""
        for build_id in self.spool.job_ids():
            self.examine(build_id)
        if first and self.elsewhere:
            log.info("runner %s: checking %d claimed build(s) for a dead runner", self.runner_id,
                     len(self.elsewhere))
        for build_id in list(self.elsewhere):
            job = self.spool.jobs / build_id
            if (job / spool_format.CLAIMED_MARKER).exists():
                if recovery.recover_orphan(self.spool, build_id, self.runner_id, self.ctx.scale):
                    self.elsewhere.discard(build_id)
                continue
            self.elsewhere.discard(build_id)
            if (job / spool_format.QUEUED_MARKER).exists():
                # The lock was busy only for a moment, and no runner claimed the job.
                self.queue[build_id] = self.spool.created_at(build_id)
        self.cancel_queued()

    def cancel_queued(self) -> None:
        """Finish queued jobs that have a cancel marker without waiting for their turn."""
        for build_id in list(self.queue):
            if self.spool.cancel_requested(build_id):
                claim = self.spool.claim(build_id)
                self.queue.pop(build_id, None)
                if claim is not None:
                    self.spool.append_log(build_id, "Cancelled before the build started")
                    self.spool.finish(claim, spool_format.CANCELLED, reason="Cancelled before the build started")
                    log.info("build %s cancelled before it started", build_id)

    # Building

    def schedule(self) -> None:
        """Claim and start queued jobs, oldest first, while fewer than max_concurrent run."""
        if self.ctx.stopping.is_set():
            return
        while len(self.running) < self.max_concurrent and self.queue:
            build_id = min(self.queue, key=lambda i: (self.queue[i], i))
            del self.queue[build_id]
            claim = self.spool.claim(build_id)
            if claim is None:
                # Another process holds the lock: a runner claiming it, or the web cancelling it.
                self.elsewhere.add(build_id)
                continue
            log.info("build %s claimed by runner %s", build_id, self.runner_id)
            thread = threading.Thread(target=self.run_build, args=(claim,), name=f"build-{build_id[:8]}")
            self.running[build_id] = thread
            thread.start()
            self.write_state()

    def run_build(self, claim) -> None:
        try:
            Build(self.ctx, claim).run()
        except Exception:
            log.exception("build %s: unexpected error in the build thread", claim.build_id)
        finally:
            self.wake.set()

    def reap(self) -> None:
        finished = [i for i, t in self.running.items() if not t.is_alive()]
        for build_id in finished:
            self.running.pop(build_id).join()
        if finished:
            self.write_state()

    # State file

    def write_state(self) -> None:
        """Write runners/RUNNER_ID.json: who this runner is, what it builds, and a heartbeat."""
        state = {
            "runner_id": self.runner_id,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started_at": self.started_at,
            "heartbeat": time.time(),
            "builder": self.builder.name,
            "clean_chroot": self.builder.clean_chroot,
            "builder_note": self.builder.note,
            "sandbox": self.builder.sandbox,
            "architecture": self.architecture,
            "max_concurrent": self.max_concurrent,
            "running": sorted(self.running),
            "buildroot_recreation_count": 0,
            "buildroot_recreation_builds": [],
            "server_busy_with_buildroot": False,
        }
        if self.ctx.buildroot is not None:
            state.update(self.ctx.buildroot.state())
        try:
            spool_format.write_json_atomic(self.state_path, state)
        except OSError as e:
            log.error("runner %s: cannot write the state file %s: %s", self.runner_id, self.state_path, e)

    def remove_stale_states(self) -> None:
        """Remove the state files that runners of this host left when they were killed."""
        hostname = socket.gethostname()
        for path in self.spool.runners.glob("*.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            pid = state.get("pid")
            if state.get("hostname") == hostname and isinstance(pid, int) and not psutil.pid_exists(pid):
                path.unlink(missing_ok=True)
                log.info("removed the state file of runner %s, which no longer runs", state.get("runner_id"))

    def check_build_user_access(self) -> None:
        """Log an error when the build user cannot reach the job folders (bwrap then fails)."""
        if not isinstance(self.builder, MakepkgBuilder):
            return
        blocked = sandbox.unreachable_folder(self.spool.jobs / "x", self.builder.user)
        if blocked is not None:
            log.error("the build user %s cannot enter %s, so every build will fail; "
                      "allow it with: chmod o+x %s", self.builder.user.name, blocked, blocked)
