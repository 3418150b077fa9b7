"""GET /openapi.json (this server's OpenAPI document), GET /docs (Swagger UI on it) and
GET /docs/<name> (the page's files).

Swagger UI is vendored, never loaded from a CDN: the Makefile's set-up unpacks a pinned
swagger-ui-dist (checked against its sha512) into server/static/vendor/swagger-ui/, and
server/static/docs/swagger-init.js starts it on /openapi.json. `ApiDocs.load()` reads those
files once, at start; a request can only name one of them. Without the vendored files the
server still runs and /docs answers a JSON 404 saying how to install them.

The document is built on its first request (the app's routes exist only once the Application
does) from the app and its context, then kept as bytes: policy and routes are fixed at start.

Everything here is public: a browser cannot send a bearer token when it navigates, and none
of it holds data. "Try it out" on the page sends the token entered under Authorize.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.web
from tornado.escape import xhtml_escape

from ..errors import ApiError
from ..openapi import openapi_document
from .base import BaseHandler

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor" / "swagger-ui"
# The page's files, by the name /docs/<name> serves them under: (file, content type).
PAGE_FILES: dict[str, tuple[Path, str]] = {
    "swagger-ui.css": (VENDOR_DIR / "swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui-bundle.js": (VENDOR_DIR / "swagger-ui-bundle.js",
                             "text/javascript; charset=utf-8"),
    "favicon-32x32.png": (VENDOR_DIR / "favicon-32x32.png", "image/png"),
    "swagger-init.js": (STATIC_DIR / "docs" / "swagger-init.js",
                        "text/javascript; charset=utf-8"),
}
NOT_INSTALLED = ("the API page's files are not installed: `make run` or `make test` unpacks "
                 "swagger-ui-dist into server/static/vendor/swagger-ui")
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
# Only this server's own files and API; Swagger UI sets inline styles.
_PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class PageFile:
    body: bytes
    content_type: str

    @property
    def version(self) -> str:
        return hashlib.sha256(self.body).hexdigest()[:16]


class ApiDocs:
    """The /docs page's files (read at start) and the OpenAPI document (built once)."""

    def __init__(self, files: dict[str, PageFile], missing: tuple[str, ...]) -> None:
        self.files = files
        self.missing = missing
        self._document: bytes | None = None

    @classmethod
    def load(cls) -> ApiDocs:
        files, missing = {}, []
        for name, (path, content_type) in PAGE_FILES.items():
            if path.is_file():
                files[name] = PageFile(path.read_bytes(), content_type)
            else:
                missing.append(name)
        return cls(files, tuple(missing))

    def document(self, app: tornado.web.Application, context: Any) -> bytes:
        if self._document is None:
            document = openapi_document(app, context)
            self._document = json.dumps(document, ensure_ascii=False, indent=1).encode()
        return self._document


class _DocsHandler(BaseHandler):
    public = True

    def initialize(self, context, docs: ApiDocs) -> None:  # type: ignore[override]
        super().initialize(context)
        self.docs = docs

    def send_body(self, body: bytes, content_type: str, etag: str, cache_control: str,
                  include_body: bool) -> None:
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", cache_control)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("ETag", f'"{etag}"')
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
        elif include_body:
            self.finish(body)
        else:
            self.set_header("Content-Length", str(len(body)))
            self.finish()


class OpenApiHandler(_DocsHandler):
    """GET /openapi.json: the OpenAPI 3.1 document of this server."""

    def get(self) -> None:
        body = self.docs.document(self.application, self.ctx)
        self.send_body(body, "application/json; charset=utf-8",
                       hashlib.sha256(body).hexdigest()[:16], _REVALIDATE, True)


class DocsPageHandler(_DocsHandler):
    """GET /docs: Swagger UI on /openapi.json."""

    def get(self) -> None:
        self._send(include_body=True)

    def head(self) -> None:
        self._send(include_body=False)

    def _send(self, include_body: bool) -> None:
        if self.docs.missing:
            raise ApiError("not_found", NOT_INSTALLED)
        body = self._page().encode("utf-8")
        self.set_header("Content-Security-Policy", _PAGE_POLICY)
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.send_body(body, "text/html; charset=utf-8", hashlib.sha256(body).hexdigest()[:16],
                       _REVALIDATE, include_body)

    def _page(self) -> str:
        def url(name: str) -> str:
            return xhtml_escape(f"{self.reverse_url('docs_file', name)}"
                                f"?v={self.docs.files[name].version}")

        spec_url = xhtml_escape(self.reverse_url("openapi"))
        return (
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>ppocr-server API</title>\n"
            f"<link rel=\"icon\" type=\"image/png\" href=\"{url('favicon-32x32.png')}\">\n"
            f"<link rel=\"stylesheet\" href=\"{url('swagger-ui.css')}\">\n"
            "</head>\n<body>\n"
            f"<div id=\"swagger-ui\" data-openapi-url=\"{spec_url}\"></div>\n"
            f"<script src=\"{url('swagger-ui-bundle.js')}\"></script>\n"
            f"<script src=\"{url('swagger-init.js')}\"></script>\n"
            "</body>\n</html>\n")


class DocsFileHandler(_DocsHandler):
    """GET /docs/<name>: one of the API page's files, by name only."""

    openapi_parameters = {"name": {"enum": list(PAGE_FILES)}}  # read by server/openapi.py

    def get(self, name: str) -> None:
        self._send(name, include_body=True)

    def head(self, name: str) -> None:
        self._send(name, include_body=False)

    def _send(self, name: str, include_body: bool) -> None:
        if name not in PAGE_FILES:
            raise ApiError("not_found", "no such file")
        page_file = self.docs.files.get(name)
        if page_file is None:
            raise ApiError("not_found", NOT_INSTALLED)
        current = self.get_query_argument("v", None) == page_file.version
        self.send_body(page_file.body, page_file.content_type, page_file.version,
                       _IMMUTABLE if current else _REVALIDATE, include_body)
