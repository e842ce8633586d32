"""Extra pacman repositories a build may ask for, and the pacman.conf that adds them.

The farm sends `extra_repos` as JSON text: a list of {name, url, gpg_key_id}.
Each entry ends up as a section of the build's own copy of pacman.conf, so a
name or URL must never be able to add other pacman.conf syntax (a second
section, another option). The host's pacman.conf and keyring are never
changed because of a request.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from apbd.errors import ApiError

# At most this many extra repositories per build.
MAX_EXTRA_REPOS = 16
MAX_REPO_NAME_LENGTH = 64
MAX_REPO_URL_LENGTH = 2048

# pacman section names: letters, digits and a few separators, never "options".
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# URL characters that cannot start a new line, section, option or comment in
# pacman.conf. $repo and $arch are pacman's own variables, so `$` stays.
_URL_RE = re.compile(r"^[A-Za-z0-9._~:/?&%+@$!,;()*'-]+$")
# A full OpenPGP v4 fingerprint: 40 hexadecimal digits.
_FINGERPRINT_RE = re.compile(r"^[0-9A-Fa-f]{40}$")
URL_SCHEMES = ("http", "https", "file")
RESERVED_NAMES = ("options",)


def _invalid(detail: str) -> ApiError:
    return ApiError(400, "Invalid extra_repos", detail)


def parse_extra_repos_text(value) -> list:
    """Return the list inside value: JSON text, an already decoded list, or nothing."""
    if value is None or value == "":
        return []
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise _invalid(f"extra_repos is not valid JSON: {e.msg} at position {e.pos}") from None
    if not isinstance(value, list):
        raise _invalid("extra_repos must be a JSON list of {name, url, gpg_key_id} objects")
    return value


def validate_repo_name(name, index: int) -> str:
    if not isinstance(name, str) or not name:
        raise _invalid(f"extra_repos[{index}]: name is missing or not a string")
    if len(name) > MAX_REPO_NAME_LENGTH or not _NAME_RE.match(name):
        raise _invalid(f"extra_repos[{index}]: invalid repository name {name!r}; use letters, digits and . _ + - only")
    if name.lower() in RESERVED_NAMES:
        raise _invalid(f"extra_repos[{index}]: the repository name {name!r} is reserved by pacman.conf")
    return name


def validate_repo_url(url, index: int) -> str:
    if not isinstance(url, str) or not url:
        raise _invalid(f"extra_repos[{index}]: url is missing or not a string")
    if len(url) > MAX_REPO_URL_LENGTH or not _URL_RE.match(url):
        raise _invalid(f"extra_repos[{index}]: invalid characters in url {url!r}; "
                       "spaces, newlines, quotes, '=', '#', '[' and ']' are not allowed")
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise _invalid(f"extra_repos[{index}]: url {url!r} must start with http://, https:// or file://")
    if parts.scheme in ("http", "https") and not parts.netloc:
        raise _invalid(f"extra_repos[{index}]: url {url!r} has no host")
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise _invalid(f"extra_repos[{index}]: file url {url!r} must name an absolute local path (file:///srv/repo)")
    return url


def validate_gpg_key_id(key, index: int) -> str | None:
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise _invalid(f"extra_repos[{index}]: gpg_key_id must be a string")
    if " " in key.strip() and _FINGERPRINT_RE.match(key.replace(" ", "")):
        raise _invalid(f"extra_repos[{index}]: gpg_key_id {key!r} contains spaces; "
                       "write the 40-digit fingerprint without spaces")
    if not _FINGERPRINT_RE.match(key):
        raise _invalid(f"extra_repos[{index}]: gpg_key_id {key!r} is not a full 40-digit fingerprint; "
                       "short key ids are ambiguous and not accepted")
    return key.upper()


def validate_extra_repos(value) -> list[dict]:
    """Check the farm's extra_repos and return them as clean dicts.

    value is the form field's JSON text (or an already decoded list, or None).
    Raises apbd.errors.ApiError(400) naming the first bad entry.
    """
    entries = parse_extra_repos_text(value)
    if len(entries) > MAX_EXTRA_REPOS:
        raise _invalid(f"extra_repos lists {len(entries)} repositories; at most {MAX_EXTRA_REPOS} are allowed")
    repos = []
    seen = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _invalid(f"extra_repos[{index}] must be an object with name, url and gpg_key_id")
        unknown = set(entry) - {"name", "url", "gpg_key_id"}
        if unknown:
            raise _invalid(f"extra_repos[{index}]: unknown fields {', '.join(sorted(unknown))}")
        name = validate_repo_name(entry.get("name"), index)
        if name in seen:
            raise _invalid(f"extra_repos[{index}]: repository {name!r} is listed twice")
        seen.add(name)
        repo = {"name": name, "url": validate_repo_url(entry.get("url"), index)}
        key = validate_gpg_key_id(entry.get("gpg_key_id"), index)
        if key:
            repo["gpg_key_id"] = key
        repos.append(repo)
    return repos


def host_repo_names(pacman_conf_text: str) -> set[str]:
    names = set()
    for line in pacman_conf_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            names.add(stripped[1:-1].strip())
    return names


def render_pacman_conf(host_conf_text: str, repos: list[dict]) -> str:
    """Return host_conf_text with a section for each extra repository appended.

    The extra sections come after the host's repositories, so pacman prefers
    the host's packages and an extra repository cannot replace one of them.
    A repository with a gpg_key_id requires signed packages. One without is
    used with `SigLevel = Optional TrustAll`, as unsigned repositories are.
    apbd.chrootrepos writes the result into a build's work folder and binds
    it into the chroot copy, with the keyring that trusts gpg_key_id.
    Raises ValueError when a name is already a section of the host's file.
    """
    # The values were checked by validate_extra_repos; check again here, so
    # that a caller that skipped validation cannot write pacman.conf syntax.
    repos = validate_extra_repos(repos)
    taken = host_repo_names(host_conf_text)
    lines = [host_conf_text.rstrip("\n"), ""]
    for repo in repos:
        if repo["name"] in taken:
            raise ValueError(f"extra repository {repo['name']!r} has the name of a repository in pacman.conf")
        lines.append("# Added by apbd for this build only")
        lines.append(f"[{repo['name']}]")
        if repo.get("gpg_key_id"):
            lines.append("SigLevel = Required DatabaseOptional")
        else:
            lines.append("SigLevel = Optional TrustAll")
        lines.append(f"Server = {repo['url']}")
        lines.append("")
    return "\n".join(lines)


def repo_key_ids(repos: list[dict]) -> list[str]:
    """Return the fingerprints to trust in the build's chroot keyring."""
    return [repo["gpg_key_id"] for repo in repos if repo.get("gpg_key_id")]
