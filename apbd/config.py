"""Command-line options and APB_* environment variables, shared by every command.

Each option is declared once with its default and its environment variable, so
`--help` of every command lists both and the two processes agree on defaults.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable

from apbd import limits


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    default: Any
    help: str
    type: Callable | None = str
    is_switch: bool = False
    # How --help describes a default that is computed at run time.
    default_text: str | None = None


def _size(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, not {value}")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return number


def _build_timeout(value: str) -> int:
    number = int(value)
    if not limits.BUILD_TIMEOUT_MIN_S <= number <= limits.BUILD_TIMEOUT_MAX_S:
        raise argparse.ArgumentTypeError(
            f"must be between {limits.BUILD_TIMEOUT_MIN_S} and {limits.BUILD_TIMEOUT_MAX_S} seconds, not {value}")
    return number


HOME = os.path.expanduser("~")

SPOOL_OPTIONS = [
    Option("--builds-dir", "APB_BUILDS_DIR", os.path.join(HOME, ".apb", "builds"),
           "spool folder: one job folder per build, shared by web and runner"),
    Option("--debug", "APB_DEBUG", False, "log debug messages", is_switch=True),
]

WEB_OPTIONS = [
    Option("--host", "APB_HOST", "localhost", "address to listen on"),
    Option("--port", "APB_PORT", 8000, "TCP port to listen on", int),
    Option("--threads", "APB_THREADS", 512,
           "web worker threads; each open live-output stream holds one", _positive),
    Option("--max-file-size", "APB_MAX_FILE_SIZE", limits.MAX_FILE_SIZE_DEFAULT,
           "maximum size of one uploaded or extracted file, in bytes", _size),
    Option("--max-request-size", "APB_MAX_REQUEST_SIZE", limits.MAX_REQUEST_SIZE_DEFAULT,
           "maximum size of a whole upload request, in bytes", _size),
    Option("--allow-from", "APB_ALLOW_FROM", "",
           "comma-separated CIDR networks allowed to submit, cancel and clean up; empty: any address"),
    Option("--token-file", "APB_TOKEN_FILE", "",
           "file holding a token that submit, cancel and cleanup must send as 'Authorization: Bearer'; "
           "empty: no token"),
]

RUNNER_OPTIONS = [
    Option("--buildroot", "APB_BUILDROOT", os.path.join(HOME, ".apb", "buildroot"),
           "buildroot (clean chroot) used by makechrootpkg"),
    Option("--max-concurrent", "APB_MAX_CONCURRENT", limits.MAX_CONCURRENT_DEFAULT,
           "maximum number of builds running at once", _positive),
    Option("--build-timeout", "APB_BUILD_TIMEOUT", limits.BUILD_TIMEOUT_DEFAULT_S,
           f"default build timeout in seconds, from {limits.BUILD_TIMEOUT_MIN_S} to {limits.BUILD_TIMEOUT_MAX_S}",
           _build_timeout),
    Option("--builder", "APB_BUILDER", "auto",
           "auto, makechrootpkg or makepkg; auto uses makechrootpkg where devtools is installed"),
    Option("--buildroot-autorecreate", "APB_BUILDROOT_AUTORECREATE", 0,
           "recreate the buildroot with mkarchroot after this many builds; 0 never does", _non_negative),
]

SHARED_OPTIONS = [
    Option("--build-user", "APB_BUILD_USER", "apbd-build",
           "unprivileged user that runs makepkg when apbd runs as root"),
    Option("--architecture", "APB_ARCHITECTURE", None,
           "architecture to report and build for", default_text="from /etc/pacman.conf, else uname -m"),
]


def add_options(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    """Add options to parser; a set environment variable replaces the built-in default."""
    for option in options:
        raw = os.environ.get(option.env)
        if option.is_switch:
            default = option.default if raw is None else raw.lower() in ("1", "true", "yes", "on")
            parser.add_argument(option.flag, action="store_true", default=default,
                                help=f"{option.help} (env {option.env})")
            continue
        default = option.default
        if raw not in (None, ""):
            try:
                default = option.type(raw) if option.type else raw
            except (ValueError, argparse.ArgumentTypeError) as e:
                parser.error(f"invalid {option.env}={raw!r}: {e}")
        if option.default_text:
            shown = option.default_text
        elif option.default == "":
            shown = "off"
        else:
            shown = option.default
        parser.add_argument(option.flag, type=option.type, default=default, metavar=option.flag[2:].upper().replace("-", "_"),
                            help=f"{option.help} (default: {shown}; env {option.env})")
