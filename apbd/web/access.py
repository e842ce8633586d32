"""Opt-in access control for the requests that change state.

The APB server API has no authentication: the farm authenticates users and
admins firewall the servers. This module gives admins a switch on top of that.
With --allow-from, only clients whose address lies in one of the listed
networks may submit, cancel or clean up. With --token-file, those requests
must carry `Authorization: Bearer TOKEN`, where TOKEN is the file's content.
With both, a request must pass both checks. With neither (the default),
nothing is checked, so the real farm works unchanged.

Every request whose method is not GET, HEAD or OPTIONS counts as changing
state: in the API these are POST /build, POST /build/{id}/cancel and
POST /admin/cleanup. Checking by method rather than by path means a route
added later is protected without anyone remembering to list it here.

The check runs in a before_request hook, before bottle matches the route, so
the server rejects a request without parsing its body.

The address checked is the socket peer (REMOTE_ADDR), never X-Forwarded-For,
which any client can set. Behind a reverse proxy the peer is the proxy, so
either list the proxy's address or let waitress rewrite REMOTE_ADDR from a
trusted proxy (its trusted_proxy setting).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import bottle

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessConfigError(ValueError):
    """An --allow-from or --token-file value that cannot be used."""


@dataclass(frozen=True)
class AccessPolicy:
    """The rule for requests that change state: allowed networks (None: any) and token (None: none)."""

    networks: tuple[Network, ...] | None
    token: bytes | None

    @property
    def enabled(self) -> bool:
        return self.networks is not None or self.token is not None


def parse_allow_from(value: str | None) -> tuple[Network, ...] | None:
    """Parse a comma-separated CIDR list; None or blank means no address check."""
    if value is None or not value.strip():
        return None
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise AccessConfigError(
                f"--allow-from: {item!r} is not an IP address or CIDR network ({e})") from None
    if not networks:
        raise AccessConfigError(f"--allow-from: no network in {value!r}")
    return tuple(networks)


def read_token_file(path: str | os.PathLike | None) -> bytes | None:
    """Read the shared secret from path; None or blank path means no token check.

    The token is the file's content without surrounding whitespace. A missing,
    unreadable or empty file is an error, so a typo never turns the check off.
    """
    if path is None or not str(path).strip():
        return None
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AccessConfigError(f"--token-file: cannot read {path}: {e.strerror}") from None
    token = raw.strip()
    if not token:
        raise AccessConfigError(f"--token-file: {path} is empty; write the shared secret into it")
    if any(c < 0x21 or c > 0x7e for c in token):
        raise AccessConfigError(
            f"--token-file: {path} must hold one token of printable ASCII characters without spaces")
    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        log.warning("token file %s is readable by every local user; chmod o-r it", path)
    return token


def load_policy(args) -> AccessPolicy:
    """Build the policy from the parsed options (missing attributes mean off)."""
    return AccessPolicy(
        networks=parse_allow_from(getattr(args, "allow_from", None)),
        token=read_token_file(getattr(args, "token_file", None)),
    )


def peer_address(environ: dict) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the socket peer's address, as IPv4 when it is an IPv4-mapped IPv6 address."""
    raw = environ.get("REMOTE_ADDR") or ""
    try:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_allowed(policy: AccessPolicy, environ: dict) -> bool:
    if policy.networks is None:
        return True
    address = peer_address(environ)
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in policy.networks)


def token_accepted(policy: AccessPolicy, environ: dict) -> bool:
    if policy.token is None:
        return True
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # WSGI hands headers over as latin-1 text; compare the bytes in constant time.
    offered = credentials.strip().encode("latin-1", "replace")
    return hmac.compare_digest(offered, policy.token)


def _error(status: int, error: str, detail: str, headers: dict | None = None) -> bottle.HTTPResponse:
    body = json.dumps({"error": error, "detail": detail})
    response = bottle.HTTPResponse(body=body, status=status, headers=headers or {})
    response.content_type = "application/json"
    return response


def check_request(policy: AccessPolicy, environ: dict) -> bottle.HTTPResponse | None:
    """Return the error response for a request the policy rejects, or None to let it through."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    if method in SAFE_METHODS or not policy.enabled:
        return None
    path = environ.get("PATH_INFO", "")
    if not address_allowed(policy, environ):
        log.warning("rejected %s %s from %s: address not in --allow-from",
                    method, path, environ.get("REMOTE_ADDR"))
        return _error(403, "Forbidden",
                      f"Requests that change state are accepted only from the addresses this "
                      f"server allows; {environ.get('REMOTE_ADDR')} is not one of them")
    if not token_accepted(policy, environ):
        log.warning("rejected %s %s from %s: missing or wrong bearer token",
                    method, path, environ.get("REMOTE_ADDR"))
        return _error(401, "Unauthorized",
                      "Requests that change state need the header 'Authorization: Bearer TOKEN' "
                      "with the token this server was given",
                      {"WWW-Authenticate": 'Bearer realm="apbd"'})
    return None


def install(app: bottle.Bottle, ctx) -> AccessPolicy:
    """Install the access check on app when ctx.args asks for one; return the policy.

    Raise AccessConfigError when an option cannot be used, so the server does
    not start with a check silently off.
    """
    policy = load_policy(ctx.args)
    if not policy.enabled:
        return policy

    def reject_unless_allowed():
        rejection = check_request(policy, bottle.request.environ)
        if rejection is not None:
            raise rejection

    app.add_hook("before_request", reject_unless_allowed)
    parts = []
    if policy.networks is not None:
        parts.append("from " + ", ".join(str(n) for n in policy.networks))
    if policy.token is not None:
        parts.append("with the bearer token")
    log.info("requests that change state are accepted only %s", " and ".join(parts))
    return policy
