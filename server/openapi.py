"""The OpenAPI 3.1 document of a running app, built from what the app itself declares.

- Routes come from the Tornado Application's rules: each rule's path regex becomes a path
  template (its groups named after the handler method's arguments), its methods are those the
  handler class defines, and whether it needs the token is the handler's `public`. A route
  added to make_app appears here without being listed.
- Request fields come from `server.request.field_schemas(policy)` with the server's own
  policy: the option defaults config.json sets, the default and the loaded model sets.
- Errors come from `server.errors.CATALOGUE`: one response per status (`Error400` ...), whose
  `x-error-codes` and `code` enum list that status's codes.
- What each operation means (summary, success responses, the error codes it can answer with)
  is the one hand-written part, `OPERATIONS`, keyed by (method, path template). A route with
  no entry is still listed, from its handler's docstring, and marked `x-undocumented`, which
  the tests refuse.

OPTIONS (the CORS preflight every route answers) is described once, in `info`, rather than
on every path. `openapi_document(app, context)` is a pure function of the two; the handler
serialises it once per app (handlers/docs.py).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import tornado.web
from tornado.routing import PathMatches, Rule, RuleRouter

from .errors import CATALOGUE
from .request import REQUEST_FIELDS, field_schemas

OPENAPI_VERSION = "3.1.0"
# The HTTP contract's version: raise it when a request or response shape changes.
API_VERSION = "1.0"
# The methods documented per path; OPTIONS is the CORS preflight, described once in info.
DOCUMENTED_METHODS = ("get", "head", "post", "put", "patch", "delete")
# What any request can be answered with, whatever the route.
COMMON_ERRORS = ("headers_too_large", "internal_error", "too_many_connections")
SECURITY_SCHEME = "bearer"

_REF = "#/components/schemas/"
# A capturing group of a route regex (no nested groups; named or not).
_GROUP = re.compile(r"\((?!\?[:=!<])(?:\?P<\w+>)?(?:[^()\\]|\\.)*\)")
_REGEX_SYNTAX = re.compile(r"[][(){}*+?|^$\\]")


# ---------------------------------------------------------------- the app's routes

@dataclass(frozen=True)
class Route:
    """One documented route: its OpenAPI path template, methods and handler."""

    path: str
    methods: tuple[str, ...]
    handler: type[tornado.web.RequestHandler]
    parameters: tuple[str, ...]
    pattern: str


def app_routes(app: tornado.web.Application) -> list[Route]:
    """Every route of `app` (its rules in order), with the methods its handler defines."""
    routes = []
    for rule in _handler_rules(app.wildcard_router):
        handler = rule.target
        methods = handler_methods(handler)
        regex = rule.matcher.regex
        if regex.groupindex:
            names = tuple(sorted(regex.groupindex, key=regex.groupindex.__getitem__))
        else:
            names = _argument_names(handler, methods, regex.groups)
        routes.append(Route(path_template(regex.pattern, names), methods, handler, names,
                            regex.pattern))
    return routes


def handler_methods(handler: type[tornado.web.RequestHandler]) -> tuple[str, ...]:
    """The documented methods `handler` defines itself (not RequestHandler's 405 stubs)."""
    return tuple(method for method in DOCUMENTED_METHODS
                 if getattr(handler, method) is not getattr(tornado.web.RequestHandler, method))


def path_template(pattern: str, names: tuple[str, ...]) -> str:
    """`/ocr_service/([^/]+)$` -> `/ocr_service/{task_id}`; an optional trailing slash is
    dropped. Raises ValueError for a regex that is not a plain path with groups."""
    body = pattern.removeprefix("^").removesuffix("$")
    body = body.removesuffix("/?") or "/"
    pieces = _GROUP.split(body)
    if len(pieces) - 1 != len(names):
        raise ValueError(f"route {pattern!r}: {len(pieces) - 1} groups, {len(names)} names")
    literal = []
    for piece in pieces:
        if _REGEX_SYNTAX.search(re.sub(r"\\.", "", piece)):
            raise ValueError(f"route {pattern!r} is not a plain path with groups; it cannot "
                             "be written as an OpenAPI path")
        literal.append(re.sub(r"\\(.)", r"\1", piece))
    text = literal[0]
    for name, piece in zip(names, literal[1:], strict=True):
        text += "{" + name + "}" + piece
    return text


def _handler_rules(router: RuleRouter) -> Iterator[Rule]:
    for rule in router.rules:
        if isinstance(rule.target, RuleRouter):
            yield from _handler_rules(rule.target)
        elif (isinstance(rule.matcher, PathMatches) and isinstance(rule.target, type)
              and issubclass(rule.target, tornado.web.RequestHandler)):
            yield rule


def _argument_names(handler: type, methods: tuple[str, ...], count: int) -> tuple[str, ...]:
    """Positional groups are named after the handler method's parameters."""
    if count == 0:
        return ()
    for method in methods:
        parameters = list(inspect.signature(getattr(handler, method)).parameters)[1:]
        if len(parameters) >= count:
            return tuple(parameters[:count])
    return tuple(f"arg{index}" for index in range(1, count + 1))


def is_public(handler: type, context: Any) -> bool:
    """Whether `handler` answers without the token. A handler whose `public` is a property
    (decided by the config) is asked with this context."""
    public = inspect.getattr_static(handler, "public", False)
    if isinstance(public, property):
        try:
            return bool(public.fget(SimpleNamespace(ctx=context)))
        except Exception:  # noqa: BLE001 - unknown: document the token as needed
            return False
    return bool(public)


# ---------------------------------------------------------------- what each operation means

def _json(schema: str | dict, description: str) -> dict:
    body = {"$ref": _REF + schema} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": body}}}


def _typed(media_type: str, description: str, schema: dict | None = None) -> dict:
    return {"description": description,
            "content": {media_type: {"schema": schema or {"type": "string"}}}}


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    responses: Mapping[str, dict]
    description: str = ""
    errors: tuple[str, ...] = ()  # catalogue codes beyond COMMON_ERRORS (and unauthorized)
    parameters: Mapping[str, dict] = field(default_factory=dict)  # path parameter schemas
    ocr_request: bool = False  # the body takes the request fields (POST /ocr_service)


_OCR_ERRORS = ("bad_request", "invalid_field", "missing_field", "invalid_option",
               "unknown_model", "forbidden_path", "file_not_found", "too_large",
               "image_too_large", "invalid_image", "unsupported_media_type", "worker_crashed",
               "model_not_found", "queue_full", "unavailable", "shutting_down", "timeout")
# What a task can have failed with (answered on every poll, with "status": "failed").
_TASK_ERRORS = ("not_found", "image_too_large", "invalid_image", "worker_crashed",
                "model_not_found", "queue_full", "unavailable", "timeout")
_TASK_ID = {"type": "string", "pattern": "^[0-9a-f]{64}$",
            "description": "the task id a non-blocking POST /ocr_service answered with"}
_ASSET_NAME = {"type": "string", "description": "a file name, as the page refers to it"}

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("post", "/ocr_service"): Operation(
        "Read the text in an image", "ocr",
        {"200": _json("Done", "block_flag true (the default): the result"),
         "202": _json("Pending", "block_flag false: the task was accepted; poll result_url")},
        "The original server's endpoint. The image comes as a multipart upload "
        "(`file_type=file`, field `file`), as base64 (`file_type=base64`, field `img_src`) "
        "or as a path on the server (`file_type=filename`, inside `service.filename_roots`). "
        "Form and multipart bodies may also carry fields in the query string; a JSON body's "
        "query string is ignored. Unknown fields and fields given twice are refused; an "
        "empty value means the field is not given. Every option is part of the cache key: "
        "an image already read with the same options and model is answered from the cache "
        "(`\"cached\": true`).",
        errors=_OCR_ERRORS, ocr_request=True),
    ("get", "/ocr_service/{task_id}"): Operation(
        "Poll a task", "ocr",
        {"200": _json("Done", "the task is done: its result"),
         "202": _json("Pending", "the task is still being read")},
        "404 when the id is unknown or the task expired (`service.task_ttl`). A failed task "
        "answers its error's status with `\"status\": \"failed\"` and its id, on every poll.",
        errors=_TASK_ERRORS, parameters={"task_id": _TASK_ID}),
    ("get", "/health"): Operation(
        "Liveness: the process answers", "operations",
        {"200": _json("Health", "the process is up")},
        "Needs no token, so a load balancer can probe it."),
    ("get", "/ready"): Operation(
        "Readiness: at least one worker is loaded and the server is not draining",
        "operations",
        {"200": _json("Ready", "ready"),
         "503": _json("Ready", "not ready: no worker is loaded, or the server is draining")}),
    ("get", "/metrics"): Operation(
        "Prometheus metrics of the front end", "operations",
        {"200": _typed("text/plain", "the Prometheus text format (OpenMetrics when Accept "
                       "asks for application/openmetrics-text)")},
        "404 when `web_server.metrics` is false. Needs the token when one is set, unless "
        "`web_server.metrics_public` is true.",
        errors=("not_found",)),
    ("get", "/openapi.json"): Operation(
        "This document", "documentation",
        {"200": _json({"type": "object"}, "the OpenAPI 3.1 document of this server, with its "
                      "own defaults and loaded models")},
        "Needs no token: it holds no data, and the /docs page loads it."),
    ("get", "/docs"): Operation(
        "The interactive API page (Swagger UI)", "documentation",
        {"200": _typed("text/html", "the page; its files come from this server, never "
                       "another host")},
        "Needs no token to load; with `web_server.api_token` set, enter it under "
        "Authorize. 404 when the page's files (swagger-ui-dist) are not installed.",
        errors=("not_found",)),
    ("get", "/docs/{name}"): Operation(
        "A file of the API page (vendored swagger-ui-dist, or the page's own script)",
        "documentation",
        {"200": _typed("application/octet-stream", "the file, with its own content type",
                       {"type": "string", "format": "binary"}),
         "304": {"description": "not modified (If-None-Match matched its ETag)"}},
        errors=("not_found",), parameters={"name": _ASSET_NAME}),
    ("get", "/"): Operation(
        "The web page (upload an image, see its text)", "web",
        {"200": _typed("text/html", "the page"),
         "304": {"description": "not modified (If-None-Match matched its ETag)"}},
        "Needs no token to load; the page asks for the token itself when one is set."),
    ("get", "/static/{name}"): Operation(
        "A file of the web page", "web",
        {"200": _typed("application/octet-stream", "the file, with its own content type",
                       {"type": "string", "format": "binary"}),
         "304": {"description": "not modified (If-None-Match matched its ETag)"}},
        "Asked for with its current `?v=<hash>` it is cached for a year (immutable); "
        "otherwise it is revalidated.",
        errors=("not_found",), parameters={"name": _ASSET_NAME}),
    ("get", "/web/settings"): Operation(
        "What the web page offers: models, option defaults and ranges", "web",
        {"200": _json("WebSettings", "this server's models and options")}),
    ("post", "/jobs"): Operation(
        "Start a folder or ZIP job", "jobs",
        {"201": _json({"$ref": "#/components/schemas/JobCreated"}, "the job was accepted; "
                      "follow url for its progress, result_url for its results"),
         "200": _json({"$ref": "#/components/schemas/JobCreated"}, "an identical job (same "
                      "files, sizes and mtimes, or the same ZIP, and the same options) "
                      "exists: its id")},
        "A JSON body `{\"directory\": \"scans\", \"recursive\": true, \"patterns\": "
        "[\"*.jpg\", \"*.pdf\"], ...options}` reads a folder inside "
        "`service.filename_roots` (symlinks leading outside the roots are skipped and "
        "counted); a multipart body with a ZIP in `file` (and the same fields as form "
        "fields) reads the ZIP's images and documents. Fields: `directory`, `recursive`, "
        "`patterns`, `file`, `model`, `dpi`, `pdf_text` and the OCR options of POST "
        "/ocr_service, validated the same way. Items are read at background priority: "
        "interactive requests always go first. A PDF or multi-page TIFF is one item per "
        "page. 404 when the server runs without a job store.",
        errors=("bad_request", "invalid_field", "missing_field", "invalid_option",
                "unknown_model", "invalid_archive", "forbidden_path", "not_found",
                "file_not_found", "too_large", "too_many_items", "archive_too_large",
                "unsupported_media_type", "shutting_down")),
    ("get", "/jobs"): Operation(
        "List the jobs, newest first", "jobs",
        {"200": _json({"type": "object", "required": ["jobs", "total", "limit", "offset",
                                                      "next"],
                       "properties": {
                           "jobs": {"type": "array",
                                    "items": {"$ref": "#/components/schemas/Job"}},
                           "total": {"type": "integer"}, "limit": {"type": "integer"},
                           "offset": {"type": "integer"},
                           "next": {"type": ["string", "null"],
                                    "description": "the next page's URL"}}},
                      "a page of jobs (query: limit 1-100, default 20; offset)")},
        errors=("invalid_field", "not_found", "shutting_down")),
    ("get", "/jobs/{job_id}"): Operation(
        "A job's progress", "jobs",
        {"200": _json({"$ref": "#/components/schemas/Job"}, "the job, with its last few "
                      "items in recent")},
        "done counts items read (cached of them answered from the result cache), failed the "
        "items that ended with an error; total grows when a document's pages are counted. "
        "eta_s is null unless the job is running.",
        errors=("not_found", "shutting_down")),
    ("delete", "/jobs/{job_id}"): Operation(
        "Delete a job with its items, results and spooled files", "jobs",
        {"204": {"description": "deleted (a running job is stopped first)"}},
        errors=("not_found", "shutting_down")),
    ("post", "/jobs/{job_id}/cancel"): Operation(
        "Cancel a queued or running job", "jobs",
        {"200": _json({"$ref": "#/components/schemas/Job"}, "cancelled (or already was); "
                      "items in flight still finish, and finished items stay readable")},
        errors=("not_found", "job_finished", "shutting_down")),
    ("get", "/jobs/{job_id}/results"): Operation(
        "A job's results, streamed", "jobs",
        {"200": {"description": "the finished items, in file and page order (a running "
                                "job's are readable): format=json (default) an array of one "
                                "object per item, jsonl one object per line, csv one row "
                                "per text line (file,page,line,text,confidence,x1,y1,...,"
                                "x4,y4), txt each item's text under a '==> file (page n) "
                                "<==' line",
                 "content": {media: {"schema": {"type": "string"}} for media in (
                     "application/json", "application/x-ndjson", "text/csv",
                     "text/plain")}}},
        errors=("not_found", "invalid_field", "shutting_down")),
}

