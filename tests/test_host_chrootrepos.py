"""Extra repositories in a makechrootpkg build: the build's pacman.conf, keyring and bind mounts.

The central test runs the real pacman of this host against the files apbd
prepares: signed file:// repositories, one standing for the buildroot's
official repositories (its key locally signed in the buildroot's keyring, as
pacman-key does on Arch) and one the farm sends as an extra repository. pacman
installs from both with the build's keyring, refuses the extra one with the
buildroot's keyring, and the buildroot's files do not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from apbd import chrootrepos, gpgkeys
from tests.doubles.builduser import build_tmp  # noqa: F401
from tests.doubles.jobs import build_log, make_spool, publish, trivial_pkgbuild, wait_for
from tests.support.servers import Runner
from tests.test_builders import path_with_doubles, recorded_calls
from tests.test_host_gpgkeys import refused_port

# pacman's "Architecture = auto", which $arch in a Server URL becomes.
MACHINE = os.uname().machine
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="pacman-key --init and pacman -S need root")


def gpg(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
                          capture_output=True, check=True, timeout=120)


def new_key(home: Path, uid: str) -> str:
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
    out = gpg(home, "--list-keys", "--with-colons").stdout.decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def make_package(folder: Path, name: str) -> Path:
    """Write a minimal pacman package NAME-1.0-1-any.pkg.tar.zst into folder."""
    content = folder / f"{name}-content"
    (content / "usr/share" / name).mkdir(parents=True)
    (content / "usr/share" / name / "file").write_text(f"{name}\n")
    (content / ".PKGINFO").write_text(f"pkgname = {name}\npkgbase = {name}\npkgver = 1.0-1\npkgdesc = test\n"
                                      "builddate = 1700000000\npackager = apbd tests\nsize = 5\narch = any\n")
    package = folder / f"{name}-1.0-1-any.pkg.tar.zst"
    subprocess.run(["bsdtar", "--zstd", "-cf", str(package), "-C", str(content), ".PKGINFO", "usr"], check=True)
    return package


def signed_repo(folder: Path, repo: str, package_name: str, signer_home: Path, fingerprint: str) -> None:
    """Make a file:// repository folder with one package, package and database signed."""
    folder.mkdir(parents=True)
    package = make_package(folder, package_name)
    env = {**os.environ, "GNUPGHOME": str(signer_home)}
    subprocess.run(["gpg", "--batch", "--detach-sign", "--no-armor", str(package)], env=env, check=True,
                   capture_output=True)
    subprocess.run(["repo-add", "--sign", "--key", fingerprint, str(folder / f"{repo}.db.tar.gz"), str(package)],
                   env=env, check=True, capture_output=True)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_socket()}


