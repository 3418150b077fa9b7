"""POST /ocr_service (read an image, a document or a batch now, or start a task) and
GET /ocr_service/<id>.

An image is one run (cache -> in-flight sharing -> pool). A PDF or TIFF (told apart by its
magic bytes only) and a batch are many runs, read by server/documents.py; non-blocking, they
are one task whose pending answer shows its progress, kept (with what redoes it) in the
service's lasting task store before the 202 is sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Awaitable

from ocr_engine.documents import document_kind

from ..documents import Progress, RequestReader, spool_request, window_for
from ..errors import ApiError
from ..protocol import OcrJob
from ..request import OcrRequest, load_image, parse_request, read_fields
from ..service import new_task_id, request_key
from .base import BaseHandler

_TASK_ID = re.compile(r"^[0-9a-f]{64}$")


class OcrServiceHandler(BaseHandler):
    """POST /ocr_service: read an image now (block_flag true) or start a task (false)."""

    uploads = True

    async def post(self) -> None:
        if self._finished:
            return  # refused while the body was arriving
        started = time.perf_counter()
        with self.in_progress():
            await self._post(started)

    async def _post(self, started: float) -> None:
        fields, files = read_fields(self.request.headers.get("Content-Type", ""), self.body(),
                                    self.request.query_arguments)
        policy = self.ctx.requests
        request = parse_request(fields, files, policy)
        if request.batch is not None:
            await self._batch(request, started)
            return
        image = await load_image(request, policy)
        if document_kind(image) is not None:
            await self._document(request, image, started)
            return
        key = request_key(image, request.options.cache_key(), request.model)
        job = OcrJob(image, request.options, request.model)
        ocr = self.ctx.services.ocr
        if request.response_format == "original":
            await self._original(request, key, job)
            return
        if not request.block:
            task_id = await ocr.submit_task(key, job, self.request_id)
            self.send_json({"id": task_id, "status": "pending",
                            "result_url": self.reverse_url("task", task_id)}, status=202)
            return
        timeout = self.ctx.http.request_timeout
        try:
            reading = await ocr.begin(key, job, self.request_id)
            encoded = await asyncio.wait_for(reading.encoded(), timeout)
        except TimeoutError:
            raise ApiError("timeout", f"no result within {timeout:g} s; the image is still "
                           "being read and will be cached") from None
        self.log_fields = {"cached": encoded.cached, "engine_ms": encoded.engine_ms}
        # The result's stored encoding is spliced in as it is: a cache hit costs no decoding
        # and no encoding, only this short header.
        self.send_encoded(done_head(new_task_id(), encoded.cached, started), encoded.body)

    async def _original(self, request: OcrRequest, key: str, job: OcrJob) -> None:
        """The original server's answer: its bare list, or null for a non-blocking submit
        whose result is not cached yet (the original answered a re-sent request with the
        result once it was read; so does this: the run fills the cache)."""
        reading = await self.ctx.services.ocr.begin(key, job, self.request_id)
        if not request.block and not reading.cached:
            self.send_raw(b"null")
            return
        result, cached = await self._within_timeout(reading)
        self.log_fields = {"cached": cached}
        self.send_raw(original_body(result))

    async def _document(self, request: OcrRequest, data: bytes, started: float) -> None:
        ocr = self.ctx.services.ocr
        if not request.block:
            # Committed (its request spooled) before the client hears of it.
            task_id = await ocr.new_task(spool_request(request, data))
            reader = self._reader(request, functools.partial(ocr.report_progress, task_id))
            try:
                reading = await reader.start(data)  # a refused probe: the client gets no id
            except BaseException:
                await ocr.discard_task(task_id)
                raise
            ocr.run_task(task_id, _with_cached(reading))
            self._pending(task_id, request)
            return
        reader = self._reader(request)
        result, cached = await self._within_timeout(self._read_now(reader, data))
        self.log_fields = {"cached": cached, "engine_ms": round(reader.engine_ms, 1)}
        if request.response_format == "original":
            self.send_raw(original_body(result))
        else:
            self.send_json(done_body(new_task_id(), result, cached, started))

    async def _batch(self, request: OcrRequest, started: float) -> None:
        ocr = self.ctx.services.ocr
        if not request.block:
            task_id = await ocr.new_task(spool_request(request))
            reader = self._reader(request, functools.partial(ocr.report_progress, task_id))
            ocr.run_task(task_id, reader.read_batch())
            self._pending(task_id, request)
            return
        reader = self._reader(request)
        result = await self._within_timeout(reader.read_batch())
        self.log_fields = {"cached": all(entry.get("cached") is True
                                         for entry in result["results"]),
                           "engine_ms": round(reader.engine_ms, 1)}
        if request.response_format == "original":
            self.send_raw(original_body(result))
        else:
            self.send_json(batch_body(new_task_id(), result, started))

    @staticmethod
    async def _read_now(reader: RequestReader, data: bytes) -> tuple[dict, bool]:
        return await (await reader.start(data))

    async def _within_timeout(self, work: Awaitable):
        timeout = self.ctx.http.request_timeout
        try:
            return await asyncio.wait_for(work, timeout)
        except TimeoutError:
            raise ApiError("timeout", f"no result within {timeout:g} s; what was already "
                           "being read will still be cached") from None

    def _reader(self, request: OcrRequest, progress: Progress | None = None) -> RequestReader:
        pool = self.ctx.services.pool
        return RequestReader(self.ctx.services.ocr, self.ctx.requests, request,
                             window=window_for(pool.config.size, pool.config.queue_size),
                             request_id=self.request_id, progress=progress)

    def _pending(self, task_id: str, request: OcrRequest) -> None:
        if request.response_format == "original":
            self.send_raw(b"null")  # the original's non-blocking answer
            return
        self.send_json({"id": task_id, "status": "pending",
                        "result_url": self.reverse_url("task", task_id)}, status=202)


class TaskHandler(BaseHandler):
    """GET /ocr_service/<id>: 200 done, 202 pending, 404 unknown or expired, error if failed."""

    async def get(self, task_id: str) -> None:
        if not _TASK_ID.match(task_id):
            raise ApiError("not_found", "no such task (ids are 64 hex characters)")
        state = await self.ctx.services.ocr.task(task_id)
        if state is None:
            raise ApiError("not_found", "no such task, or it has expired")
        if state.pending:
            body = {"id": task_id, "status": "pending",
                    "result_url": self.reverse_url("task", task_id)}
            if state.progress is not None:  # a document's pages, a batch's items
                body["progress"] = state.progress
            self.send_json(body, status=202)
            return
        if state.outcome.error is not None:
            self.task_id = task_id
            raise ApiError.from_info(state.outcome.error)  # a fresh error on every poll
        result = state.outcome.result
        if "results" in result:
            self.send_json(batch_body(task_id, result))
        else:
            self.send_json(done_body(task_id, result, False))


def original_lines(result: dict) -> list:
    """A result in the original server's shape: [[box, [text, score]], ...], each box four
    [x, y] float pairs (PaddleOCR's dt_boxes as the original sent them). A document's are
    every page's lines, in page order."""
    pages = result.get("pages")
    if isinstance(pages, list):
        return [line for page in pages for line in original_lines(page)]
    return [[[[float(x), float(y)] for x, y in line["box"]], [line["text"], line["confidence"]]]
            for line in result.get("lines", ())]


def original_body(result: dict) -> bytes:
    """The original's answer to an image or a document; `ensure_ascii` off, as it wrote it.
    A batch (ours only) is one list per item, in order, null for an item that failed."""
    if "results" in result:
        shape: list = [None if "error" in entry else original_lines(entry)
                       for entry in result["results"]]
    else:
        shape = original_lines(result)
    return json.dumps(shape, ensure_ascii=False).encode()


def done_head(task_id: str, cached: bool, started: float) -> dict:
    """The fields an image's answer puts before its result's own (see `done_body`)."""
    return {"id": task_id, "status": "done", "cached": cached,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 2)}


def done_body(task_id: str, result: dict, cached: bool, started: float | None = None) -> dict:
    """An image's or a document's answer. A stored document result carries its own
    "cached" (every page was), which wins over `cached`."""
    body = {"id": task_id, "status": "done", "cached": cached, "model": result.get("model")}
    if started is not None:
        body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 2)
    body.update(result)
    return body


def batch_body(task_id: str, result: dict, started: float | None = None) -> dict:
    """A batch's answer: {"results": [...]}, each item's body or error, in input order."""
    body: dict = {"id": task_id, "status": "done"}
    if started is not None:
        body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 2)
    body["results"] = result["results"]
    return body


async def _with_cached(reading: Awaitable[tuple[dict, bool]]) -> dict:
    """A document task's stored result: the body's fields, with whether every page was
    cached."""
    result, cached = await reading
    return {**result, "cached": cached}