_JOB_STATUS = {"enum": ["queued", "running", "done", "failed", "cancelled"]}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_JOB_SCHEMAS = {
    "JobCreated": {
        "type": "object", "required": ["id", "status", "total", "url", "result_url"],
        "properties": {"id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                       "status": _JOB_STATUS, "total": {"type": "integer"},
                       "skipped_symlinks": {"type": "integer"}, "url": {"type": "string"},
                       "result_url": {"type": "string"}}},
    "Job": {
        "type": "object",
        "required": ["id", "status", "total", "done", "failed", "cached", "skipped_symlinks",
                     "started_at", "finished_at", "eta_s", "result_url"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "status": _JOB_STATUS,
            "source": {"enum": ["folder", "zip"]},
            "name": {"type": "string", "description": "the folder, or the ZIP's file name"},
            "model": {"type": "string"}, "options": {"type": "object"},
            "total": {"type": "integer"}, "done": {"type": "integer"},
            "failed": {"type": "integer"}, "cached": {"type": "integer"},
            "skipped_symlinks": {"type": "integer"}, "created_at": _TIME,
            "started_at": _TIME, "finished_at": _TIME,
            "eta_s": {"type": ["number", "null"]}, "url": {"type": "string"},
            "result_url": {"type": "string"},
            "error": {"type": "string", "description": "why a failed job failed"},
            "recent": {"type": "array", "items": {"type": "object"},
                       "description": "GET /jobs/{job_id}: the last items to finish"}}},
}

