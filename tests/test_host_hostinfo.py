import os

import pytest

from apbd import hostinfo


def write_conf(tmp_path, text):
    path = tmp_path / "pacman.conf"
    path.write_text(text)
    return path


def test_override_wins_over_pacman_conf(tmp_path):
    conf = write_conf(tmp_path, "[options]\nArchitecture = aarch64\n")
    assert hostinfo.detect_architecture("powerpc", conf, machine="x86_64") == "powerpc"


def test_pacman_conf_architecture_used(tmp_path):
    conf = write_conf(tmp_path, "# comment\n[options]\nHoldPkg = pacman\nArchitecture = aarch64\n[core]\nInclude = x\n")
    assert hostinfo.detect_architecture(None, conf, machine="x86_64") == "aarch64"


def test_pacman_conf_first_of_list(tmp_path):
    conf = write_conf(tmp_path, "[options]\nArchitecture = armv7h armv6h\n")
    assert hostinfo.detect_architecture(None, conf, machine="x86_64") == "armv7h"


def test_pacman_conf_auto_falls_through(tmp_path):
    conf = write_conf(tmp_path, "[options]\nArchitecture = auto\n")
    assert hostinfo.detect_architecture(None, conf, machine="ppc64le") == "powerpc64le"


def test_commented_architecture_ignored(tmp_path):
    conf = write_conf(tmp_path, "[options]\n#Architecture = aarch64\n")
    assert hostinfo.detect_architecture(None, conf, machine="x86_64") == "x86_64"


def test_architecture_outside_options_ignored(tmp_path):
    conf = write_conf(tmp_path, "[options]\n[custom]\nArchitecture = aarch64\n")
    assert hostinfo.detect_architecture(None, conf, machine="x86_64") == "x86_64"


def test_missing_pacman_conf_uses_machine(tmp_path):
    assert hostinfo.detect_architecture(None, tmp_path / "absent.conf", machine="aarch64") == "aarch64"


@pytest.mark.parametrize("machine, expected", [
    ("ppc64le", "powerpc64le"),
    ("ppc64", "powerpc64"),
    ("ppc", "powerpc"),
    ("x86_64", "x86_64"),
    ("riscv64", "riscv64"),
])
def test_machine_mapping(tmp_path, machine, expected):
    assert hostinfo.detect_architecture(None, tmp_path / "absent.conf", machine=machine) == expected


def test_default_machine_is_uname(tmp_path):
    expected = hostinfo.map_machine(os.uname().machine)
    assert hostinfo.detect_architecture(None, tmp_path / "absent.conf") == expected


@pytest.mark.parametrize("arch, expected", [
    ("powerpc", True),
    ("espresso", True),
    ("powerpc64le", False),
    ("powerpc64", False),
    ("x86_64", False),
])
def test_needs_ppc32(arch, expected):
    assert hostinfo.needs_ppc32(arch) is expected
