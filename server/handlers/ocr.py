"""POST /ocr_service (read an image now, or start a task) and GET /ocr_service/<id>."""

from __future__ import annotations

import asyncio
import re
import time

from ..errors import ApiError
from ..protocol import OcrJob
from ..request import load_image, parse_request, read_fields
from ..service import new_task_id, request_key
from .base import BaseHandler

_TASK_ID = re.compile(r"^[0-9a-f]{64}$")


class OcrServiceHandler(BaseHandler):
    """POST /ocr_service: read an image now (block_flag true) or start a task (false)."""

    @property
    def body_limit(self) -> int:
        return self.ctx.requests.max_body_size

    async def post(self) -> None:
        if self._finished:
            return  # refused while the body was arriving
        started = time.perf_counter()
        lifecycle = self.ctx.lifecycle
        lifecycle.enter()
        try:
            await self._post(started)
        finally:
            lifecycle.leave()

    async def _post(self, started: float) -> None:
        fields, files = read_fields(self.request.headers.get("Content-Type", ""), self.body(),
                                    self.request.query_arguments)
        policy = self.ctx.requests
        request = parse_request(fields, files, policy)
        image = await load_image(request, policy)
        key = request_key(image, request.options.cache_key(), request.model)
        job = OcrJob(image, request.options, request.model)
        ocr = self.ctx.services.ocr
        if not request.block:
            task_id = await ocr.submit_task(key, job, self.request_id)
            self.send_json({"id": task_id, "status": "pending",
                            "result_url": self.reverse_url("task", task_id)}, status=202)
            return
        timeout = self.ctx.http.request_timeout
        try:
            result, cached = await asyncio.wait_for(ocr.read(key, job, self.request_id), timeout)
        except TimeoutError:
            raise ApiError("timeout", f"no result within {timeout:g} s; the image is still "
                           "being read and will be cached") from None
        self.log_fields = {"cached": cached,
                           "engine_ms": result.get("timings_ms", {}).get("total")}
        self.send_json(done_body(new_task_id(), result, cached, started))


class TaskHandler(BaseHandler):
    """GET /ocr_service/<id>: 200 done, 202 pending, 404 unknown or expired, error if failed."""

    async def get(self, task_id: str) -> None:
        if not _TASK_ID.match(task_id):
            raise ApiError("not_found", "no such task (ids are 64 hex characters)")
        state = await self.ctx.services.ocr.task(task_id)
        if state is None:
            raise ApiError("not_found", "no such task, or it has expired")
        if state.pending:
            self.send_json({"id": task_id, "status": "pending",
                            "result_url": self.reverse_url("task", task_id)}, status=202)
            return
        if state.outcome.error is not None:
            self.task_id = task_id
            raise ApiError.from_info(state.outcome.error)  # a fresh error on every poll
        self.send_json(done_body(task_id, state.outcome.result, False))


def done_body(task_id: str, result: dict, cached: bool, started: float | None = None) -> dict:
    body = {"id": task_id, "status": "done", "cached": cached, "model": result.get("model")}
    if started is not None:
        body["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 2)
    body.update(result)
    return body