_TAGS = [
    {"name": "ocr", "description": "Reading images"},
    {"name": "operations", "description": "Health, readiness and metrics"},
    {"name": "documentation", "description": "This document and the API page"},
    {"name": "web", "description": "The web page and what it loads"},
    {"name": "jobs", "description": "Folder and ZIP jobs, read in the background"},
]


# ---------------------------------------------------------------- the document

def openapi_document(app: tornado.web.Application, context: Any) -> dict:
    """The OpenAPI 3.1 document of `app` as served with `context` (its AppContext)."""
    policy = context.requests
    token = bool(context.http.api_token)
    fields = field_schemas(policy)
    statuses = _error_statuses()
    paths: dict[str, dict] = {}
    for route in app_routes(app):
        item = paths.setdefault(route.path, {})
        public = is_public(route.handler, context)
        for method in route.methods:
            item[method] = _operation(route, method, public, token, fields, statuses)
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "ppocr-server", "version": API_VERSION,
                 "description": _info_description(context)},
        "tags": _TAGS,
        "paths": paths,
        "components": {
            "schemas": {**_schemas(), **_JOB_SCHEMAS},
            "responses": {f"Error{status}": _error_response(status, codes)
                          for status, codes in statuses.items()},
            "securitySchemes": {SECURITY_SCHEME: {
                "type": "http", "scheme": "bearer",
                "description": "web_server.api_token, sent as `Authorization: Bearer "
                               "<token>`"}},
        },
    }
    if token:
        document["security"] = [{SECURITY_SCHEME: []}]
    return document


