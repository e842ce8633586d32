"""Reading PKGBUILD metadata with the real makepkg --printsrcinfo, as the build user in bwrap."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from apbd import limits, metadata
from apbd.metadata import InvalidPkgbuild, parse_output_timeout, read_srcinfo
from tests.doubles.builduser import build_tmp, open_for_build_user, write_tree  # noqa: F401

BUILD_USER = "apbd-build"


def read(build_tmp, text: str):
    src = write_tree(open_for_build_user(build_tmp) / "src", {"PKGBUILD": text})
    return read_srcinfo(src, BUILD_USER)


def test_variables_and_parameter_expansion(build_tmp):
    info = read(build_tmp, """
_name=hello
_ver=2-10-3
pkgname=${_name}-tool
pkgver=${_ver//-/.}
pkgrel=1
arch=(any)
""")
    assert info.pkgbase == "hello-tool"
    assert info.pkgnames == ["hello-tool"]
    assert info.pkgver == "2.10.3"
    assert info.pkgrel == "1"
    assert info.epoch is None
    assert info.version == "2.10.3-1"


def test_multiline_arrays_and_validpgpkeys(build_tmp):
    info = read(build_tmp, """
pkgname=multi
pkgver=1
pkgrel=3
arch=(
  x86_64
  # a comment inside the array
  powerpc64le
)
validpgpkeys=(
    'ABCDEF0123456789ABCDEF0123456789ABCDEF01'
    '0123456789ABCDEF0123456789ABCDEF01234567'
)
""")
    assert info.arch == ["x86_64", "powerpc64le"]
    assert info.validpgpkeys == ["ABCDEF0123456789ABCDEF0123456789ABCDEF01",
                                 "0123456789ABCDEF0123456789ABCDEF01234567"]


def test_split_packages_with_arch_overrides_and_epoch(build_tmp):
    info = read(build_tmp, """
pkgbase=suite
pkgname=(suite-bin suite-data suite-docs)
pkgver=4.1
pkgrel=2
epoch=3
arch=(x86_64 aarch64)
package_suite-bin() { :; }
package_suite-data() { arch=(any); :; }
package_suite-docs() {
  arch=('any')
  :
}
""")
    assert info.pkgbase == "suite"
    assert info.pkgnames == ["suite-bin", "suite-data", "suite-docs"]
    assert info.epoch == "3"
    assert info.version == "3:4.1-2"
    assert info.arch == ["x86_64", "aarch64"]
    assert info.package_arch == {"suite-data": ["any"], "suite-docs": ["any"]}


def test_output_timeout_read_from_pkgbuild(build_tmp):
    info = read(build_tmp, "pkgname=t\npkgver=1\npkgrel=1\narch=(any)\napb_output_timeout=$((60 * 5))\n")
    assert info.output_timeout_raw == "300"


def test_output_timeout_absent(build_tmp):
    info = read(build_tmp, "pkgname=t\npkgver=1\npkgrel=1\narch=(any)\n")
    assert info.output_timeout_raw is None


@pytest.mark.parametrize("missing", ["pkgname", "pkgver"])
def test_missing_field_rejected(build_tmp, missing):
    fields = {"pkgname": "pkgname=x", "pkgver": "pkgver=1"}
    del fields[missing]
    text = "\n".join([*fields.values(), "pkgrel=1", "arch=(any)", ""])
    with pytest.raises(InvalidPkgbuild) as caught:
        read(build_tmp, text)
    assert f"sets no {missing}" in caught.value.detail


def test_syntax_error_rejected(build_tmp):
    with pytest.raises(InvalidPkgbuild) as caught:
        read(build_tmp, "pkgname=x\npkgver=1\npkgrel=1\narch=(any\n")
    assert "makepkg could not read the PKGBUILD" in caught.value.detail


def test_syntax_error_hides_server_folder(build_tmp):
    with pytest.raises(InvalidPkgbuild) as caught:
        read(build_tmp, "pkgname=x\npkgver=1\npkgrel=1\narch=(any)\nif then fi (\n")
    assert "PKGBUILD: line 5" in caught.value.detail
    assert str(build_tmp) not in caught.value.detail


def test_missing_pkgbuild_rejected(build_tmp):
    src = open_for_build_user(build_tmp) / "empty"
    src.mkdir(mode=0o755)
    with pytest.raises(InvalidPkgbuild) as caught:
        read_srcinfo(src, BUILD_USER)
    assert "no PKGBUILD" in caught.value.detail


def test_top_level_code_cannot_write_outside(build_tmp):
    """Top-level code runs as the build user in bwrap: the host, the source folder and a
    folder the build user could otherwise write are all out of reach."""
    target = open_for_build_user(build_tmp) / "world-writable"
    target.mkdir()
    os.chmod(target, 0o777)
    info = read(build_tmp, f"""
pkgname=writer
pkgver=1
pkgrel=1
arch=(any)
touch {target}/escaped 2>/dev/null || true
touch "$PWD/planted" 2>/dev/null || true
touch /etc/apbd-escaped 2>/dev/null || true
""")
    assert info.pkgbase == "writer"
    assert not (target / "escaped").exists()
    assert not (build_tmp / "src" / "planted").exists()
    assert not os.path.exists("/etc/apbd-escaped")


def test_top_level_code_has_no_network(build_tmp):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    connections = []

    def accept():
        try:
            connections.append(listener.accept())
        except OSError:
            return

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        info = read(build_tmp, f"""
pkgname=caller
pkgver=1
pkgrel=1
arch=(any)
(exec 3<>/dev/tcp/127.0.0.1/{port} && echo hello >&3) 2>/dev/null || true
""")
    finally:
        thread.join()
        listener.close()
    assert info.pkgbase == "caller"
    assert connections == []


def test_top_level_output_does_not_confuse_parser(build_tmp):
    info = read(build_tmp, "echo 'pkgname = forged'\npkgname=real\npkgver=1\npkgrel=1\narch=(any)\n")
    assert info.pkgnames == ["real"]


@pytest.mark.parametrize("raw, seconds, warns", [
    (None, limits.OUTPUT_TIMEOUT_DEFAULT_S, False),
    ("", limits.OUTPUT_TIMEOUT_DEFAULT_S, False),
    ("3600", 3600, False),
    (str(limits.OUTPUT_TIMEOUT_MIN_S), limits.OUTPUT_TIMEOUT_MIN_S, False),
    (str(limits.OUTPUT_TIMEOUT_MAX_S), limits.OUTPUT_TIMEOUT_MAX_S, False),
    ("59", limits.OUTPUT_TIMEOUT_DEFAULT_S, True),
    ("86401", limits.OUTPUT_TIMEOUT_DEFAULT_S, True),
    ("1h", limits.OUTPUT_TIMEOUT_DEFAULT_S, True),
])
def test_parse_output_timeout(raw, seconds, warns):
    value, warning = parse_output_timeout(raw)
    assert value == seconds
    assert (warning is not None) == warns


def test_folder_closed_to_build_user(build_tmp):
    """A PKGBUILD below a folder of mode 0700 (as pytest makes them) is read from a copy."""
    closed = open_for_build_user(build_tmp) / "closed"
    closed.mkdir(mode=0o700)
    src = write_tree(closed / "src", {"PKGBUILD": "pkgname=hidden\npkgver=1\npkgrel=1\narch=(any)\ninstall=hidden.install\n",
                                      "hidden.install": "post_install() { :; }\n"})
    info = read_srcinfo(src, BUILD_USER)
    assert info.pkgnames == ["hidden"]


SPLIT_PKGBUILD = """
pkgbase=suite
pkgname=(suite-bin suite-data)
pkgver=4.1
pkgrel=2
epoch=3
arch=(x86_64 aarch64)
apb_output_timeout=120
package_suite-bin() { :; }
package_suite-data() { arch=(any); :; }
"""


@pytest.mark.parametrize("text, reason", [
    ("pkgname=x\npkgver=1\narch=(any)\n", "pkgrel is not allowed to be empty"),
    ("pkgname=bad/name\npkgver=1\npkgrel=1\narch=(any)\n", "pkgname contains invalid characters"),
    ("pkgname=x\npkgver=1-2\npkgrel=1\narch=(any)\n", "pkgver"),
    ("pkgname=x\npkgver=1\npkgrel=1\nepoch=two\narch=(any)\n", "epoch must be an integer"),
    ("pkgname=x\r\npkgver=1\r\npkgrel=1\r\narch=(any)\r\n", "CRLF"),
])
def test_fields_a_srcinfo_needs_are_linted(build_tmp, text, reason):
    """The reader skips most of makepkg's lint, but never the checks on the .SRCINFO's own fields."""
    with pytest.raises(InvalidPkgbuild) as caught:
        read(build_tmp, text)
    assert reason in caught.value.detail


def test_top_level_exit_gives_no_srcinfo(build_tmp):
    with pytest.raises(InvalidPkgbuild) as caught:
        read(build_tmp, "pkgname=x\npkgver=1\npkgrel=1\narch=(any)\nexit 0\n")
    assert "no complete .SRCINFO" in caught.value.detail


def test_same_result_as_makepkg_printsrcinfo(build_tmp, monkeypatch):
    """The library reader and the makepkg fallback (no library files found) agree field by field."""
    fast = read(build_tmp, SPLIT_PKGBUILD)
    monkeypatch.setattr(metadata, "MAKEPKG_LIBRARY", build_tmp / "no-library")
    slow = read(build_tmp, SPLIT_PKGBUILD)
    assert fast == slow
    assert fast.version == "3:4.1-2"
    assert fast.package_arch == {"suite-data": ["any"]}
    assert fast.output_timeout_raw == "120"


def test_unusable_library_falls_back_to_makepkg(build_tmp, monkeypatch, caplog):
    """Library files that exist on the host but cannot be loaded in the sandbox mean makepkg runs."""
    library = open_for_build_user(build_tmp) / "library"
    for name in metadata.LIBRARY_FILES:
        (library / name).parent.mkdir(parents=True, exist_ok=True)
        (library / name).write_text("")
    monkeypatch.setattr(metadata, "MAKEPKG_LIBRARY", library)
    info = read(build_tmp, SPLIT_PKGBUILD)
    assert info.pkgnames == ["suite-bin", "suite-data"]
    assert "is not usable" in caplog.text
