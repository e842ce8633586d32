"""Property tests of the PKGBUILD metadata reader (apbd.metadata).

read_srcinfo runs the real makepkg in the sandbox (about half a second per
PKGBUILD), so its properties get eight examples each; the pure parsers get
hundreds. The PKGBUILDs print fake .SRCINFO lines from their top-level code,
because that output comes before makepkg's own and must never be taken for it.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apbd import limits
from apbd.metadata import InvalidPkgbuild, SrcInfo, parse_output_timeout, parse_srcinfo, read_srcinfo
from tests.support.servers import make_reachable

BUILD_USER = "apbd-build"

pkgnames = st.from_regex(r"\A[a-z0-9][a-z0-9@_+-]{0,15}\Z")
pkgvers = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+]{0,11}\Z")
pkgrels = st.sampled_from(["1", "2", "10", "1.1"])
epochs = st.one_of(st.none(), st.integers(min_value=1, max_value=99).map(str))
arches = st.sampled_from([["any"], ["x86_64"], ["x86_64", "aarch64"]])
# Lines a PKGBUILD's top-level code prints before makepkg's .SRCINFO.
noise_lines = st.lists(st.sampled_from([
    "pkgbase = forged-base", "\tpkgver = 666", "pkgname = forged-name", "\tpkgrel = 99", "\tepoch = 7",
    "\tarch = forged-arch", "pkgbase = ", "= =", "\tvalidpgpkeys = FORGED", "hello", "",
]), max_size=4)
settings_makepkg = settings(max_examples=8, deadline=None,
                            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def write_pkgbuild(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_reachable(folder)
    (folder / "PKGBUILD").write_text(text)
    os.chmod(folder / "PKGBUILD", 0o644)
    return folder


def pkgbuild_text(pkgbase, split, pkgver, pkgrel, epoch, arch, noise, timeout_raw) -> str:
    lines = [f"printf '%s\\n' {' '.join(repr(n) for n in noise)}" if noise else ""]
    if split:
        lines.append(f"pkgbase={pkgbase}")
        lines.append(f"pkgname=({' '.join(split)})")
    else:
        lines.append(f"pkgname={pkgbase}")
    lines += [f"pkgver={pkgver}", f"pkgrel={pkgrel}", f"arch=({' '.join(arch)})", "license=(MIT)"]
    if epoch:
        lines.append(f"epoch={epoch}")
    if timeout_raw is not None:
        lines.append(f"apb_output_timeout={timeout_raw}")
    names = split or [pkgbase]
    for name in names:
        function = f"package_{name}" if split else "package"
        lines.append(f"{function}() {{ :; }}")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@settings_makepkg
@given(pkgbase=pkgnames, extra=st.lists(pkgnames, max_size=2, unique=True), pkgver=pkgvers, pkgrel=pkgrels,
       epoch=epochs, arch=arches, noise=noise_lines,
       timeout_raw=st.one_of(st.none(), st.sampled_from(["60", "3600", "86400", "59", "abc", "'1 2'"])))
@example(pkgbase="probe", extra=[], pkgver="1.0", pkgrel="1", epoch=None, arch=["any"],
         noise=["pkgbase = forged-base", "\tpkgver = 666"], timeout_raw=None)
def test_read_srcinfo_round_trip(tmp_path_factory, pkgbase, extra, pkgver, pkgrel, epoch, arch, noise,
                                 timeout_raw):
    split = [pkgbase + "-" + n for n in extra] if extra else []
    split = [n for n in split if len(n) < 60]
    folder = write_pkgbuild(tmp_path_factory.mktemp("pkg"),
                            pkgbuild_text(pkgbase, split, pkgver, pkgrel, epoch, arch, noise, timeout_raw))
    before = sorted(os.listdir(folder))

    info = read_srcinfo(folder, BUILD_USER)

    assert isinstance(info, SrcInfo)
    assert info.pkgbase == pkgbase
    assert info.pkgnames == (split or [pkgbase])
    assert info.pkgver == pkgver
    assert info.pkgrel == pkgrel
    assert info.epoch == epoch
    assert info.arch == arch
    assert info.validpgpkeys == []
    expected_version = f"{epoch}:{pkgver}-{pkgrel}" if epoch else f"{pkgver}-{pkgrel}"
    assert info.version == expected_version
    if timeout_raw is None:
        assert info.output_timeout_raw is None
    else:
        assert info.output_timeout_raw == timeout_raw.strip("'")
    assert sorted(os.listdir(folder)) == before, "reading the PKGBUILD changed its folder"


shell_garbage = st.text(alphabet=string.ascii_letters + string.digits + " =()'\"$;&|<>{}[]\n\t#-_./*", max_size=200)


@pytest.mark.slow
@settings_makepkg
@given(prefix=shell_garbage, garbage=shell_garbage)
@example(prefix="", garbage="pkgname=\npkgver=1\npkgrel=1\narch=(any)")
@example(prefix="", garbage="pkgname=x\npkgrel=1\narch=(any)")
@example(prefix="exec sleep 100 &", garbage="pkgname=x\npkgver=1\npkgrel=1\narch=(any)")
@example(prefix="", garbage="pkgname=(a b)\npkgver=1-2\npkgrel=1\narch=(any)")
def test_read_srcinfo_garbage(tmp_path_factory, prefix, garbage):
    folder = write_pkgbuild(tmp_path_factory.mktemp("junk"), prefix + "\n" + garbage + "\n")
    try:
        info = read_srcinfo(folder, BUILD_USER)
    except InvalidPkgbuild as e:
        assert e.detail
        assert "Traceback" not in e.detail
    else:
        assert info.pkgbase
        assert info.pkgnames
        assert info.pkgver
        assert info.pkgrel
        assert all(name and "\n" not in name for name in info.pkgnames)
        assert "-" not in info.pkgver
        assert ":" not in info.pkgver


def test_read_srcinfo_confined(tmp_path_factory):
    """The PKGBUILD's top-level code runs as the build user, cannot write its folder and has no network."""
    folder = tmp_path_factory.mktemp("confined")
    outside = Path("/var/tmp") / f"apbd-pkgbuild-escape-{os.getpid()}"
    text = ("id -u > ./uid-written 2>/dev/null\n"
            f"touch {outside} 2>/dev/null\n"
            "exec 3<>/dev/tcp/127.0.0.1/22 2>/dev/null && pkgver=networked\n"
            "pkgname=confined\npkgver=${pkgver:-1}\npkgrel=1\narch=(any)\npackage() { :; }\n")
    write_pkgbuild(folder, text)
    info = read_srcinfo(folder, BUILD_USER)
    assert info.pkgver == "1", "the PKGBUILD reached the network while its metadata was read"
    assert not (folder / "uid-written").exists()
    assert not outside.exists()


@settings(max_examples=500, deadline=None)
@given(raw=st.one_of(st.none(), st.text(max_size=30), st.integers(min_value=-10**6, max_value=10**6).map(str)))
def test_parse_output_timeout_total(raw):
    seconds, warning = parse_output_timeout(raw)
    assert isinstance(seconds, int)
    assert limits.OUTPUT_TIMEOUT_MIN_S <= seconds <= limits.OUTPUT_TIMEOUT_MAX_S
    if raw is None or raw.strip() == "":
        assert (seconds, warning) == (limits.OUTPUT_TIMEOUT_DEFAULT_S, None)
    elif warning is None:
        assert seconds == int(raw.strip())
    else:
        assert seconds == limits.OUTPUT_TIMEOUT_DEFAULT_S
        assert "apb_output_timeout" in warning


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=400))
def test_parse_srcinfo_only_invalid_pkgbuild(text):
    try:
        info = parse_srcinfo(text)
    except InvalidPkgbuild as e:
        assert e.detail
    else:
        assert info.pkgbase
        assert info.pkgnames
        assert info.pkgver
        assert info.pkgrel
