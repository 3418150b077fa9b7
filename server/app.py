"""The Tornado application: handlers for /ocr_service, task lookup, /health and /ready.

Handlers get everything through `initialize(context)`; `make_app` wires it. Errors of every kind
become the one JSON error shape in BaseHandler.write_error; 4xx are logged as warnings without
a traceback, 5xx with one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import tornado.web
from tornado.web import HTTPError

from ocr_engine import OcrOptions

from .errors import ApiError, to_api_error
from .pool import WorkerPool
from .request import build_request, read_fields
from .service import OcrService, request_key
from .worker import OcrJob

log = logging.getLogger("ppocr.http")
_TASK_ID = re.compile(r"^[0-9a-f]{64}$")

@dataclass
class AppContext:
    pool: WorkerPool
    service: OcrService
    defaults: OcrOptions
    default_model: str
    models: tuple[str, ...]
    filename_roots: tuple[Path, ...]
    max_body_size: int
    request_timeout: float
    api_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    draining: bool = False
    active_requests: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class BaseHandler(tornado.web.RequestHandler):
    def initialize(self, context: AppContext) -> None:
        self.ctx = context

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        self._cors()
        if self.request.method == "OPTIONS":
            return
        token = self.ctx.api_token
        if token and not isinstance(self, HealthHandler):
            header = self.request.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise ApiError("unauthorized", "missing or wrong 'Authorization: Bearer' "
                               "token")

    def options(self, *args) -> None:  # CORS preflight
        self.set_status(204 if self.ctx.cors_origins else 405)

    def _cors(self) -> None:
        origins = self.ctx.cors_origins
        origin = self.request.headers.get("Origin")
        if not origins or origin is None:
            return
        if "*" in origins or origin in origins:
            self.set_header("Access-Control-Allow-Origin", "*" if "*" in origins else origin)
            self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
            self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.set_header("Vary", "Origin")

    def send_json(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs) -> None:
        error = to_api_error(kwargs.get("exc_info", (None, None, None))[1], status_code)
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if error.retry_after is not None:
            self.set_header("Retry-After", str(error.retry_after))
        body = {"error": error.to_dict()}
        task_id = getattr(self, "task_id", None)
        if task_id is not None:
            body.update(id=task_id, status="failed")
        self.finish(json.dumps(body, ensure_ascii=False))

    def log_exception(self, typ, value, tb) -> None:
        error = to_api_error(value, 500)
        if error.status < 500 or isinstance(value, ApiError):
            log.warning("%d %s %s: %s", error.status, self.request.method, self.request.path,
                        error.message)
        else:
            log.error("%s %s failed", self.request.method, self.request.path,
                      exc_info=(typ, value, tb))


@tornado.web.stream_request_body
class OcrServiceHandler(BaseHandler):
    """POST /ocr_service: read an image now (block_flag true) or start a task (false).

    The body is streamed so an oversized upload is refused from its Content-Length, or as soon
    as it passes the limit, without being buffered whole.
    """

    def prepare(self) -> None:
        super().prepare()
        self._chunks: list[bytes] = []
        self._size = 0
        self.request.connection.set_max_body_size(self.ctx.max_body_size + 1)
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.ctx.max_body_size:
            raise ApiError("too_large", f"the request body is {length} bytes; the limit "
                           f"is {self.ctx.max_body_size}")

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.ctx.max_body_size:
            raise ApiError("too_large", f"the request body exceeds the limit of "
                           f"{self.ctx.max_body_size} bytes")
        self._chunks.append(chunk)

    async def post(self) -> None:
        started = time.perf_counter()
        if self.ctx.draining:
            raise ApiError("shutting_down", "the server is shutting down")
        self.ctx.active_requests += 1
        self.ctx.idle.clear()
        try:
            await self._post(started)
        finally:
            self.ctx.active_requests -= 1
            if self.ctx.active_requests == 0:
                self.ctx.idle.set()

    async def _post(self, started: float) -> None:
        body, self._chunks = b"".join(self._chunks), []
        fields, files = read_fields(self.request.headers.get("Content-Type", ""), body,
                                    self.request.query_arguments)
        ctx = self.ctx
        request = build_request(fields, files, ctx.defaults, ctx.default_model, ctx.models,
                                ctx.filename_roots, ctx.max_body_size)
        key = request_key(request.image, request.options.cache_key(), request.model)
        job = OcrJob(request.image, request.options, request.model)
        if not request.block:
            ctx.service.submit_task(key, job)
            self.send_json({"id": key, "status": "pending",
                            "result_url": self.reverse_url("task", key)}, status=202)
            return
        try:
            result, cached = await asyncio.wait_for(ctx.service.run(key, job),
                                                    ctx.request_timeout)
        except TimeoutError:
            raise ApiError("timeout", f"no result within {ctx.request_timeout:g} s; the "
                           "image is still being read and will be cached") from None
        self.send_json(done_body(key, result, cached, started))


class TaskHandler(BaseHandler):
    """GET /ocr_service/<id>: 200 done, 202 pending, 404 unknown or expired, error if failed."""

    def get(self, task_id: str) -> None:
        if not _TASK_ID.match(task_id):
            raise ApiError("not_found", "no such task (ids are 64 hex characters)")
        outcome = self.ctx.service.task(task_id)
        if outcome is None:
            raise ApiError("not_found", "no such task, or it has expired")
        if outcome.error is not None:
            self.task_id = task_id
            raise outcome.error
        if outcome.result is None:
            self.send_json({"id": task_id, "status": "pending",
                            "result_url": self.reverse_url("task", task_id)}, status=202)
            return
        self.send_json(done_body(task_id, outcome.result, False))


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    def get(self) -> None:
        stats = self.ctx.pool.stats()
        ready = stats["ready"] > 0 and not self.ctx.draining
        self.send_json({"status": "ready" if ready else "not_ready",
                        "draining": self.ctx.draining, "workers": stats["ready"],
                        "size": stats["size"], "busy": stats["busy"], "queued": stats["queued"],
                        **self.ctx.service.stats()}, status=200 if ready else 503)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise ApiError("not_found", f"no such endpoint: {self.request.path[:100]}")


def done_body(key: str, result: dict, cached: bool, started: float | None = None) -> dict:
    body = {"id": key, "status": "done", "cached": cached, "model": result.get("model")}
    if started is not None:
        body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 2)
    body.update(result)
    return body


def make_app(context: AppContext) -> tornado.web.Application:
    args = {"context": context}
    return tornado.web.Application(
        [
            tornado.web.url(r"/ocr_service/?", OcrServiceHandler, args, name="ocr"),
            tornado.web.url(r"/ocr_service/([^/]+)", TaskHandler, args, name="task"),
            tornado.web.url(r"/health", HealthHandler, args),
            tornado.web.url(r"/ready", ReadyHandler, args),
        ],
        default_handler_class=NotFoundHandler, default_handler_args=args,
    )