def _operation(route: Route, method: str, public: bool, token: bool,
               fields: dict[str, dict], statuses: dict[int, list[str]]) -> dict:
    documented_method = "get" if method == "head" else method
    spec = OPERATIONS.get((documented_method, route.path))
    if spec is None:
        doc = inspect.getdoc(route.handler) or route.handler.__name__
        spec = Operation(doc.splitlines()[0], "undocumented", {"200": {"description": "OK"}})
    responses: dict[str, dict] = {status: dict(response)
                                  for status, response in spec.responses.items()}
    codes = list(COMMON_ERRORS) + list(spec.errors)
    if token and not public:
        codes.append("unauthorized")
    for status in sorted({CATALOGUE[code].status for code in codes}):
        error = {"$ref": f"#/components/responses/Error{status}"}
        own = responses.get(str(status))
        responses[str(status)] = error if own is None else _either(own, status, statuses)
    operation: dict[str, Any] = {
        "operationId": _operation_id(method, route.path),
        "summary": spec.summary,
        "tags": [spec.tag],
        "responses": dict(sorted(responses.items())),
    }
    if spec.description:
        operation["description"] = spec.description
    if method == "head":
        operation["summary"] = f"{spec.summary} (headers only)"
        operation["responses"] = {status: {key: value for key, value in response.items()
                                           if key != "content"}
                                  for status, response in operation["responses"].items()}
    if spec.tag == "undocumented":
        operation["x-undocumented"] = True
    parameters = [_path_parameter(name, spec, route.handler) for name in route.parameters]
    if parameters:
        operation["parameters"] = parameters
    if spec.ocr_request and method == "post":
        operation["requestBody"] = _ocr_request_body(fields)
    if public:
        operation["security"] = []
    return operation


