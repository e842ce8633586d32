"""The `apbd` command: `apbd serve` runs a whole server, `apbd submit` sends a build to one.

`apbd serve` starts the web layer (apbd-web) and one runner (apbd-runner) as
two child processes on the same spool. It passes every option to both through
their APB_* environment variables and stops both with SIGTERM on SIGINT,
SIGTERM or SIGHUP. A child that dies is started again after a pause that
doubles while it keeps dying soon after its start. apbd serve stops both
instead when a child dies before the web layer first accepts connections,
exits with the configuration error status, or would need more than
MAX_RESTARTS_IN_A_ROW restarts in a row. It is meant for development and demos; a production host runs
the two as separate services.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from apbd import __version__, config, limits

log = logging.getLogger("apbd.cli")

# Seconds that `apbd serve` gives its children to stop after SIGTERM before
# SIGKILL: the runner itself waits limits.KILL_GRACE_S for each build it stops.
SERVE_STOP_GRACE_S = 30
# Seconds `apbd serve` waits for the web layer to accept connections.
SERVE_READY_TIMEOUT_S = 30
CHILD_POLL_INTERVAL_S = 0.2
# Seconds before `apbd serve` starts a dead child again: the first pause, doubled
# for each further death in a row, up to the maximum.
RESTART_DELAY_FIRST_S = 1.0
RESTART_DELAY_MAX_S = 30.0
# A child that ran at least this many seconds before it died starts a new series of deaths in a row.
CHILD_STABLE_RUN_S = 60.0
# Deaths in a row after which `apbd serve` stops instead of restarting the child again.
MAX_RESTARTS_IN_A_ROW = 5
# apbd-web and apbd-runner exit with this status on an invalid option, as argparse does:
# restarting cannot help.
CHILD_CONFIG_ERROR_STATUS = 2

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


@dataclass
class Child:
    """A child process of `apbd serve` and its deaths in a row, for the restart pause."""

    name: str
    module: str
    process: subprocess.Popen
    started_at: float
    deaths_in_a_row: int = 0
    restart_at: float | None = None


def start_child(name: str, module: str, env: dict[str, str]) -> Child:
    """Start `python -m module` in its own session, so a terminal's Ctrl-C reaches only us."""
    child_env = dict(os.environ)
    child_env.update(env)
    process = subprocess.Popen([sys.executable, "-m", module], env=child_env,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    log.info("started %s (pid %d)", name, process.pid)
    return Child(name, module, process, time.monotonic())


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def restart_delay(deaths_in_a_row: int) -> float:
    """Return the seconds to wait before the next start of a child that died this many times in a row."""
    return min(RESTART_DELAY_FIRST_S * 2 ** (deaths_in_a_row - 1), RESTART_DELAY_MAX_S)


def schedule_restart(child: Child, now: float) -> bool:
    """Set when a child that just died starts again; False when apbd serve should stop instead."""
    returncode = child.process.returncode
    if now - child.started_at >= CHILD_STABLE_RUN_S:
        child.deaths_in_a_row = 0
    child.deaths_in_a_row += 1
    if returncode == CHILD_CONFIG_ERROR_STATUS:
        log.error("%s (pid %d) %s, which means a configuration error: stopping apbd serve",
                  child.name, child.process.pid, describe_exit(returncode))
        return False
    if child.deaths_in_a_row > MAX_RESTARTS_IN_A_ROW:
        log.error("%s (pid %d) %s and has died %d times in a row, each within %d s of its start: "
                  "stopping apbd serve", child.name, child.process.pid, describe_exit(returncode),
                  child.deaths_in_a_row, CHILD_STABLE_RUN_S)
        return False
    delay = restart_delay(child.deaths_in_a_row)
    log.error("%s (pid %d) %s: restarting it in %.0f s (restart %d of at most %d in a row)",
              child.name, child.process.pid, describe_exit(returncode), delay, child.deaths_in_a_row,
              MAX_RESTARTS_IN_A_ROW)
    child.restart_at = now + delay
    return True


def restart_child(child: Child, env: dict[str, str]) -> None:
    fresh = start_child(child.name, child.module, env)
    child.process, child.started_at, child.restart_at = fresh.process, fresh.started_at, None


def wait_port_open(host: str, port: int, children: list[Child], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.process.poll() is not None for child in children):
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(CHILD_POLL_INTERVAL_S)
    return False


def stop_children(children: list[Child], sig: int) -> None:
    """Send sig to every running child, then SIGKILL those still running after the grace."""
    for child in children:
        if child.process.poll() is None:
            log.info("sending %s to %s (pid %d)", signal.Signals(sig).name, child.name, child.process.pid)
            child.process.send_signal(sig)
    deadline = time.monotonic() + SERVE_STOP_GRACE_S
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) still runs %d s after the stop signal: killing it",
                        child.name, child.process.pid, SERVE_STOP_GRACE_S)
            child.process.kill()
            child.process.wait()


def exit_status_of(child: Child) -> int:
    """Return the status apbd serve exits with when child's death stops it: the child's own, else 1."""
    returncode = child.process.returncode
    return returncode if returncode and returncode > 0 else 1


