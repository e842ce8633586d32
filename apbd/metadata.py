"""What a PKGBUILD declares, read by makepkg's own code and never by regular expressions.

read_srcinfo() sources the PKGBUILD as the build user and inside the sandbox
(see apbd.sandbox), because sourcing runs its top-level code. It follows
`makepkg --printsrcinfo` with makepkg's own library (/usr/share/makepkg):
load the makepkg.conf, source the PKGBUILD, run the lint checks for the
fields a .SRCINFO needs (pkgbase, pkgname, pkgver, pkgrel, epoch), then call
write_srcinfo_content. The rest of the lint is skipped, which makes reading
about ten times faster (0.75 s against 6.5 s on this loaded 2-core host).
When the library is not where this expects it, the reader falls back to
`makepkg --printsrcinfo`. In the same shell it reads apb_output_timeout,
which .SRCINFO does not carry.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from apbd import limits, paths, sandbox

log = logging.getLogger(__name__)

# Reading a PKGBUILD takes well under a second; one that takes longer than this is stuck.
SRCINFO_TIMEOUT_S = 60
# Files up to this size are copied when the build user cannot reach the PKGBUILD's folder:
# enough for the PKGBUILD and its install and changelog files, which makepkg checks.
COPY_MAX_FILE_SIZE = 1024 * 1024
# Only this much of makepkg's error output goes into an InvalidPkgbuild detail.
ERROR_TAIL_CHARS = 2000
# The folder of makepkg's library in Debian's makepkg 6.0 and, by its makepkg script, Arch's pacman 7.
# NOTE: only makepkg 6.0 was run here; on pacman 7 a missing file or function means the fallback.
MAKEPKG_LIBRARY = Path("/usr/share/makepkg")
# The library files the fast reader loads. Without any of them it runs makepkg itself.
LIBRARY_FILES = ("util/config.sh", "srcinfo.sh", "lint_pkgbuild/pkgbase.sh",
                 "lint_pkgbuild/pkgname.sh", "lint_pkgbuild/pkgver.sh",
                 "lint_pkgbuild/pkgrel.sh", "lint_pkgbuild/epoch.sh")
# The fast reader's exit status when a library file fails to load or lacks a function it calls.
LIBRARY_UNUSABLE_EXIT = 90
# makepkg's exit status for an invalid PKGBUILD (E_PKGBUILD_ERROR).
PKGBUILD_ERROR_EXIT = 12


class InvalidPkgbuild(Exception):
    """A PKGBUILD that makepkg cannot read or that lacks a needed field; detail is the reason."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@dataclass
class SrcInfo:
    """The metadata of one PKGBUILD, as .SRCINFO states it."""

    pkgbase: str
    pkgnames: list[str]
    pkgver: str
    pkgrel: str
    epoch: str | None = None
    arch: list[str] = field(default_factory=list)
    # pkgname -> arch, for split packages that override the pkgbase's arch.
    package_arch: dict[str, list[str]] = field(default_factory=dict)
    validpgpkeys: list[str] = field(default_factory=list)
    # apb_output_timeout exactly as the PKGBUILD sets it, or None when unset.
    output_timeout_raw: str | None = None

    @property
    def version(self) -> str:
        """The full version as pacman writes it: EPOCH:PKGVER-PKGREL, or PKGVER-PKGREL."""
        base = f"{self.pkgver}-{self.pkgrel}"
        return f"{self.epoch}:{base}" if self.epoch else base


