"""Facts about the build host: the architecture apbd builds for.

The farm groups servers by the architecture they report, so the value must be
the one pacman uses, not the kernel's name for the machine.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)

# uname -m names that pacman spells differently.
MACHINE_TO_PACMAN_ARCH = {
    "ppc64le": "powerpc64le",
    "ppc64": "powerpc64",
    "ppc": "powerpc",
}

# Architectures whose builds need the `ppc32` prefix so that the 32-bit
# userland inside the chroot is detected on a 64-bit kernel.
PPC32_ARCHITECTURES = ("powerpc", "espresso")

_ARCH_LINE_RE = re.compile(r"^\s*Architecture\s*=\s*(.+?)\s*$")


def read_pacman_architecture(pacman_conf: str | os.PathLike) -> str | None:
    """Return the first word of Architecture in the [options] section, or None.

    pacman allows a list of architectures there; the first one is the one
    this host builds for.
    """
    try:
        with open(pacman_conf, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        log.debug("cannot read %s: %s", pacman_conf, e)
        return None
    section = None
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            continue
        if section != "options":
            continue
        match = _ARCH_LINE_RE.match(stripped)
        if match:
            words = match.group(1).split()
            return words[0] if words else None
    return None


def map_machine(machine: str) -> str:
    """Translate a uname -m name into pacman's name for the architecture."""
    return MACHINE_TO_PACMAN_ARCH.get(machine, machine)


def detect_architecture(override: str | None = None,
                        pacman_conf: str | os.PathLike = "/etc/pacman.conf",
                        machine: str | None = None) -> str:
    """Return the architecture this host builds for.

    The order is: the --architecture override, then Architecture from
    pacman.conf unless it is `auto`, then uname -m mapped to pacman's names.
    """
    if override:
        return override
    configured = read_pacman_architecture(pacman_conf)
    if configured and configured != "auto":
        return configured
    if machine is None:
        machine = os.uname().machine
    return map_machine(machine)


def needs_ppc32(architecture: str) -> bool:
    """Tell whether makechrootpkg must run under `ppc32` for this architecture."""
    return architecture in PPC32_ARCHITECTURES