@pytest.fixture
def short_tmp():
    """A folder with a short path: gpg-agent's socket paths must fit in 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="apbd-t-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def chroot(tmp_path, short_tmp):
    """A buildroot root with pacman.conf and a pacman-key keyring trusting the 'official' key.

    The keyring is made in a short folder (pacman-key starts gpg-agent in it) and moved into place.
    """
    official_home = short_tmp / "official"
    official = new_key(official_home, "Official Repo <official@example.invalid>")
    signed_repo(tmp_path / "repos" / "core", "core", "corepkg", official_home, official)
    root = tmp_path / "buildroot" / "root"
    keyring = short_tmp / "keyring"
    keyring.mkdir()
    (root / "etc/pacman.d").mkdir(parents=True)
    (root / "etc/pacman.conf").write_text(
        "[options]\nArchitecture = auto\nSigLevel = Required DatabaseOptional\n\n"
        f"[core]\nServer = file://{tmp_path}/repos/$repo\n")
    exported = tmp_path / "official.asc"
    exported.write_bytes(gpg(official_home, "--export", "--armor", official).stdout)
    try:
        for args in (["--init"], ["--add", str(exported)], ["--lsign-key", official]):
            subprocess.run(["pacman-key", "--gpgdir", str(keyring), *args], check=True, capture_output=True,
                           timeout=120)
    finally:
        gpgkeys.stop_gpg_daemons(keyring)
        gpgkeys.stop_gpg_daemons(official_home)
    shutil.move(keyring, root / "etc/pacman.d/gnupg")
    return root


@pytest.fixture
def farm_repo(tmp_path, short_tmp):
    """A signed extra repository [farm] and a build GnuPG home that contains its key, as a shipped key would."""
    signer = short_tmp / "farm"
    fingerprint = new_key(signer, "Farm Repo <farm@example.invalid>")
    signed_repo(tmp_path / "repos" / "farm" / MACHINE, "farm", "farmpkg", signer, fingerprint)
    gnupghome = tmp_path / "work" / "gnupg"
    gnupghome.mkdir(parents=True, mode=0o700)
    gnupghome.chmod(0o700)
    key = tmp_path / "farm.asc"
    key.write_bytes(gpg(signer, "--export", "--armor", fingerprint).stdout)
    gpg(gnupghome, "--import", str(key))
    gpgkeys.stop_gpg_daemons(signer)
    return {"name": "farm", "url": f"file://{tmp_path}/repos/$repo/$arch", "gpg_key_id": fingerprint}


def pacman_install(conf: Path, gpgdir: Path, target: Path, *packages: str) -> subprocess.CompletedProcess:
    """Install packages into target with the real pacman, the given config and keyring."""
    (target / "db").mkdir(parents=True)
    (target / "cache").mkdir()
    return subprocess.run(["pacman", "--config", str(conf), "--root", str(target), "--dbpath", str(target / "db"),
                           "--cachedir", str(target / "cache"), "--gpgdir", str(gpgdir), "--noconfirm",
                           "--disable-download-timeout", "-Sy", *packages],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def prepare(tmp_path, chroot, repos, **kwargs):
    return chrootrepos.prepare_chroot_repos(tmp_path / "work", chroot, repos, gnupghome=tmp_path / "work" / "gnupg",
                                            architecture=MACHINE, build_id="test-build", **kwargs)


@needs_root
def test_repo_key_trusted_in_build_keyring_only(tmp_path, chroot, farm_repo):
    before = tree_digest(chroot)
    prepared = prepare(tmp_path, chroot, [farm_repo])
    work = tmp_path / "work"
    conf = work / "pacman.conf"
    keyring = work / "pacman-keyring"
    repo_dir = tmp_path / "repos" / "farm" / MACHINE
    assert prepared.args == ["-D", f"{conf}:/etc/pacman.conf", "-d", f"{keyring}:/apbd/pacman-keyring",
                             "-D", str(repo_dir)]
    text = conf.read_text()
    assert "GPGDir = /apbd/pacman-keyring/" in text.split("[core]")[0]
    assert text.index("[core]") < text.index("[farm]")
    assert "[farm]\nSigLevel = Required DatabaseOptional\nServer = file://" in text
    assert any("trusted in this build's keyring only" in note for note in prepared.notes)

    # The keyring is where GPGDir points inside the chroot; here pacman gets it with --gpgdir.
    installed = pacman_install(conf, keyring, tmp_path / "target", "farmpkg", "corepkg")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (tmp_path / "target/usr/share/farmpkg/file").read_text() == "farmpkg\n"
    assert (tmp_path / "target/usr/share/corepkg/file").read_text() == "corepkg\n"

    # The buildroot's own keyring does not trust the farm's key: its packages are refused there.
    refused = pacman_install(conf, chroot / "etc/pacman.d/gnupg", tmp_path / "other", "farmpkg")
    assert refused.returncode != 0
    assert farm_repo["gpg_key_id"] in refused.stderr
    # That pacman run (not apbd) updated the trust database of the buildroot keyring,
    # so everything else is compared with the state before apbd ran.
    after = tree_digest(chroot)
    assert {k: v for k, v in after.items() if k != "etc/pacman.d/gnupg/trustdb.gpg"} == \
        {k: v for k, v in before.items() if k != "etc/pacman.d/gnupg/trustdb.gpg"}


@needs_root
def test_preparing_leaves_the_buildroot_unchanged(tmp_path, chroot, farm_repo):
    before = tree_digest(chroot)
    prepare(tmp_path, chroot, [farm_repo])
    assert tree_digest(chroot) == before


@needs_root
def test_missing_repo_key_warns(tmp_path, chroot, farm_repo):
    unknown = "0123456789ABCDEF0123456789ABCDEF01234567"
    repo = {**farm_repo, "gpg_key_id": unknown}
    prepared = prepare(tmp_path, chroot, [repo], keyserver=f"hkp://127.0.0.1:{refused_port()}")
    assert any(unknown in note and "pacman will refuse" in note for note in prepared.notes)
    installed = pacman_install(tmp_path / "work/pacman.conf", tmp_path / "work/pacman-keyring",
                               tmp_path / "target", "farmpkg")
    assert installed.returncode != 0


def test_unsigned_repo_needs_no_keyring(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/pacman.conf").write_text("[options]\nArchitecture = auto\n\n[core]\nInclude = /etc/pacman.d/mirrorlist\n")
    (tmp_path / "work").mkdir()
    prepared = prepare(tmp_path, root, [{"name": "plain", "url": "https://repo.example.org/$repo/os/$arch"}])
    conf = tmp_path / "work/pacman.conf"
    assert prepared.args == ["-D", f"{conf}:/etc/pacman.conf"]
    assert conf.read_text().endswith("[plain]\nSigLevel = Optional TrustAll\n"
                                     "Server = https://repo.example.org/$repo/os/$arch\n")
    assert "GPGDir" not in conf.read_text()
    assert not (tmp_path / "work/pacman-keyring").exists()


def test_no_extra_repos_writes_nothing(tmp_path):
    (tmp_path / "work").mkdir()
    prepared = prepare(tmp_path, tmp_path / "missing-root", [])
    assert prepared.args == []
    assert prepared.notes == []
    assert list((tmp_path / "work").iterdir()) == []


def test_repo_named_like_a_buildroot_repo_is_refused(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/pacman.conf").write_text("[options]\n\n[core]\nServer = https://a.example/\n")
    (tmp_path / "work").mkdir()
    with pytest.raises(ValueError, match="core"):
        prepare(tmp_path, root, [{"name": "core", "url": "https://b.example/"}])


def test_missing_local_repo_folder_is_named(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/pacman.conf").write_text("[options]\n")
    (tmp_path / "work").mkdir()
    prepared = prepare(tmp_path, root, [{"name": "local", "url": "file:///srv/nowhere/$repo"}])
    assert "-D" in prepared.args
    assert "/srv/nowhere/local" not in prepared.args
    assert any("/srv/nowhere/local" in note and "not a folder" in note for note in prepared.notes)


def test_set_gpgdir_replaces_only_the_options_value():
    text = "[options]\nGPGDir = /etc/pacman.d/gnupg/\nHoldPkg = pacman\n\n[core]\nGPGDir = x\n"
    out = chrootrepos.set_gpgdir(text, "/apbd/pacman-keyring/")
    assert out == "[options]\nGPGDir = /apbd/pacman-keyring/\nHoldPkg = pacman\n\n[core]\nGPGDir = x\n"
    assert chrootrepos.set_gpgdir("[core]\n", "/k/").startswith("[options]\nGPGDir = /k/\n")


def test_colons_in_bind_paths_are_escaped():
    assert chrootrepos.bind_ro(Path("/srv/a:b"), "/etc/pacman.conf") == ["-D", "/srv/a\\:b:/etc/pacman.conf"]


def test_makechrootpkg_gets_the_binds_and_the_conf(build_tmp):
    """Through a real runner: the makechrootpkg double records the bind options and the bound pacman.conf."""
    spool = make_spool(build_tmp)
    buildroot = build_tmp / "buildroot"
    (buildroot / "root/etc").mkdir(parents=True)
    (buildroot / "root/etc/pacman.conf").write_text("[options]\nArchitecture = auto\n\n[core]\nServer = https://a.example/\n")
    runner = Runner(spool.root, build_tmp, ["--builder", "makechrootpkg", "--buildroot", str(buildroot)],
                    env={"PATH": path_with_doubles()})
    repos = [{"name": "farm", "url": "https://farm.example.org/$repo/$arch"}]
    try:
        build_id = publish(spool, trivial_pkgbuild("withrepos"), extra_repos=repos)
        status = wait_for(spool, build_id)
    finally:
        runner.stop()
    assert status["status"] == "completed", build_log(spool, build_id)
    call = recorded_calls(buildroot)[0]
    work = spool.job_dir(build_id) / "work"
    assert call["argv"][:6] == ["makechrootpkg", "-cuT", "-r", str(buildroot), "-D",
                                f"{work}/pacman.conf:/etc/pacman.conf"]
    bound = call["bound_files"]["/etc/pacman.conf"]
    assert bound.endswith("[farm]\nSigLevel = Optional TrustAll\nServer = https://farm.example.org/$repo/$arch\n")
    assert "extra repositories [farm] are added" in build_log(spool, build_id)
    assert json.loads((spool.job_dir(build_id) / "status.json").read_text())["extra_repos"] == repos
