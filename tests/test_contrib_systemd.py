"""Checks of the systemd units, sysusers, tmpfiles and sudoers files with systemd's and sudo's own tools.

CI needs the Debian packages systemd (systemd-analyze, systemd-sysusers,
systemd-tmpfiles) and sudo (visudo).
"""

import configparser
import shutil
import subprocess
from pathlib import Path

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "systemd"
UNITS = ("apbd-web.service", "apbd-runner.service")


def require_tool(name):
    path = shutil.which(name)
    assert path, f"{name} is missing: install it (apt-get install systemd sudo) to run these checks"
    return path


def read_unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(CONTRIB / name)
    return parser


def stub_units(tmp_path):
    """Copy the units into tmp_path with ExecStart pointing at stub programs of the same name.

    systemd-analyze verify requires ExecStart to exist; nothing else in the
    units is changed.
    """
    copies = []
    for unit in UNITS:
        text = (CONTRIB / unit).read_text()
        program = unit.removesuffix(".service")
        original = f"ExecStart=/usr/bin/{program}\n"
        assert original in text, f"{unit} must start /usr/bin/{program}"
        stub = tmp_path / "bin" / program
        stub.parent.mkdir(exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        copy = tmp_path / unit
        copy.write_text(text.replace(original, f"ExecStart={stub}\n"))
        copies.append(copy)
    return copies


def test_units_pass_systemd_analyze_verify(tmp_path):
    tool = require_tool("systemd-analyze")
    copies = stub_units(tmp_path)
    proc = subprocess.run([tool, "verify", "--man=no", *map(str, copies)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    # verify only warns about unknown or invalid settings; any message is a fault.
    assert proc.stderr.strip() == ""
    assert proc.stdout.strip() == ""


def test_bad_setting_is_noticed(tmp_path):
    tool = require_tool("systemd-analyze")
    web, _ = stub_units(tmp_path)
    web.write_text(web.read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    proc = subprocess.run([tool, "verify", "--man=no", str(web)], capture_output=True, text=True, timeout=120)
    assert "bogus" in proc.stderr


def test_web_unit_is_hardened():
    service = read_unit("apbd-web.service")["Service"]
    assert service["User"] == "apbd"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/apbd/builds"
    assert service["Environment"]
    for setting in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices", "RestrictSUIDSGID"):
        assert service[setting] == "yes", setting
    assert service["CapabilityBoundingSet"] == ""


def test_runner_unit_allows_sudo_and_long_stop():
    service = read_unit("apbd-runner.service")["Service"]
    assert service["User"] == "apbd"
    # Each of these implies NoNewPrivileges for a unit without CAP_SYS_ADMIN, which breaks sudo.
    for setting in ("NoNewPrivileges", "SystemCallFilter", "ProtectKernelModules", "ProtectKernelLogs",
                    "ProtectKernelTunables", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
                    "MemoryDenyWriteExecute", "LockPersonality", "RestrictRealtime", "RestrictSUIDSGID",
                    "PrivateDevices", "RestrictAddressFamilies", "SystemCallArchitectures"):
        assert setting not in service, setting
    assert int(service["TimeoutStopSec"]) > 300
    assert service["KillMode"] == "mixed"


def test_sysusers_and_tmpfiles_create_the_layout(tmp_path):
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    subprocess.run([sysusers, f"--root={root}", str(CONTRIB / "apbd.sysusers")], check=True,
                   capture_output=True, timeout=60)
    passwd = (root / "etc" / "passwd").read_text()
    assert passwd.startswith("apbd:x:")
    uid = int(passwd.split(":")[2])
    subprocess.run([tmpfiles, "--create", f"--root={root}", str(CONTRIB / "apbd.tmpfiles")], check=True,
                   capture_output=True, timeout=60)
    for folder in ("var/lib/apbd/builds", "var/lib/apbd/buildroot"):
        info = (root / folder).stat()
        assert info.st_uid == uid, folder
        assert oct(info.st_mode & 0o777) == "0o755", folder


def test_sudoers_parses_and_allows_only_devtools():
    visudo = require_tool("visudo")
    path = CONTRIB / "apbd.sudoers"
    proc = subprocess.run([visudo, "-cf", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = [line for line in path.read_text().splitlines() if line.startswith("apbd ")]
    assert rules == ["apbd ALL=(root) NOPASSWD: APBD_DEVTOOLS, APBD_BUILDROOT_RM"]
    text = path.read_text()
    assert "Cmnd_Alias APBD_DEVTOOLS = /usr/bin/makechrootpkg, /usr/bin/mkarchroot, /usr/bin/arch-nspawn\n" in text