def _either(own: dict, status: int, statuses: dict[int, list[str]]) -> dict:
    """An operation's own response at a status errors share (503 of /ready): either body."""
    content = own.get("content", {})
    if "application/json" not in content:
        return own
    schema = content["application/json"]["schema"]
    return {"description": f"{own['description']}; or an error: "
                           f"{', '.join(statuses[status])}",
            "headers": _error_response(status, statuses[status]).get("headers", {}),
            "content": {"application/json": {"schema": {
                "anyOf": [schema, {"$ref": _REF + "Error"}]}}}}


def _path_parameter(name: str, spec: Operation, handler: type) -> dict:
    # A handler may narrow its own parameters (the names it serves, say).
    schema = {**(spec.parameters.get(name) or {"type": "string"}),
              **getattr(handler, "openapi_parameters", {}).get(name, {})}
    description = schema.pop("description", None)
    parameter = {"name": name, "in": "path", "required": True, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _operation_id(method: str, path: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method}_{slug}"


def _ocr_request_body(fields: dict[str, dict]) -> dict:
    """POST /ocr_service's three bodies, every field from server.request's declarations."""
    upload = {name: _blank_example(fields[name]) for name in REQUEST_FIELDS}
    text_only = {name: schema for name, schema in upload.items() if name != "file"}
    return {
        "required": True,
        "description": "The request fields (control fields, then the OCR options), the same "
                       "in every body type. Defaults are this server's.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": upload,
                           "additionalProperties": False},
                "encoding": {"file": {"contentType": "image/*, application/octet-stream"}},
            },
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": text_only,
                           "additionalProperties": False},
            },
            "application/json": {
                "schema": {"type": "object", "properties": text_only,
                           "additionalProperties": False},
                "example": {"file_type": "base64", "img_src": "<the image, base64-encoded>",
                            "block_flag": True},
            },
        },
    }


