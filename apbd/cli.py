"""The `apbd` command: `apbd serve` runs a whole server, `apbd submit` sends a build to one.

`apbd serve` starts the web layer (apbd-web) and one runner (apbd-runner) as
two child processes on the same spool. It passes every option to both through
their APB_* environment variables, stops both with SIGTERM on SIGINT, SIGTERM
or SIGHUP, and stops both when either one exits. It is meant for development and demos; a
production host runs the two as separate services.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from apbd import __version__, config

log = logging.getLogger("apbd.cli")

# Seconds that `apbd serve` gives its children to stop after SIGTERM before
# SIGKILL: the runner itself waits limits.KILL_GRACE_S for each build it stops.
SERVE_STOP_GRACE_S = 30
# Seconds `apbd serve` waits for the web layer to accept connections.
SERVE_READY_TIMEOUT_S = 30
CHILD_POLL_INTERVAL_S = 0.2

DEFAULT_SERVER_URL = "http://localhost:8000"
SERVER_URL_ENV = "APB_SERVER_URL"
# The same variable as the server's --token-file, so one setting serves both on one host.
TOKEN_FILE_ENV = "APB_TOKEN_FILE"


def all_options() -> list[config.Option]:
    """Return every option apbd.config declares, each flag once, in declaration order."""
    seen, options = set(), []
    for name, value in vars(config).items():
        if not name.endswith("_OPTIONS") or not isinstance(value, list):
            continue
        for option in value:
            if isinstance(option, config.Option) and option.flag not in seen:
                seen.add(option.flag)
                options.append(option)
    return options


# apbd serve


def option_env(args: argparse.Namespace, options: list[config.Option]) -> dict[str, str]:
    """Turn parsed options into the APB_* variables the children read as their defaults."""
    env = {}
    for option in options:
        value = getattr(args, option.flag[2:].replace("-", "_"))
        if value is None:
            continue
        if option.is_switch:
            env[option.env] = "1" if value else "0"
        else:
            env[option.env] = str(value)
    return env


def start_child(module: str, env: dict[str, str]) -> subprocess.Popen:
    """Start `python -m module` in its own session, so a terminal's Ctrl-C reaches only us."""
    child_env = dict(os.environ)
    child_env.update(env)
    return subprocess.Popen([sys.executable, "-m", module], env=child_env,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_port_open(host: str, port: int, children: list[subprocess.Popen], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(CHILD_POLL_INTERVAL_S)
    return False


def stop_children(children: dict[str, subprocess.Popen], sig: int) -> None:
    """Send sig to every running child, then SIGKILL those still running after the grace."""
    for name, child in children.items():
        if child.poll() is None:
            log.info("sending %s to %s (pid %d)", signal.Signals(sig).name, name, child.pid)
            child.send_signal(sig)
    deadline = time.monotonic() + SERVE_STOP_GRACE_S
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) still runs %d s after the stop signal: killing it",
                        name, child.pid, SERVE_STOP_GRACE_S)
            child.kill()
            child.wait()


def run_serve(args: argparse.Namespace) -> int:
    """Run web and runner until a signal arrives or one of them exits; return the exit code."""
    env = option_env(args, all_options())
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    children = {"apbd-web": start_child("apbd.web", env), "apbd-runner": start_child("apbd.runner", env)}
    for name, child in children.items():
        log.info("started %s (pid %d)", name, child.pid)

    url = f"http://{args.host}:{args.port}"
    if wait_port_open(args.host, args.port, list(children.values()), SERVE_READY_TIMEOUT_S):
        print(f"apbd is serving {url} with spool {args.builds_dir}; press Ctrl-C to stop", flush=True)
    elif not received:
        log.error("the web layer did not accept connections on %s within %d s", url, SERVE_READY_TIMEOUT_S)

    exit_code = 0
    while True:
        if received:
            # SIGHUP too: a closed terminal ends the demo, and neither child reloads on it.
            log.info("stopping on %s", signal.Signals(received[0]).name)
            break
        exited = [(name, child) for name, child in children.items() if child.poll() is not None]
        if exited:
            name, child = exited[0]
            log.error("%s (pid %d) exited with status %d: stopping the other process",
                      name, child.pid, child.returncode)
            exit_code = child.returncode or 1
            break
        time.sleep(CHILD_POLL_INTERVAL_S)

    stop_children(children, signal.SIGTERM)
    return exit_code


# apbd submit


def run_submit_command(args: argparse.Namespace) -> int:
    from apbd import submit

    try:
        return submit.run_submit(Path(args.folder).resolve(), args.server, Path(args.output).resolve(),
                                 args.timeout, args.build_timeout, args.quiet, args.token_file)
    except submit.SubmitError as e:
        print(f"apbd submit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("apbd submit: interrupted; the build goes on on the server", file=sys.stderr)
        return 130


# Parsing


def positive_seconds(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return number


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apbd", description="Build server for Arch Linux packages that speaks the APB server API.")
    parser.add_argument("--version", action="version", version=f"apbd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="run the web layer and a runner together (development and demos)",
        description="Run apbd-web and apbd-runner as two child processes on one spool. "
                    "Every option can also be set by its APB_* environment variable; "
                    "Ctrl-C or SIGTERM stops both.")
    config.add_options(serve, all_options())
    serve.set_defaults(handler=run_serve)

    submit = commands.add_parser(
        "submit", help="send a package folder to a server, follow the build, download the packages",
        description="Pack FOLDER (its PKGBUILD and source files, without src/, pkg/ and built "
                    "packages) and submit it as the APB client does. Print the build id, follow "
                    "the output, then download packages and logs into OUTPUT/ARCH/FILENAME. "
                    "Exit status: 0 completed, 1 failed or cancelled, 2 bad usage, 3 server "
                    "error, 4 timed out waiting.")
    submit.add_argument("folder", metavar="FOLDER", help="folder holding the PKGBUILD")
    submit.add_argument("--server", default=os.environ.get(SERVER_URL_ENV, DEFAULT_SERVER_URL),
                        help=f"server URL (default: {DEFAULT_SERVER_URL}; env {SERVER_URL_ENV})")
    submit.add_argument("--output", default="output",
                        help="folder for downloaded files, as OUTPUT/ARCH/FILENAME (default: ./output)")
    submit.add_argument("--timeout", type=positive_seconds, default=None,
                        help="seconds to wait for the build to finish before giving up "
                             "(default: wait as long as it runs)")
    submit.add_argument("--build-timeout", type=int, default=None,
                        help="build_timeout sent to the server, in seconds (300-14400; "
                             "default: the server's)")
    submit.add_argument("--token-file", default=os.environ.get(TOKEN_FILE_ENV) or None,
                        help="file holding the token to send as 'Authorization: Bearer', for a server "
                             f"started with --token-file (default: none; env {TOKEN_FILE_ENV})")
    submit.add_argument("--quiet", action="store_true", help="do not print the build output")
    submit.set_defaults(handler=run_submit_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
