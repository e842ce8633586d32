import socket
import subprocess

import pytest

from apbd import gpgkeys

UNKNOWN_FPR = "0123456789ABCDEF0123456789ABCDEF01234567"


def gpg(home, *args, **kwargs):
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
                          capture_output=True, check=True, timeout=120, **kwargs)


@pytest.fixture
def signer_key(tmp_path):
    """A fresh ed25519 key made with gpg in a throwaway home; yields (fingerprint, armored public key)."""
    home = tmp_path / "signer"
    home.mkdir(mode=0o700)
    try:
        gpg(home, "--passphrase", "", "--quick-gen-key", "apbd test <test@example.invalid>",
            "ed25519", "sign", "never")
        out = gpg(home, "--list-keys", "--with-colons").stdout.decode()
        fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        armored = gpg(home, "--export", "--armor", fpr).stdout
        yield fpr, armored
    finally:
        gpgkeys.stop_gpg_daemons(home)


def refused_port():
    """Return a loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fingerprint_checks():
    spaced = " ".join(UNKNOWN_FPR[i:i + 4] for i in range(0, 40, 4))
    valid, messages = gpgkeys.check_fingerprints([UNKNOWN_FPR.lower(), "0x89ABCDEF", "0123456789ABCDEF",
                                                  spaced, "not-a-key", UNKNOWN_FPR])
    assert valid == [UNKNOWN_FPR]
    assert len(messages) == 4
    assert "short key id" in messages[0]
    assert "short key id" in messages[1]
    assert "contains spaces" in messages[2] and UNKNOWN_FPR in messages[2]
    assert "not an OpenPGP fingerprint" in messages[3]


def test_shipped_key_imported(tmp_path, signer_key):
    fpr, armored = signer_key
    src = tmp_path / "src"
    (src / "keys" / "pgp").mkdir(parents=True)
    (src / "keys" / "pgp" / f"{fpr}.asc").write_bytes(armored)
    (src / "keys" / "pgp" / "broken.asc").write_text("this is not a key\n")
    work = tmp_path / "work"
    result = gpgkeys.prepare_build_keys(work, src, [fpr])
    assert result.gnupghome == work / "gnupg"
    assert (result.gnupghome.stat().st_mode & 0o777) == 0o700
    assert result.imported == [f"{fpr}.asc"]
    assert result.fetched == []
    assert result.missing == []
    assert len(result.warnings) == 1
    assert "broken.asc" in result.warnings[0]
    listed = gpg(result.gnupghome, "--list-keys", "--with-colons", fpr).stdout.decode()
    assert f"fpr:::::::::{fpr}:" in listed


def test_keys_stay_in_their_build(tmp_path, signer_key):
    fpr, armored = signer_key
    src = tmp_path / "src"
    (src / "keys" / "pgp").mkdir(parents=True)
    (src / "keys" / "pgp" / "key.asc").write_bytes(armored)
    gpgkeys.prepare_build_keys(tmp_path / "work-a", src, [])
    other = gpgkeys.create_gnupg_home(tmp_path / "work-b")
    assert gpgkeys.has_key(tmp_path / "work-a" / "gnupg", fpr, None) is True
    assert gpgkeys.has_key(other, fpr, None) is False


def test_fetch_failure_is_a_warning(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    keyserver = f"hkp://127.0.0.1:{refused_port()}"
    result = gpgkeys.prepare_build_keys(tmp_path / "work", src, [UNKNOWN_FPR, "DEADBEEF"], keyserver=keyserver)
    assert result.fetched == []
    assert result.missing == [UNKNOWN_FPR]
    assert any("short key id" in w for w in result.warnings)
    fetch_warnings = [w for w in result.warnings if UNKNOWN_FPR in w]
    assert len(fetch_warnings) == 1
    assert fetch_warnings[0].startswith(f"warning: could not fetch PGP key {UNKNOWN_FPR}")
    assert "the build goes on" in fetch_warnings[0]


def test_no_keys_no_gpg_work(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    result = gpgkeys.prepare_build_keys(tmp_path / "work", src, [])
    assert result.imported == []
    assert result.warnings == []
    assert result.gnupghome.is_dir()


def makepkg_verify(build_dir, gnupghome, user, home):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "GNUPGHOME": str(gnupghome)}
    return subprocess.run(["makepkg", "--verifysource", "--noconfirm"], cwd=build_dir, env=env,
                          capture_output=True, text=True, timeout=120, **user.popen_kwargs())


def test_makepkg_checks_signature_with_build_home(tmp_path, signer_key):
    """makepkg, as the build user, accepts a signed source only with the keys of the build's own home."""
    from apbd import sandbox
    from tests.support.servers import make_reachable

    fpr, armored = signer_key
    make_reachable(tmp_path)
    user = sandbox.resolve_build_user("apbd-build")
    build = tmp_path / "work" / "build"
    (build / "keys" / "pgp").mkdir(parents=True)
    (build / "data.txt").write_text("signed data\n")
    gpg(tmp_path / "signer", "--local-user", fpr, "--detach-sign", "-o", str(build / "data.txt.sig"),
        str(build / "data.txt"))
    (build / "keys" / "pgp" / f"{fpr}.asc").write_bytes(armored)
    (build / "PKGBUILD").write_text(
        "pkgname=sigcheck\npkgver=1\npkgrel=1\narch=(any)\nsource=(data.txt data.txt.sig)\n"
        f"sha256sums=(SKIP SKIP)\nvalidpgpkeys=({fpr})\npackage() {{ :; }}\n")
    home = tmp_path / "work" / "home"
    home.mkdir()
    user.chown_tree(tmp_path / "work")

    keys = gpgkeys.prepare_build_keys(tmp_path / "work", build, [fpr], user=user)
    assert keys.imported == [f"{fpr}.asc"]
    assert keys.gnupghome.stat().st_uid == user.uid
    accepted = makepkg_verify(build, keys.gnupghome, user, home)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Passed" in accepted.stdout + accepted.stderr

    empty = gpgkeys.create_gnupg_home(tmp_path / "other-work", user)
    rejected = makepkg_verify(build, empty, user, home)
    assert rejected.returncode != 0
    assert "unknown public key" in (rejected.stdout + rejected.stderr).lower()
