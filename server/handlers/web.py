"""The web page: GET / (server/static/index.html), GET /static/<name> and GET /web/settings.

The page's files are read once, at start (`WebAssets.load`), into memory: a request can only
name one of those files, so there is no directory listing and no path to traverse, and a file
that appears in the folder later is never served. Only files whose suffix has a declared
content type are loaded.

Caching: the page itself is `no-cache` (revalidated with its ETag on every load); it refers
to each asset as `static/<name>?v=<hash>`, and an asset asked for with its current hash is
cached for a year (`immutable`), so a new release is picked up on the next page load and an
unchanged one is never fetched twice. Without the right hash an asset is `no-cache` too.

The page and its files are public (a browser cannot send a bearer token when it navigates);
they hold no server data. What the page needs to know about this server (the loaded models,
option defaults and ranges, whether folder jobs are on) comes from GET /web/settings, which
needs the token like the API. It names no server path: whether filename roots exist is all
the folder-job form needs, since a job's folder is resolved against them on the server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ocr_engine.options import OPTION_NAMES

from ..errors import ApiError
from ..jobs import DEFAULT_PATTERNS
from ..request import field_schemas
from .base import BaseHandler

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json; charset=utf-8",
    ".woff2": "font/woff2",
}
INDEX = "index.html"
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
# The page runs only its own files: no inline script or style, no other origin.
_PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' "
                "blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'")
# The fields of a PDF or multi-page TIFF request, in the order the page shows them.
DOCUMENT_FIELDS = ("pages", "dpi", "pdf_text", "password")
_ASSET_REFERENCE = re.compile(r'((?:src|href)=")static/([^"?#/]+)(")')


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    version: str  # a short content hash: the `v` of its URL and its ETag

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


@dataclass(frozen=True)
class WebAssets:
    page: Asset
    files: dict[str, Asset]

    @classmethod
    def load(cls, folder: Path = STATIC_DIR) -> WebAssets:
        """Reads the folder's files (not its subfolders) whose suffix has a content type."""
        files = {}
        for path in sorted(folder.iterdir()):
            content_type = CONTENT_TYPES.get(path.suffix.lower())
            if path.name.startswith(".") or content_type is None or not path.is_file():
                continue
            files[path.name] = _asset(path.read_bytes(), content_type)
        if INDEX not in files:
            raise FileNotFoundError(f"the web page {folder / INDEX} is missing")

        def versioned(match: re.Match) -> str:
            asset = files.get(match.group(2))
            if asset is None:
                return match.group(0)
            return f"{match.group(1)}static/{match.group(2)}?v={asset.version}{match.group(3)}"

        html = _ASSET_REFERENCE.sub(versioned, files.pop(INDEX).body.decode("utf-8"))
        return cls(page=_asset(html.encode("utf-8"), CONTENT_TYPES[".html"]), files=files)


def _asset(body: bytes, content_type: str) -> Asset:
    return Asset(body, content_type, hashlib.sha256(body).hexdigest()[:16])


class _AssetHandler(BaseHandler):
    public = True

    def initialize(self, context, assets: WebAssets) -> None:  # type: ignore[override]
        super().initialize(context)
        self.assets = assets

    def send_asset(self, asset: Asset, cache_control: str, include_body: bool) -> None:
        self.set_header("Content-Type", asset.content_type)
        self.set_header("Cache-Control", cache_control)
        self.set_header("ETag", asset.etag)
        self.set_header("X-Content-Type-Options", "nosniff")
        if _etag_matches(self.request.headers.get("If-None-Match", ""), asset.etag):
            self.set_status(304)
            self.finish()
            return
        if not include_body:
            self.set_header("Content-Length", str(len(asset.body)))
            self.finish()
            return
        self.finish(asset.body)


class PageHandler(_AssetHandler):
    """GET / : the page."""

    def get(self) -> None:
        self._send(include_body=True)

    def head(self) -> None:
        self._send(include_body=False)

    def _send(self, include_body: bool) -> None:
        self.set_header("Content-Security-Policy", _PAGE_POLICY)
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.send_asset(self.assets.page, _REVALIDATE, include_body)


class StaticHandler(_AssetHandler):
    """GET /static/<name>: one of the page's files, by name only."""

    def get(self, name: str) -> None:
        self._send(name, include_body=True)

    def head(self, name: str) -> None:
        self._send(name, include_body=False)

    def _send(self, name: str, include_body: bool) -> None:
        asset = self.assets.files.get(name)
        if asset is None:
            raise ApiError("not_found", "no such file")
        current = self.get_query_argument("v", None) == asset.version
        self.send_asset(asset, _IMMUTABLE if current else _REVALIDATE, include_body)


class SettingsHandler(BaseHandler):
    """GET /web/settings: what the page shows as choices, from this server's policy.

    {"models": [...], "default_model": "...", "max_body_size": N,
     "options": [{"name": ..., "type": ..., "default": ..., "minimum"/"maximum"/"enum",
                  "description": ...}, ...] (the OCR options in declaration order),
     "document_options": [the same for pages, dpi, pdf_text, password],
     "jobs": {"enabled": bool, "folders": bool, "default_patterns": [...]}}

    `jobs.enabled` is false when the server runs without a job store (/jobs answers 404);
    `jobs.folders` is false when service.filename_roots is empty (only ZIP jobs then).
    """

    def get(self) -> None:
        policy = self.ctx.requests
        schemas = field_schemas(policy)
        self.send_json({
            "models": list(policy.models), "default_model": policy.default_model,
            "max_body_size": policy.max_body_size,
            "options": [{"name": name, **schemas[name]} for name in OPTION_NAMES],
            "document_options": [{"name": name, **schemas[name]} for name in DOCUMENT_FIELDS],
            "jobs": {"enabled": self.ctx.services.jobs is not None,
                     "folders": bool(policy.filename_roots),
                     "default_patterns": list(DEFAULT_PATTERNS)},
        })


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))