def _blank_example(schema: dict) -> dict:
    """A free-text field starts blank on the /docs page (blank means "not given"), rather
    than with Swagger UI's placeholder "string", which the server would read as a value."""
    if schema["type"] == "string" and "format" not in schema and not {"default", "enum"} & set(
            schema):
        return {**schema, "examples": [""]}
    return schema


def _info_description(context: Any) -> str:
    policy = context.requests
    token = ("Every route except the public ones (marked with no security) needs "
             "`Authorization: Bearer <token>`: use Authorize on the /docs page."
             if context.http.api_token else "No token is configured: every route is open.")
    return (
        "PP-OCR text detection and recognition over HTTP. Loaded model sets: "
        f"{', '.join(policy.models)} (default {policy.default_model}); the largest body "
        f"accepted is {policy.max_body_size} bytes. {token} Every route also answers OPTIONS "
        "(the CORS preflight: 204 when web_server.cors_origins is set, else 405). Errors are "
        "always JSON, `{\"error\": {\"code\": ..., \"message\": ...}}`, with the status the "
        "code's table gives (see the ErrorCode schema).")


# ---------------------------------------------------------------- shapes and errors

def _error_statuses() -> dict[int, list[str]]:
    statuses: dict[int, list[str]] = {}
    for kind in CATALOGUE.values():
        statuses.setdefault(kind.status, []).append(kind.code)
    return dict(sorted(statuses.items()))


