"""Command line of apbd-runner, and run() for commands that start a runner in-process.

Two settings exist for tests only and are absent from --help: `--builder
test-trivial` writes an empty fake package instead of building, and the
environment variable APBD_TEST_TIME_SCALE=F multiplies every timeout and the
kill grace by F (0.01 turns the 300 s minimum build timeout into 3 s). The
runner logs a warning when either is in use.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from apbd import config, rlimits, srcdest
from apbd.buildroot import BuildrootError, BuildrootManager
from apbd.runner.builders import BUILDER_CHOICES, MAKECHROOTPKG, detect_architecture, make_builder
from apbd.runner.daemon import Runner
from apbd.spool import Spool

log = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apbd-runner",
        description="Build the queued jobs of an apbd spool with makechrootpkg or makepkg.")
    config.add_options(parser, config.SPOOL_OPTIONS + config.RUNNER_OPTIONS + config.SHARED_OPTIONS)
    return parser


def run(args: argparse.Namespace, stop_event: threading.Event | None = None) -> int:
    """Run a runner with parsed options until stop_event is set; return an exit status.

    The caller sets up logging. Signals are not touched, so `apbd serve` can
    run this in a thread and stop it through stop_event.
    """
    architecture = detect_architecture(args.architecture)
    try:
        builder = make_builder(args.builder, buildroot=args.buildroot, architecture=architecture,
                               build_user=args.build_user)
    except ValueError as e:
        log.error("cannot start the runner: %s", e)
        return 2
    rlimits.raise_soft_limits()
    buildroot, srcdest_dir = None, None
    if builder.name == MAKECHROOTPKG:
        buildroot = BuildrootManager(args.buildroot, args.buildroot_autorecreate)
        try:
            buildroot.ensure()
        except BuildrootError as e:
            log.error("cannot start the runner: the buildroot %s could not be created: %s", args.buildroot, e)
            return 2
        srcdest_dir = srcdest.read_srcdest()
        if srcdest_dir is not None:
            srcdest.remove_orphaned_locks(srcdest_dir)
    runner = Runner(Spool(args.builds_dir), builder, architecture=architecture,
                    max_concurrent=args.max_concurrent, build_timeout=args.build_timeout,
                    build_user=args.build_user, stop_event=stop_event,
                    buildroot=buildroot, srcdest_dir=srcdest_dir)
    if stop_event is not None:
        # Wake the main loop at once when the caller stops it.
        threading.Thread(target=lambda: (stop_event.wait(), runner.wake.set()), daemon=True).start()
    runner.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.builder not in BUILDER_CHOICES and args.builder != "test-trivial":
        make_parser().error(f"--builder must be one of {', '.join(BUILDER_CHOICES)}, not {args.builder!r}")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_event = threading.Event()

    def request_stop(signum, _frame):
        log.info("received %s: stopping the runner", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return run(args, stop_event)
