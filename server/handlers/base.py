"""What every handler shares: the context it is given, body limits, auth, CORS, and the one
place where errors become JSON responses.

Handlers get three things through `initialize`: the frozen policies (what is accepted, fixed at
start), the lifecycle (draining, requests in progress) and the services (pool, read path). Every
handler streams its body, so each route enforces its own size limit as the body arrives and an
oversized body, chunked or not, gets the documented JSON 413 instead of Tornado's bare 400.
Errors of every kind become one JSON shape in `write_error` (through `to_api_error`); 4xx and
known 5xx are logged as one line without a traceback, only unexpected exceptions with one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import tornado.web

from ..errors import ApiError, to_api_error
from ..jobs import JobRunner
from ..metrics import Metrics
from ..pool import PoolError, WorkerPool
from ..request import RequestPolicy
from ..service import OcrService

log = logging.getLogger("ppocr.http")

# Tornado's own per-connection body limit is lifted to this; each handler enforces its route's
# limit itself (see BaseHandler.data_received), with a JSON answer.
_CONNECTION_BODY_LIMIT = 1 << 62
# Routes without an upload take small bodies only.
SMALL_BODY_LIMIT = 64 * 1024
# A client's X-Request-ID is kept when it is this tame (it ends up in logs and bodies).
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def request_id_of(given: str | None) -> str:
    """The client's X-Request-ID if it is sane, else a fresh random one."""
    if given is not None and _SANE_REQUEST_ID.match(given):
        return given
    return secrets.token_hex(16)


@dataclass(frozen=True)
class HttpPolicy:
    api_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    request_timeout: float = 120.0


@dataclass
class Lifecycle:
    """Draining (SIGTERM received) and the requests in progress, so shutdown can wait."""

    draining: bool = False
    active_requests: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        if self.draining:
            raise ApiError("shutting_down", "the server is shutting down")
        self.active_requests += 1
        self.idle.clear()

    def leave(self) -> None:
        self.active_requests -= 1
        if self.active_requests == 0:
            self.idle.set()


@dataclass(frozen=True)
class Services:
    pool: WorkerPool
    ocr: OcrService
    metrics: Metrics | None = None  # None: web_server.metrics is false
    jobs: JobRunner | None = None  # None: no job store (/jobs answers 404)