def _error_response(status: int, codes: list[str]) -> dict:
    lines = [f"`{code}`: {CATALOGUE[code].description}" for code in codes]
    response: dict[str, Any] = {
        "description": "; ".join(lines),
        "x-error-codes": list(codes),
        "content": {"application/json": {"schema": {"allOf": [
            {"$ref": _REF + "Error"},
            {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
        ]}}},
    }
    waits = {CATALOGUE[code].retry_after for code in codes} - {None}
    if waits:
        response["headers"] = {"Retry-After": {
            "description": "seconds to wait before retrying: " + ", ".join(
                f"{code} {CATALOGUE[code].retry_after}" for code in codes
                if CATALOGUE[code].retry_after is not None),
            "schema": {"type": "integer", "minimum": 0}}}
    return response


def _schemas() -> dict[str, dict]:
    point = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
    table = "\n".join(f"| {kind.status} | `{kind.code}` | {kind.description} |"
                      for kind in CATALOGUE.values())
    return {
        "Line": {"type": "object", "required": ["text", "confidence", "box"],
                 "additionalProperties": False, "properties": {
            "text": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "box": {"type": "array", "items": point, "minItems": 4, "maxItems": 4,
                    "description": "top-left, top-right, bottom-right, bottom-left, in image "
                                   "pixels (after EXIF rotation)"}}},
        "Done": {"type": "object",
                 "required": ["id", "status", "cached", "model", "width", "height", "lines",
                              "text"],
                 "additionalProperties": False,
                 "properties": {
                     "id": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                            "description": "a fresh random id per submission"},
                     "status": {"const": "done"},
                     "cached": {"type": "boolean",
                                "description": "answered from the result cache"},
                     "model": {"type": "string"},
                     "elapsed_ms": {"type": "number",
                                    "description": "blocking requests only: time in the "
                                                   "server"},
                     "width": {"type": "integer"}, "height": {"type": "integer"},
                     "lines": {"type": "array", "items": {"$ref": _REF + "Line"},
                               "description": "in reading order"},
                     "text": {"type": "string", "description": "the lines joined by newlines"},
                     "timings_ms": {"type": "object",
                                    "additionalProperties": {"type": "number"},
                                    "description": "the worker's stage times for the run "
                                                   "that produced the result"}}},
        "Pending": {"type": "object", "required": ["id", "status", "result_url"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "status": {"const": "pending"},
                        "result_url": {"type": "string",
                                       "description": "GET it for the result"}}},
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                  "properties": {
                      "error": {"type": "object", "required": ["code", "message"],
                                "additionalProperties": False, "properties": {
                                    "code": {"$ref": _REF + "ErrorCode"},
                                    "message": {"type": "string",
                                                "description": "for people; may change"},
                                    "request_id": {"type": "string",
                                                   "description": "this request's id (also "
                                                   "the X-Request-ID header), as the server "
                                                   "log names it"}}},
                      "id": {"type": "string", "description": "a failed task's id"},
                      "status": {"const": "failed", "description": "a failed task"}}},
        "ErrorCode": {"type": "string", "enum": list(CATALOGUE),
                      "description": "| status | code | meaning |\n|---|---|---|\n" + table},
        "Health": {"type": "object", "required": ["status"], "additionalProperties": False,
                   "properties": {"status": {"const": "ok"}}},
        "Ready": {"type": "object", "required": ["status", "draining", "workers"],
                  "properties": {
                      "status": {"enum": ["ready", "not_ready"]},
                      "draining": {"type": "boolean"},
                      "workers": {"type": "integer", "description": "workers loaded"},
                      "size": {"type": "integer", "description": "workers configured"},
                      "busy": {"type": "integer"}, "queued": {"type": "integer"},
                      "queued_background": {"type": "integer"},
                      "engine_runs": {"type": "integer",
                                      "description": "runs actually sent to workers"},
                      "redis": {"enum": ["ok", "degraded"],
                                "description": "with service.redis_url: whether the shared "
                                "Redis answers (degraded: this node serves on its own; the "
                                "status stays ready)"},
                      "redis_degraded": {"type": "string",
                                         "description": "why Redis is degraded"}},
                  "additionalProperties": {"type": ["integer", "number"]},
                  "description": "also the result cache's and the task store's counters"},
        "WebSettings": {"type": "object",
                        "required": ["models", "default_model", "max_body_size", "options"],
                        "properties": {
                            "models": {"type": "array", "items": {"type": "string"}},
                            "default_model": {"type": "string"},
                            "max_body_size": {"type": "integer"},
                            "options": {"type": "array", "items": {"type": "object"},
                                        "description": "each option's name and JSON "
                                                       "schema, in declaration order"},
                            "document_options": {
                                "type": "array", "items": {"type": "object"},
                                "description": "pages, dpi, pdf_text and password, with this "
                                               "server's defaults"},
                            "jobs": {"type": "object",
                                     "properties": {
                                         "enabled": {"type": "boolean"},
                                         "folders": {"type": "boolean"},
                                         "default_patterns": {"type": "array",
                                                              "items": {"type": "string"}}},
                                     "description": "whether folder and ZIP jobs are on, and "
                                                    "whether filename roots exist"}}},
    }


__all__ = ["API_VERSION", "OPERATIONS", "Operation", "Route", "app_routes",
           "handler_methods", "is_public", "openapi_document", "path_template"]