def supervise(children: list[Child], env: dict[str, str], received: list[int]) -> int:
    """Restart dead children until a signal arrives or one must not restart; return the exit status."""
    while not received:
        now = time.monotonic()
        for child in children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    restart_child(child, env)
            elif child.process.poll() is not None and not schedule_restart(child, now):
                return exit_status_of(child)
        time.sleep(CHILD_POLL_INTERVAL_S)
    # SIGHUP too: a closed terminal ends the demo, and neither child reloads on it.
    log.info("stopping on %s", signal.Signals(received[0]).name)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Run web and runner until a signal arrives or a child cannot be restarted; return the exit code."""
    env = option_env(args, all_options())
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    children = [start_child("apbd-web", "apbd.web", env), start_child("apbd-runner", "apbd.runner", env)]

    url = f"http://{args.host}:{args.port}"
    exit_code = None
    if wait_port_open(args.host, args.port, children, SERVE_READY_TIMEOUT_S):
        print(f"apbd is serving {url} with spool {args.builds_dir}; press Ctrl-C to stop", flush=True)
    elif not received:
        dead = [child for child in children if child.process.poll() is not None]
        if dead:
            # Dying before the first connection is a bad option or a port in use: restarting repeats it.
            log.error("%s (pid %d) %s while apbd serve started: stopping", dead[0].name,
                      dead[0].process.pid, describe_exit(dead[0].process.returncode))
            exit_code = exit_status_of(dead[0])
        else:
            log.error("the web layer did not accept connections on %s within %d s", url, SERVE_READY_TIMEOUT_S)

    if exit_code is None:
        exit_code = supervise(children, env, received)
    stop_children(children, signal.SIGTERM)
    return exit_code


# apbd submit


def choose_server_url(option_value: str | None) -> tuple[str, str]:
    """Return the server URL to use and where it came from: --server, APB_SERVER_URL or the default."""
    if option_value is not None:
        return option_value, "--server"
    from_env = os.environ.get(SERVER_URL_ENV)
    if from_env:
        return from_env, SERVER_URL_ENV
    return DEFAULT_SERVER_URL, "the default server URL"


def run_submit_command(args: argparse.Namespace) -> int:
    from apbd import submit

    server, server_source = choose_server_url(args.server)
    try:
        return submit.run_submit(Path(args.folder).resolve(), server, Path(args.output).resolve(),
                                 args.timeout, args.build_timeout, args.quiet, args.token_file,
                                 server_source=server_source)
    except submit.SubmitError as e:
        print(f"apbd submit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("apbd submit: interrupted before anything was sent", file=sys.stderr)
        return submit.EXIT_INTERRUPTED


# Parsing


def positive_seconds(value: str) -> float:
    """Parse --timeout; argparse shows the ArgumentTypeError's message as it is."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return number


def build_timeout_seconds(value: str) -> int:
    """Parse --build-timeout within the range the server accepts, so a bad value fails before the upload."""
    low, high = limits.BUILD_TIMEOUT_MIN_S, limits.BUILD_TIMEOUT_MAX_S
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, not {value!r}") from None
    if not low <= seconds <= high:
        raise argparse.ArgumentTypeError(f"must be between {low} and {high} seconds, not {seconds}")
    return seconds


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apbd", description="Build server for Arch Linux packages that speaks the APB server API.")
    parser.add_argument("--version", action="version", version=f"apbd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="run the web layer and a runner together (development and demos)",
        description="Run apbd-web and apbd-runner as two child processes on one spool. "
                    "Every option can also be set by its APB_* environment variable. "
                    "Ctrl-C or SIGTERM stops both; a child that dies is started again after "
                    f"{RESTART_DELAY_FIRST_S:.0f} s, doubling up to {RESTART_DELAY_MAX_S:.0f} s, "
                    f"and after {MAX_RESTARTS_IN_A_ROW} deaths in a row apbd serve stops.")
    config.add_options(serve, all_options())
    serve.set_defaults(handler=run_serve)

    submit = commands.add_parser(
        "submit", help="send a package folder to a server, follow the build, download the packages",
        description="Pack FOLDER (its PKGBUILD and source files, without src/, pkg/ and built "
                    "packages) and submit it as the APB client does. Print the build id, follow "
                    "the output, then download packages and logs into OUTPUT/ARCH/FILENAME. "
                    "Exit status: 0 completed, 1 failed or cancelled, 2 bad usage, 3 server "
                    "error, 4 timed out waiting.")
    submit.add_argument("folder", metavar="FOLDER", help="folder that contains the PKGBUILD")
    submit.add_argument("--server", metavar="URL", default=None,
                        help=f"base URL of the server, with http:// or https:// (default: {DEFAULT_SERVER_URL}; "
                             f"env {SERVER_URL_ENV})")
    submit.add_argument("--output", metavar="OUTPUT", default="output",
                        help="folder for downloaded files, as OUTPUT/ARCH/FILENAME (default: ./output)")
    submit.add_argument("--timeout", metavar="SECONDS", type=positive_seconds, default=None,
                        help="seconds to wait for the build to finish before giving up "
                             "(default: wait as long as it runs)")
    submit.add_argument("--build-timeout", metavar="SECONDS", type=build_timeout_seconds, default=None,
                        help=f"build_timeout sent to the server, in seconds ({limits.BUILD_TIMEOUT_MIN_S}-"
                             f"{limits.BUILD_TIMEOUT_MAX_S}; default: the server's)")
    submit.add_argument("--token-file", metavar="FILE", default=os.environ.get(TOKEN_FILE_ENV) or None,
                        help="file that contains the token to send as 'Authorization: Bearer', for a server "
                             f"that requires one (default: none; env {TOKEN_FILE_ENV})")
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