def parse_srcinfo(text: str) -> SrcInfo:
    """Turn makepkg's .SRCINFO text into a SrcInfo; raise InvalidPkgbuild on missing fields.

    makepkg prints exactly one unindented `pkgbase =` line, at the top of the
    .SRCINFO and after everything the PKGBUILD's top-level code printed. So
    parsing starts at the last such line, and lines the PKGBUILD printed, even
    ones that look like .SRCINFO, are skipped.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("pkgbase = ")]
    if starts:
        lines = lines[starts[-1]:]
    base: dict[str, list[str]] = {}
    packages: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in lines:
        key, sep, value = line.strip().partition(" = ")
        if not sep:
            continue
        if key == "pkgbase" and not line.startswith(("\t", " ")):
            current = base
            base.setdefault("pkgbase", []).append(value)
        elif key == "pkgname" and not line.startswith(("\t", " ")):
            if current is None:
                continue
            current = packages.setdefault(value, {})
        elif current is not None:
            current.setdefault(key, []).append(value)

    if not base.get("pkgbase"):
        raise InvalidPkgbuild("The PKGBUILD sets no pkgname: makepkg printed no pkgbase")
    if not packages:
        raise InvalidPkgbuild("The PKGBUILD sets no pkgname")
    pkgver = (base.get("pkgver") or [""])[0]
    if not pkgver:
        raise InvalidPkgbuild("The PKGBUILD sets no pkgver")
    pkgrel = (base.get("pkgrel") or [""])[0]
    if not pkgrel:
        raise InvalidPkgbuild("The PKGBUILD sets no pkgrel")
    epoch = (base.get("epoch") or [None])[0]
    if epoch in ("", "0"):
        epoch = None
    package_arch = {name: fields["arch"] for name, fields in packages.items() if "arch" in fields}
    return SrcInfo(
        pkgbase=base["pkgbase"][0],
        pkgnames=list(packages),
        pkgver=pkgver,
        pkgrel=pkgrel,
        epoch=epoch,
        arch=base.get("arch", []),
        package_arch=package_arch,
        validpgpkeys=base.get("validpgpkeys", []),
    )


def parse_output_timeout(raw: str | None) -> tuple[int, str | None]:
    """Return the output timeout in seconds for apb_output_timeout=raw, and a warning or None.

    An unset value gives the default silently; a value that is not a whole
    number, or is outside the allowed range, gives the default and a warning
    for the build log.
    """
    default = limits.OUTPUT_TIMEOUT_DEFAULT_S
    if raw is None or raw.strip() == "":
        return default, None
    low, high = limits.OUTPUT_TIMEOUT_MIN_S, limits.OUTPUT_TIMEOUT_MAX_S
    try:
        seconds = int(raw.strip())
    except ValueError:
        return default, (f"apb_output_timeout={raw!r} is not a whole number of seconds; "
                         f"using the default of {default} s")
    if not low <= seconds <= high:
        return default, (f"apb_output_timeout={seconds} is outside {low}-{high} s; "
                         f"using the default of {default} s")
    return seconds, None


def _timeout_printer(marker: str) -> str:
    return (f'printf "\\n%s\\n" "{marker}"\n'
            'if [[ -n ${apb_output_timeout+set} ]]; then printf "set=%s" "$apb_output_timeout"; fi\n')


def _makepkg_script(marker: str) -> str:
    # The subshell keeps the PKGBUILD's own variables and exits away from the output.
    return (
        'makepkg --config "$1" --printsrcinfo || exit $?\n'
        f'printf "\\n%s\\n" "{marker}"\n'
        '( source ./PKGBUILD >/dev/null 2>&1 </dev/null\n'
        '  if [[ -n ${apb_output_timeout+set} ]]; then printf "set=%s" "$apb_output_timeout"; fi )\n'
    )


def _library_script(marker: str) -> str:
    """The steps of `makepkg --printsrcinfo`, on makepkg's own library; $1 config, $2 library.

    Only the lint checks for the fields that make a .SRCINFO meaningful run
    here. The rest of makepkg's lint (lint_pkgbuild: options, backup,
    dependencies, package functions...) costs about 0.4 s and is skipped at
    upload on purpose: the build's own makepkg run lints the whole PKGBUILD
    again and fails, with its message in build.log.
    """
    checks = " ".join(f'"$LIBRARY/{name}"' for name in LIBRARY_FILES)
    return (
        'LIBRARY=$2\n'
        'export TEXTDOMAIN=pacman-scripts TEXTDOMAINDIR=/usr/share/locale\n'
        'shopt -s extglob\n'
        f'for file in {checks}; do source "$file" || exit {LIBRARY_UNUSABLE_EXIT}; done\n'
        'declare -F load_makepkg_config source_safe write_srcinfo_content lint_pkgbase lint_pkgname'
        f' lint_pkgver lint_pkgrel lint_epoch >/dev/null || exit {LIBRARY_UNUSABLE_EXIT}\n'
        'load_makepkg_config "$1"\n'
        'startdir=$(pwd -P)\n'
        "if [[ $(<PKGBUILD) = *$'\\r'* ]]; then\n"
        f'  error "PKGBUILD contains CRLF characters and cannot be sourced."; exit {PKGBUILD_ERROR_EXIT}\n'
        'fi\n'
        'source_safe "$startdir/PKGBUILD"\n'
        'pkgbase=${pkgbase:-${pkgname[0]}}\n'
        'lint_failed=0\n'
        'for check in lint_pkgbase lint_pkgname lint_pkgver lint_pkgrel lint_epoch; do\n'
        '  "$check" || lint_failed=1\n'
        'done\n'
        f'(( lint_failed )) && exit {PKGBUILD_ERROR_EXIT}\n'
        'write_srcinfo_content\n'
        + _timeout_printer(marker)
    )


def _library_usable(library: Path) -> bool:
    return all((library / name).is_file() for name in LIBRARY_FILES)


def read_srcinfo(src_dir: Path, build_user: str | None) -> SrcInfo:
    """Read the PKGBUILD in src_dir with makepkg, as build_user and in the sandbox.

    build_user is the account to use when apbd runs as root; an apbd running
    as an ordinary user reads as itself. The folder stays unchanged: makepkg
    gets a private /tmp for its working folders. Raise InvalidPkgbuild when
    makepkg fails or a needed field is missing.
    """
    src_dir = Path(src_dir).absolute()
    if not (src_dir / "PKGBUILD").is_file():
        raise InvalidPkgbuild("There is no PKGBUILD file")
    user = sandbox.resolve_build_user(build_user)
    if sandbox.unreachable_folder(src_dir, user) is None:
        return _read_srcinfo(src_dir, user)

    # The build user cannot enter a folder above src_dir, so read a copy of the small files.
    copy = Path(tempfile.mkdtemp(prefix="apbd-pkgbuild-", dir=os.path.realpath("/tmp")))
    try:
        os.chmod(copy, 0o755)
        for entry in os.scandir(src_dir):
            if entry.is_file(follow_symlinks=False) and entry.stat().st_size <= COPY_MAX_FILE_SIZE:
                shutil.copyfile(entry.path, copy / entry.name)
                os.chmod(copy / entry.name, 0o644)
        return _read_srcinfo(copy, user)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _read_srcinfo(src_dir: Path, user: sandbox.BuildUser) -> SrcInfo:
    config = sandbox.reachable_file(paths.data_file("makepkg.conf"), user)
    marker = f"apbd-srcinfo-end-{uuid.uuid4().hex}"
    if _library_usable(MAKEPKG_LIBRARY):
        stdout, stderr, returncode = _run_reader(_library_script(marker), src_dir, user, config)
        if returncode != LIBRARY_UNUSABLE_EXIT:
            return _srcinfo_from_output(stdout, stderr, returncode, marker, src_dir)
        log.warning("makepkg's library in %s is not usable; reading PKGBUILDs with makepkg "
                    "--printsrcinfo", MAKEPKG_LIBRARY)
    stdout, stderr, returncode = _run_reader(_makepkg_script(marker), src_dir, user, config)
    return _srcinfo_from_output(stdout, stderr, returncode, marker, src_dir)


def _run_reader(script: str, src_dir: Path, user: sandbox.BuildUser,
                config: Path) -> tuple[bytes, bytes, int]:
    """Run the bash script in src_dir as the build user, in the sandbox when bwrap works."""
    command = ["bash", "-c", script, "apbd-read-pkgbuild", str(config), str(MAKEPKG_LIBRARY)]
    scratch = None
    if sandbox.bwrap_works(user):
        locale_dir = sandbox.ensure_locale()
        argv = sandbox.sandbox_argv(command, readable=[src_dir, config.parent], chdir=src_dir,
                                    locale_dir=locale_dir)
        workdir = "/tmp"
    else:
        # NOTE: without bwrap the PKGBUILD's top-level code runs unconfined as the build user.
        locale_dir = None
        argv = command
        scratch = Path(os.path.realpath("/tmp")) / f"apbd-srcinfo-{uuid.uuid4().hex}"
        scratch.mkdir(mode=0o700)
        user.chown_tree(scratch)
        workdir = str(scratch)
    env = sandbox.build_env(workdir, {"BUILDDIR": workdir, "PKGDEST": workdir, "SRCDEST": workdir,
                                      "SRCPKGDEST": workdir, "LOGDEST": workdir}, locale_dir)
    try:
        return _run_bounded(argv, env, src_dir, user)
    finally:
        if scratch is not None:
            subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], check=False)


def _srcinfo_from_output(stdout: bytes, stderr: bytes, returncode: int, marker: str,
                         src_dir: Path) -> SrcInfo:
    """Turn the reader's output into a SrcInfo, or raise InvalidPkgbuild with makepkg's message.

    bash names the PKGBUILD by its full path in syntax errors; the message
    goes to the client, so the server's folder is cut from it.
    """
    if returncode != 0:
        message = stderr.decode(errors="replace").replace(f"{src_dir}/", "")
        message = message.strip()[-ERROR_TAIL_CHARS:]
        for name in ("pkgname", "pkgver"):
            if f"{name} is not allowed to be empty" in message:
                raise InvalidPkgbuild(f"The PKGBUILD sets no {name}. makepkg output: {message}")
        raise InvalidPkgbuild(f"makepkg could not read the PKGBUILD (exit {returncode}): {message}")
    text = stdout.decode(errors="replace")
    srcinfo_text, found, tail = text.rpartition(f"\n{marker}\n")
    if not found:
        raise InvalidPkgbuild("makepkg printed no complete .SRCINFO for the PKGBUILD")
    info = parse_srcinfo(srcinfo_text)
    if tail.startswith("set="):
        info.output_timeout_raw = tail[len("set="):]
    return info


def _run_bounded(argv: list[str], env: dict, cwd: Path, user: sandbox.BuildUser) -> tuple[bytes, bytes, int]:
    """Run argv to its end, or kill its whole process group after SRCINFO_TIMEOUT_S."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(cwd),
                            start_new_session=True, **user.popen_kwargs())
    try:
        stdout, stderr = proc.communicate(timeout=SRCINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise InvalidPkgbuild(f"Reading the PKGBUILD took longer than {SRCINFO_TIMEOUT_S} s; "
                              "its top-level code must not wait or download") from None
    return stdout, stderr, proc.returncode
