"""The OpenAPI 3 document of apbd's HTTP API, served at GET /openapi.json.

The document is written by hand from the APB server API, one entry per route,
so it can say what each parameter means. tests/test_openapi.py compares its
paths with the routes the app really has, so a route added without an entry
here (or an entry left behind) fails the suite.

Schemas are deliberately loose where the API returns open objects (GET /,
/health): they state the fields clients rely on, not every field.
"""

from __future__ import annotations

import json

import bottle

from apbd import __version__, limits

OPENAPI_PATH = "/openapi.json"

JSON = "application/json"
HTML = "text/html"

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "short name of what went wrong"},
        "detail": {"type": "string", "description": "what was wrong and what to do"},
        "type": {"type": "string", "description": "exception class, only on 500"},
    },
}

FILE_ENTRY_SCHEMA = {
    "type": "object",
    "required": ["filename", "size", "download_url"],
    "properties": {
        "filename": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "download_url": {"type": "string"},
        "created_at": {"type": "string"},
    },
}

STATUS_SCHEMA = {
    "type": "object",
    "required": ["build_id", "status"],
    "properties": {
        "build_id": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": ["queued", "building", "completed", "failed", "cancelled"]},
        "pkgname": {"type": "string"},
        "arch": {"type": "array", "items": {"type": "string"}},
        "start_time": {"type": "number"},
        "end_time": {"type": "number"},
        "duration": {"type": "number"},
        "exit_code": {"type": "integer"},
        "build_timeout": {"type": "integer"},
        "packages": {"type": "array", "items": {"$ref": "#/components/schemas/FileEntry"}},
        "logs": {"type": "array", "items": {"$ref": "#/components/schemas/FileEntry"}},
    },
}

BUILD_FORM_SCHEMA = {
    "type": "object",
    "properties": {
        "build_tarball": {"type": "string", "format": "binary",
                          "description": "gzipped tar with a PKGBUILD at its root (or in one top-level folder)"},
        "pkgbuild": {"type": "string", "format": "binary",
                     "description": "legacy upload: the PKGBUILD itself, sent under the file name PKGBUILD"},
        "sources": {"type": "array", "items": {"type": "string", "format": "binary"},
                    "description": "legacy upload: further source files"},
        "build_id": {"type": "string", "format": "uuid",
                     "description": "the build's UUID, made by the farm; generated when absent"},
        "build_timeout": {"type": "string", "pattern": "^[0-9]+$",
                          "description": f"seconds, {limits.BUILD_TIMEOUT_MIN_S}-{limits.BUILD_TIMEOUT_MAX_S} "
                                         f"(default {limits.BUILD_TIMEOUT_DEFAULT_S})"},
        "extra_repos": {"type": "string", "description": "JSON list of {name, url, gpg_key_id}"},
    },
}


def _param(name: str, where: str, schema: dict, description: str, required: bool | None = None) -> dict:
    return {
        "name": name,
        "in": where,
        "required": where == "path" if required is None else required,
        "schema": schema,
        "description": description,
    }


BUILD_ID = _param("build_id", "path", {"type": "string"}, "the build's UUID")
FILENAME = _param("filename", "path", {"type": "string"}, "a file name the build's file lists contain")
PKGNAME = _param("pkgname", "path", {"type": "string"}, "a package name (pkgname or pkgbase)")
SUCCESSFUL_ONLY = _param("successful_only", "query", {"type": "string", "enum": ["true", "false", "True", "False"]},
                         "consider only completed builds (default true)", False)


def _error(description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema or {"type": "object"}}}}