@dataclass(frozen=True)
class AppContext:
    http: HttpPolicy
    requests: RequestPolicy
    lifecycle: Lifecycle
    services: Services


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    public = False  # True: no token needed (health checks)
    uploads = False  # True: bodies up to requests.max_body_size (else SMALL_BODY_LIMIT)

    def initialize(self, context: AppContext) -> None:
        self.ctx = context
        self.request_id = request_id_of(self.request.headers.get("X-Request-ID"))
        self.set_header("X-Request-ID", self.request_id)
        # Filled by handlers for the access log: cache hit, engine time of the run.
        self.log_fields: dict = {}
        self.task_id: str | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    @property
    def body_limit(self) -> int:
        return self.ctx.requests.max_body_size if self.uploads else SMALL_BODY_LIMIT

    @contextlib.contextmanager
    def in_progress(self) -> Iterator[None]:
        """Counts the block as a request in progress, so shutdown waits for it; once the
        server is draining it is refused (shutting_down) before it starts."""
        lifecycle = self.ctx.lifecycle
        lifecycle.enter()
        try:
            yield
        finally:
            lifecycle.leave()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        request_id = getattr(self, "request_id", None)
        if request_id is not None:  # clear() (before an error body) calls this again
            self.set_header("X-Request-ID", request_id)

    def prepare(self) -> None:
        self.request.connection.set_max_body_size(_CONNECTION_BODY_LIMIT)
        self._cors()
        length = self.request.headers.get("Content-Length")
        if length is not None:
            digits = _declared_length(length)
            if len(digits) > 18 or int(digits) > self.body_limit:
                shown = digits if len(digits) <= 20 else f"a {len(digits)}-digit number of"
                raise ApiError("too_large", f"the request body is {shown} bytes; the limit is "
                               f"{self.body_limit}")
        if self.request.method == "OPTIONS":
            return
        token = self.ctx.http.api_token
        if token and not self.public:
            scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), token.encode()):
                raise ApiError("unauthorized", "missing or wrong 'Authorization: Bearer' token")

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return  # already answered (refused); the rest of the body is discarded
        self._size += len(chunk)
        if self._size > self.body_limit:
            self._chunks = []
            error = ApiError("too_large", f"the request body exceeds the limit of "
                             f"{self.body_limit} bytes")
            # Answers now; Tornado closes the connection once it is written, since the body
            # was not read to its end.
            self.send_error(413, exc_info=(ApiError, error, None))
            return
        self._chunks.append(chunk)

    def body(self) -> bytes:
        body, self._chunks = b"".join(self._chunks), []
        return body

    def options(self, *args) -> None:  # CORS preflight
        self.set_status(204 if self.ctx.http.cors_origins else 405)

    def _cors(self) -> None:
        origins = self.ctx.http.cors_origins
        origin = self.request.headers.get("Origin")
        if not origins or origin is None:
            return
        if "*" in origins or origin in origins:
            self.set_header("Access-Control-Allow-Origin", "*" if "*" in origins else origin)
            self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
            self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.set_header("Access-Control-Expose-Headers", "Retry-After, X-Request-ID")
            self.set_header("Vary", "Origin")

    def on_finish(self) -> None:
        metrics = self.ctx.services.metrics
        if metrics is not None:
            metrics.request_finished(self, cached=self.log_fields.get("cached") is True)

    def send_json(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False))

    def send_raw(self, body: bytes, status: int = 200) -> None:
        """Answers `body`, already encoded JSON."""
        self.set_status(status)
        self.finish(body)

    def send_encoded(self, head: dict, encoded: bytes, status: int = 200) -> None:
        """Answers the JSON object `head` followed by the fields of `encoded`, an already
        encoded JSON object (store.encode_result), without decoding it; `encoded`'s fields
        follow head's (a field in both appears twice: keep them apart)."""
        self.set_status(status)
        prefix = json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode()
        rest = encoded[1:].lstrip()
        self.finish(prefix[:-1] + (b"," + rest if rest[:1] != b"}" else b"}"))

    def write_error(self, status_code: int, **kwargs) -> None:
        error = to_api_error(kwargs.get("exc_info", (None, None, None))[1], status_code)
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Request-ID", self.request_id)
        self._cors()  # send_error cleared the headers prepare() set
        if error.retry_after is not None:
            self.set_header("Retry-After", str(error.retry_after))
        body: dict = {"error": {**error.to_dict(), "request_id": self.request_id}}
        if self.task_id is not None:
            body.update(id=self.task_id, status="failed")
        self.finish(json.dumps(body, ensure_ascii=False))

    def log_exception(self, typ, value, tb) -> None:
        error = to_api_error(value, 500)
        where = f"{self.request.method} {self.request.path[:200]} (request {self.request_id})"
        if isinstance(value, (ApiError, PoolError, tornado.web.HTTPError)) or error.status < 500:
            level = logging.WARNING if error.status < 500 else logging.ERROR
            log.log(level, "%d %s: %s", error.status, where, error.message)
        else:
            log.error("%s failed", where, exc_info=(typ, value, tb))


def _declared_length(value: str) -> str:
    """The digits (no leading zeros) of a Content-Length header; a JSON 400 if it is not a
    number. ASCII digits only: str.isdigit() also passes superscripts (int() then raises),
    and int() refuses over 4300 digits, so neither may reach int() unchecked. Duplicated values
    (some proxies send '12, 12') must agree, as Tornado requires."""
    pieces = {piece.strip(" \t") for piece in value.split(",")}
    text = pieces.pop() if len(pieces) == 1 else ""
    if not (text.isascii() and text.isdigit()):
        raise ApiError("bad_request", "the Content-Length header is not a byte count")
    return text.lstrip("0") or "0"
