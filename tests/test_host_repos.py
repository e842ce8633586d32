import json

import pytest

from apbd import repos
from apbd.errors import ApiError

FPR = "0123456789ABCDEF0123456789ABCDEF01234567"
HOST_CONF = "[options]\nArchitecture = auto\n\n[core]\nInclude = /etc/pacman.d/mirrorlist\n\n[extra]\nInclude = /etc/pacman.d/mirrorlist\n"


def assert_rejected(value, fragment):
    with pytest.raises(ApiError) as info:
        repos.validate_extra_repos(value)
    assert info.value.status == 400
    assert info.value.error == "Invalid extra_repos"
    assert fragment in info.value.detail


def test_empty_values_give_no_repos():
    assert repos.validate_extra_repos(None) == []
    assert repos.validate_extra_repos("") == []
    assert repos.validate_extra_repos("[]") == []


def test_valid_entries_normalised():
    text = json.dumps([
        {"name": "farm-extra", "url": "https://repo.example.org/$repo/os/$arch", "gpg_key_id": FPR.lower()},
        {"name": "local", "url": "file:///srv/repo", "gpg_key_id": ""},
    ])
    assert repos.validate_extra_repos(text) == [
        {"name": "farm-extra", "url": "https://repo.example.org/$repo/os/$arch", "gpg_key_id": FPR},
        {"name": "local", "url": "file:///srv/repo"},
    ]


@pytest.mark.parametrize("value, fragment", [
    ("{not json", "not valid JSON"),
    ('{"name": "x"}', "must be a JSON list"),
    ('["x"]', "must be an object"),
    ('[{"url": "https://a.example/"}]', "name is missing"),
    ('[{"name": "a"}]', "url is missing"),
    ('[{"name": "a", "url": "https://a.example/", "extra": 1}]', "unknown fields extra"),
])
def test_malformed_entries_rejected(value, fragment):
    assert_rejected(value, fragment)


@pytest.mark.parametrize("name", [
    "core]\n[evil", "a b", "a=b", "a]", "[a", "a\nServer", "options", "Options", "-x", "a#b", "",
])
def test_injecting_names_rejected(name):
    with pytest.raises(ApiError) as info:
        repos.validate_extra_repos([{"name": name, "url": "https://a.example/"}])
    assert info.value.status == 400


@pytest.mark.parametrize("url", [
    "https://a.example/\n[evil]", "https://a.example/ x", "https://a.example/?a=b", "https://a.example/]",
    "https://a.example/#x", "ftp://a.example/", "javascript:alert(1)", "a.example/repo", "https:///x",
    "file://relative/path", "https://a.example/\"", "https://a.example/\tx",
])
def test_bad_urls_rejected(url):
    with pytest.raises(ApiError) as info:
        repos.validate_extra_repos([{"name": "a", "url": url}])
    assert info.value.status == 400


def test_short_key_id_rejected():
    assert_rejected([{"name": "a", "url": "https://a.example/", "gpg_key_id": "01234567"}], "short key ids")


def test_fingerprint_with_spaces_rejected():
    spaced = " ".join(FPR[i:i + 4] for i in range(0, 40, 4))
    assert_rejected([{"name": "a", "url": "https://a.example/", "gpg_key_id": spaced}], "without spaces")


def test_duplicate_names_rejected():
    entry = {"name": "a", "url": "https://a.example/"}
    assert_rejected([entry, entry], "listed twice")


def test_too_many_repos_rejected():
    entries = [{"name": f"r{i}", "url": "https://a.example/"} for i in range(repos.MAX_EXTRA_REPOS + 1)]
    assert_rejected(entries, "at most")


def test_render_appends_sections_after_host_repos():
    clean = repos.validate_extra_repos([
        {"name": "farm-extra", "url": "https://repo.example.org/$arch", "gpg_key_id": FPR},
        {"name": "local", "url": "file:///srv/repo"},
    ])
    text = repos.render_pacman_conf(HOST_CONF, clean)
    assert text.startswith(HOST_CONF.rstrip("\n"))
    assert text.index("[extra]") < text.index("[farm-extra]") < text.index("[local]")
    farm = text[text.index("[farm-extra]"):text.index("[local]")]
    assert "SigLevel = Required DatabaseOptional" in farm
    assert "Server = https://repo.example.org/$arch" in farm
    local = text[text.index("[local]"):]
    assert "SigLevel = Optional TrustAll" in local
    assert "Server = file:///srv/repo" in local
    assert repos.repo_key_ids(clean) == [FPR]


def test_render_revalidates_entries():
    with pytest.raises(ApiError) as info:
        repos.render_pacman_conf(HOST_CONF, [{"name": "x]\n[core", "url": "https://a.example/"}])
    assert info.value.status == 400


def test_render_rejects_host_repo_name():
    with pytest.raises(ValueError, match="core"):
        repos.render_pacman_conf(HOST_CONF, [{"name": "core", "url": "https://a.example/"}])


def test_render_without_repos_keeps_host_text():
    assert repos.render_pacman_conf(HOST_CONF, []).strip() == HOST_CONF.strip()
