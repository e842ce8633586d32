"""Fuzz the live API with schemathesis, driven by apbd's own OpenAPI document.

One apbd-web serves a spool with one finished build for the whole module.
Each documented operation gets a bounded number of generated requests; no
answer may be a 5xx, and every JSON error must be the API's {error, detail}.
The live stream is left out because it never ends for a running build.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from apbd.spool import Spool
from apbd.web import openapi
from tests.support.hostile import new_id
from tests.support.servers import WebServer, make_reachable
from tests.test_hostile_urls import craft_job

EXAMPLES_PER_OPERATION = 40
# Operations that cannot be fuzzed: the stream of a running build never ends.
SKIPPED = {"/build/{build_id}/stream"}

schema = schemathesis.openapi.from_dict(openapi.build_document())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    make_reachable(root)
    spool = Spool(root / "spool")
    spool.create()
    craft_job(spool, new_id(), {"build.log": b"==> fuzz\n", "packages/fuzz-1-1-any.pkg.tar.zst": b"pkg",
                                "src/PKGBUILD": b"pkgname=fuzz\n"})
    server = WebServer(spool.root, root, extra_args=["--max-request-size", str(1024 * 1024)])
    yield server
    server.stop()


def header(response, name: str) -> str:
    """Return one header of a schemathesis response, whose header values are lists."""
    for key, value in response.headers.items():
        if key.lower() == name.lower():
            return value[0] if isinstance(value, list) else value
    return ""


@pytest.mark.slow
@schema.exclude(path=sorted(SKIPPED)).parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_api_fuzz(live, case):
    response = case.call(base_url=live.url, timeout=30)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                        response.text[:500])
    content_type = header(response, "Content-Type")
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        assert content_type.startswith("application/json"), (case.method, case.formatted_path,
                                                            response.status_code, content_type,
                                                            response.text[:300])
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("detail"), str) and body["detail"], body
        assert "Traceback" not in response.text