def _binary(description: str) -> dict:
    return {"description": description,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


def _html(description: str) -> dict:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def _operation(summary: str, responses: dict, parameters: list | None = None, **extra) -> dict:
    operation = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    operation.update(extra)
    return operation


NOT_FOUND = _error("no such build or file")
BAD_REQUEST = _error("invalid parameter")
STATUS_REF = {"$ref": "#/components/schemas/Status"}


def _paths() -> dict:
    """Return the paths object: one entry per route of the app."""
    return {
        "/": {"get": _operation(
            "Server information: architecture, system load and queue (HTML for browsers)",
            {"200": _json("server information", {
                "type": "object",
                "required": ["status", "supported_architecture", "queue_status"],
                "properties": {"status": {"type": "string"}, "version": {"type": "string"},
                               "supported_architecture": {"type": "string"},
                               "system_info": {"type": "object"}, "queue_status": {"type": "object"}}})})},
        "/health": {"get": _operation(
            "Health checks of memory, disk, runner, queue and spool",
            {"200": _json("healthy, warning or degraded"), "500": _json("a critical check failed")})},
        "/metrics": {"get": _operation(
            "Prometheus metrics",
            {"200": {"description": "metrics in the Prometheus text format",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}})},
        OPENAPI_PATH: {"get": _operation(
            "This document", {"200": _json("the OpenAPI document")})},
        "/build": {"post": _operation(
            "Submit a build: a tarball, or a PKGBUILD with sources (legacy)",
            {"200": _json("queued, or the same upload again under the same id", {
                "type": "object", "required": ["build_id", "status"],
                "properties": {"build_id": {"type": "string"}, "status": {"type": "string"},
                               "message": {"type": "string"}}}),
             "400": _error("invalid upload, PKGBUILD, build_id or build_timeout"),
             "403": _error("address not allowed by --allow-from"),
             "401": _error("missing or wrong bearer token (--token-file)"),
             "408": _error("upload slower than the submission timeout"),
             "409": _error("a build with this id and other content exists"),
             "413": _error("a file or the request is too large"),
             "503": _error("not enough disk space to store the upload")},
            requestBody={"required": True,
                         "content": {"multipart/form-data": {"schema": BUILD_FORM_SCHEMA}}})},
        "/build/{build_id}": {"get": _operation(
            "Build details (HTML for browsers)",
            {"200": _json("the build", STATUS_REF), "400": BAD_REQUEST, "404": NOT_FOUND},
            [BUILD_ID])},
        "/build/{build_id}/status-api": {"get": _operation(
            "Build status with its package and log files",
            {"200": _json("the build", STATUS_REF), "400": BAD_REQUEST, "404": NOT_FOUND},
            [BUILD_ID])},
        "/build/{build_id}/status": {"get": _operation(
            "Build status as the APB client reads it, with artifacts_ready",
            {"200": _json("the build", STATUS_REF), "400": BAD_REQUEST, "404": NOT_FOUND},
            [BUILD_ID, _param("format", "query", {"type": "string"}, "json for the JSON answer", False)])},
        "/build/{build_id}/output": {"get": _operation(
            "Lines of the build log, a page at a time",
            {"200": _json("a page of lines", {
                "type": "object", "required": ["output", "total_lines", "start_index", "returned_lines"],
                "properties": {"output": {"type": "array", "items": {"type": "string"}},
                               "total_lines": {"type": "integer"}, "start_index": {"type": "integer"},
                               "returned_lines": {"type": "integer"}}}),
             "400": BAD_REQUEST, "404": NOT_FOUND},
            [BUILD_ID,
             _param("start_index", "query", {"type": "integer", "minimum": 0}, "first line, from 0", False),
             _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": limits.OUTPUT_LIMIT_MAX},
                    f"lines to return (default {limits.OUTPUT_LIMIT_DEFAULT})", False)])},
        "/build/{build_id}/stream": {"get": _operation(
            "Live build output as server-sent events (output, status, complete, heartbeat)",
            {"200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
             "400": BAD_REQUEST, "404": NOT_FOUND},
            [BUILD_ID])},
        "/build/{build_id}/download/{filename}": {
            "get": _operation(
                "Download a package, log or source file of the build",
                {"200": _binary("the file"), "400": BAD_REQUEST, "404": NOT_FOUND},
                [BUILD_ID, FILENAME]),
            "head": _operation(
                "Size and date of a package, log or source file of the build, without its content",
                {"200": {"description": "the file's headers"}, "400": {"description": "invalid parameter"},
                 "404": {"description": "no such build or file"}},
                [BUILD_ID, FILENAME]),
        },
        "/build/{build_id}/view/{filename}": {"get": _operation(
            "View a text file of the build in the browser",
            {"200": _html("the file in a page"), "302": {"description": "binary file: redirect to download"},
             "400": BAD_REQUEST, "404": NOT_FOUND},
            [BUILD_ID, FILENAME])},
        "/build/{build_id}/packages": {"get": _operation(
            "Packages the build produced",
            {"200": _json("the package list", {
                "type": "object", "required": ["build_id", "packages"],
                "properties": {"build_id": {"type": "string"},
                               "packages": {"type": "array", "items": {"$ref": "#/components/schemas/FileEntry"}}}}),
             "400": BAD_REQUEST, "404": NOT_FOUND},
            [BUILD_ID])},
        "/build/{build_id}/cancel": {"post": _operation(
            "Cancel a queued or running build",
            {"200": _json("cancelled, or already finished"), "400": BAD_REQUEST, "404": NOT_FOUND,
             "503": _error("the spool's disk is full, so the cancel request cannot be stored"),
             "401": _error("missing or wrong bearer token (--token-file)"),
             "403": _error("address not allowed by --allow-from")},
            [BUILD_ID])},
        "/build/{build_id}/confirm-cancel": {
            "get": _operation(
                "Page asking to confirm a cancel",
                {"200": _html("the confirmation page"), "400": BAD_REQUEST, "404": NOT_FOUND},
                [BUILD_ID]),
            "post": _operation(
                "Cancel from the confirmation page's HTML form, as POST /build/{build_id}/cancel does",
                {"303": {"description": "back to the build page, which shows whether the build was cancelled",
                         "headers": {"Location": {"schema": {"type": "string"}}}},
                 "400": BAD_REQUEST, "404": NOT_FOUND,
                 "503": _error("the spool's disk is full, so the cancel request cannot be stored"),
                 "401": _error("missing or wrong bearer token (--token-file)"),
                 "403": _error("address not allowed by --allow-from")},
                [BUILD_ID]),
        },
        "/builds/latest": {"get": _operation(
            "Latest builds, newest first",
            {"200": _json("the builds", {"type": "object", "required": ["builds", "total"]}), "400": BAD_REQUEST},
            [_param("limit", "query", {"type": "integer", "minimum": 1, "maximum": limits.LATEST_LIMIT_MAX},
                    f"builds to return (default {limits.LATEST_LIMIT_DEFAULT})", False),
             _param("status", "query", {"type": "string"}, "only builds in this state", False)])},
        "/builds/pkgname/{pkgname}": {"get": _operation(
            "Builds of one package, newest first",
            {"200": _json("the builds", {"type": "object", "required": ["pkgname", "builds", "total"]}),
             "400": BAD_REQUEST},
            [PKGNAME,
             _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": limits.PKGNAME_LIMIT_MAX},
                    f"builds to return (default {limits.PKGNAME_LIMIT_DEFAULT})", False)])},
        "/builds/pkgname/{pkgname}/latest": {"get": _operation(
            "The latest build of one package",
            {"200": _json("the build", STATUS_REF), "400": BAD_REQUEST, "404": NOT_FOUND},
            [PKGNAME, SUCCESSFUL_ONLY])},
        "/builds/pkgname/{pkgname}/latest/download/{file_type}": {"get": _operation(
            "Download a file of the latest build of one package",
            {"200": _binary("the file"), "302": {"description": "redirect to the download URL"},
             "400": BAD_REQUEST, "404": NOT_FOUND},
            [PKGNAME,
             _param("file_type", "path", {"type": "string", "enum": ["package", "debug", "log", "pkgbuild"]},
                    "which file"),
             SUCCESSFUL_ONLY])},
        "/admin/cleanup": {
            "get": _operation("Cleanup page", {"200": _html("the cleanup page")}),
            "post": _operation(
                "Remove builds older than the retention period",
                {"200": _json("what was removed", {
                    "type": "object", "required": ["success", "message"],
                    "properties": {"success": {"type": "boolean"}, "message": {"type": "string"},
                                   "cleanup_id": {"type": "string"}}}),
                 "401": _error("missing or wrong bearer token (--token-file)"),
                 "403": _error("address not allowed by --allow-from")}),
        },
        "/static/{filepath}": {"get": _operation(
            "Static files of the web pages",
            {"200": {"description": "the file"}, "404": NOT_FOUND},
            [_param("filepath", "path", {"type": "string"}, "file under www/static")])},
    }


def build_document() -> dict:
    """Return the whole OpenAPI document as a dict."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "apbd: APB server API",
            "version": __version__,
            "description": "Build server for Arch Linux packages. Errors are JSON objects with "
                           "`error` and `detail`. With --allow-from or --token-file set, requests "
                           "that change state need an allowed address or a bearer token.",
        },
        "paths": _paths(),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, "FileEntry": FILE_ENTRY_SCHEMA, "Status": STATUS_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "only when the server runs with --token-file"}},
        },
    }


def install(app: bottle.Bottle, ctx) -> None:
    """Add GET /openapi.json to app."""
    body = json.dumps(build_document(), indent=1, sort_keys=True)

    @app.get(OPENAPI_PATH)
    def openapi_document():
        bottle.response.content_type = "application/json"
        return body
