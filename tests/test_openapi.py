"""GET /openapi.json: a valid OpenAPI 3 document whose paths are exactly the app's routes."""

from __future__ import annotations

import re

import pytest
import requests
from openapi_spec_validator import validate

from apbd.web import openapi
from apbd.web.app import make_app
from apbd.web.main import build_parser, make_context

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_BOTTLE_WILDCARD = re.compile(r"<([a-zA-Z_][a-zA-Z_0-9]*)(?::[^>]*)?>")


def openapi_path(rule: str) -> str:
    """Turn a bottle rule like /build/<build_id>/view/<filename:path> into /build/{build_id}/view/{filename}."""
    return _BOTTLE_WILDCARD.sub(r"{\1}", rule)


@pytest.fixture
def app(tmp_path):
    ctx = make_context(build_parser().parse_args(["--builds-dir", str(tmp_path / "spool")]))
    return make_app(ctx)


def app_operations(app) -> set[tuple[str, str]]:
    return {(route.method.lower(), openapi_path(route.rule)) for route in app.routes}


def document_operations(document: dict) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}


def test_openapi_document_is_valid():
    validate(openapi.build_document())


def test_openapi_paths_match_routes(app):
    routes = app_operations(app)
    documented = document_operations(openapi.build_document())
    assert sorted(routes - documented) == [], "routes missing from apbd/web/openapi.py"
    assert sorted(documented - routes) == [], "documented operations the app does not have"


def test_openapi_path_parameters_declared():
    for path, item in openapi.build_document()["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)


def test_openapi_errors_use_error_schema():
    for path, item in openapi.build_document()["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")) and method != "head" and path != "/health":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, code)


def test_openapi_rule_conversion():
    assert openapi_path("/build/<build_id>/view/<filename:path>") == "/build/{build_id}/view/{filename}"
    assert openapi_path("/static/<filepath:path>") == "/static/{filepath}"
    assert openapi_path("/") == "/"


def test_openapi_served(web_server):
    answer = requests.get(web_server.url + "/openapi.json", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == openapi.build_document()
