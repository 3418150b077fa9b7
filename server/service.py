"""The read path, in one place: result cache -> in-flight sharing -> worker pool.

Requests and (next) job items both come through here. Everything runs on the IOLoop thread.
The key is the sha256 of the image bytes plus the canonical options and model, so the same image
asked the same way is read once: a cached result answers at once, and identical requests
arriving while the first is still running all await that one run. A run's result fills the
cache even when every client that asked for it has gone.

A non-blocking submission gets a fresh random task id (never the key: see store/__init__.py)
and is recorded whether or not its result was already cached, so it stays readable for
`task_ttl` whatever the cache does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from .errors import CATALOGUE, ApiError, error_info
from .pool import Lane
from .store import InflightRuns, Outcome, ResultCache, TaskState, TaskStore

log = logging.getLogger("ppocr.service")

# Pool submit: (payload, request_id, lane) -> future result dict (raises pool errors).
Submit = Callable[[Any, str | None, Lane], asyncio.Future]


def request_key(image: bytes, options_key: str, model: str) -> str:
    digest = hashlib.sha256(image)
    digest.update(b"\0" + options_key.encode() + b"\0" + model.encode())
    return digest.hexdigest()


def new_task_id() -> str:
    """64 hex characters (the shape ids always had), 256 random bits."""
    return secrets.token_hex(32)


class OcrService:
    def __init__(self, submit: Submit, cache: ResultCache, tasks: TaskStore,
                 inflight: InflightRuns | None = None,
                 new_id: Callable[[], str] = new_task_id) -> None:
        self._submit = submit
        self.cache = cache
        self.tasks = tasks
        self.inflight = inflight or InflightRuns()
        self._new_id = new_id
        self._background: set[asyncio.Task] = set()
        # Results put into the cache; what it no longer holds was evicted (metrics.py).
        self.results_stored = 0

    async def read(self, key: str, job: Any, request_id: str | None = None,
                   lane: Lane = Lane.INTERACTIVE) -> tuple[dict, bool]:
        """The result for `key`, and whether it came from the cache. Raises ApiError.
        Folder-job items pass lane=BACKGROUND: they wait for interactive requests."""
        hit = await self.cache.get(key)
        if hit is not None:
            return hit, True
        outcome = await asyncio.shield(self._run(key, job, request_id, lane))
        if outcome.error is not None:
            raise ApiError.from_info(outcome.error)  # a fresh error for every caller
        return outcome.result, False

    async def submit_task(self, key: str, job: Any, request_id: str | None = None) -> str:
        """Starts (or joins) the run for `key` without waiting; returns the new task's id."""
        task_id = self._new_id()
        hit = await self.cache.get(key)
        if hit is not None:
            await self.tasks.create(task_id, Outcome(result=hit))
            return task_id
        await self.tasks.create(task_id)  # may refuse (store full) before any work starts
        try:
            run = self._run(key, job, request_id, Lane.INTERACTIVE)
        except BaseException:
            await self.tasks.discard(task_id)  # refused (queue full): the client gets no id
            raise
        run.add_done_callback(lambda done: self._spawn(self.tasks.finish(task_id,
                                                                         done.result())))
        return task_id

    async def task(self, task_id: str) -> TaskState | None:
        return await self.tasks.get(task_id)

    def running(self, key: str) -> asyncio.Future | None:
        """The future Outcome of the run in flight for `key`, if any (to await it)."""
        return self.inflight.get(key)

    @property
    def engine_runs(self) -> int:
        return self.inflight.started

    def stats(self) -> dict:
        return {**self.cache.stats(), "inflight": len(self.inflight),
                **self.tasks.stats(), "engine_runs": self.inflight.started,
                "shared_runs": self.inflight.joined}

    def _run(self, key: str, job: Any, request_id: str | None, lane: Lane) -> asyncio.Future:
        return self.inflight.join(key, lambda: self._start(key, job, request_id, lane))

    def _start(self, key: str, job: Any, request_id: str | None, lane: Lane) -> asyncio.Future:
        pool_future = self._submit(job, request_id, lane)
        outcome_future = asyncio.get_running_loop().create_future()

        async def settle(done: asyncio.Future) -> None:
            if done.cancelled():
                outcome = Outcome(error=error_info(asyncio.CancelledError()))
            elif done.exception() is not None:
                info = error_info(done.exception())
                if CATALOGUE.get(info.code, CATALOGUE["internal_error"]).status >= 500 \
                        and info.details:
                    log.error("run for request %s failed (%s): %s", request_id, info.code,
                              info.details)
                outcome = Outcome(error=info)
            else:
                outcome = Outcome(result=done.result())
                await self.cache.put(key, outcome.result)
                self.results_stored += 1
            outcome_future.set_result(outcome)

        pool_future.add_done_callback(lambda done: self._spawn(settle(done)))
        return outcome_future

    def _spawn(self, coroutine) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
