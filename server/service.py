"""The read path, in one place: result cache -> in-flight sharing -> worker pool.

Requests and (next) job items both come through here. Everything runs on the IOLoop thread.
The key is the sha256 of the image bytes plus the canonical options and model, so the same image
asked the same way is read once: a cached result answers at once, and identical requests
arriving while the first is still running all await that one run. A run's result fills the
cache even when every client that asked for it has gone.

A non-blocking submission gets a fresh random task id (never the key: see store/__init__.py)
and is recorded whether or not its result was already cached, so it stays readable for
`task_ttl` whatever the cache does. A document or a batch (server/documents.py) is many runs
behind one task: `new_task`, then `run_task` with the coroutine that reads them, which reports
its progress through `report_progress`. Those tasks go to `lasting_tasks`: in a server, a
LastingTaskStore (SQLite), which keeps with each pending task the request that redoes it, so a
restart (kill -9 included) loses none (server/documents.py `resume_tasks`); a single image's
task stays in the memory store. Once `begin_shutdown` is called, a lasting task cut short by
the shutdown (its runs refused with shutting_down) is left pending, to be redone at the next
start, instead of finishing with that error.

Document probes (page count and sizes) are runs like any other, cached the same way, but they
are shared through their own in-flight table, so `engine_runs` counts OCR runs only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from .errors import CATALOGUE, ApiError, error_info
from .pool import Lane
from .store import (
    InflightRuns,
    Outcome,
    ResultCache,
    SpooledRequest,
    TaskState,
    TaskStore,
    encode_result,
)

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


class Reading:
    """A result on its way, from `OcrService.begin`: awaiting it gives (result, cached) or
    raises ApiError; `encoded()` gives the result's JSON encoding instead (a cache hit is then
    answered without decoding or encoding anything). Awaiting never cancels the run it waits
    for (the run still fills the cache), so a reading may be abandoned."""

    def __init__(self, hit: bytes | None = None, run: asyncio.Future | None = None) -> None:
        self._hit = hit
        self._run = run

    @property
    def cached(self) -> bool:
        """Whether the result is already here (a cache hit)."""
        return self._run is None

    def __await__(self) -> Generator[Any, None, tuple[dict, bool]]:
        return self._wait().__await__()

    async def _wait(self) -> tuple[dict, bool]:
        if self._run is None:
            return json.loads(self._hit), True
        outcome = await self._outcome()
        return outcome.result, False

    async def encoded(self) -> tuple[bytes, bool]:
        """(the result's `encode_result` bytes, cached) or raises ApiError."""
        if self._run is None:
            return self._hit, True
        outcome = await self._outcome()
        return outcome.body, False

    async def _outcome(self) -> Outcome:
        outcome = await asyncio.shield(self._run)
        if outcome.error is not None:
            raise ApiError.from_info(outcome.error)  # a fresh error for every caller
        return outcome


class OcrService:
    def __init__(self, submit: Submit, cache: ResultCache, tasks: TaskStore,
                 inflight: InflightRuns | None = None,
                 new_id: Callable[[], str] = new_task_id,
                 promote: Callable[[asyncio.Future], bool] | None = None,
                 lasting_tasks: TaskStore | None = None) -> None:
        self._submit = submit
        # Moves a queued background job to the interactive lane (WorkerPool.promote): an
        # interactive request that joins a folder-job item's run must not wait behind the job.
        self._promote = promote
        self._background_runs: dict[str, asyncio.Future] = {}  # key -> its pool future
        self.cache = cache
        self.tasks = tasks  # single images' tasks
        # Documents' and batches' tasks (the same store unless one is given).
        self.lasting_tasks = tasks if lasting_tasks is None else lasting_tasks
        self.closing = False  # begin_shutdown: interrupted lasting tasks stay pending
        self.inflight = inflight or InflightRuns()
        self.probes = InflightRuns()  # document probes, kept out of engine_runs
        self._new_id = new_id
        self._background: set[asyncio.Task] = set()
        # Results put into the cache; what it no longer holds was evicted (metrics.py).
        self.results_stored = 0

    async def read(self, key: str, job: Any, request_id: str | None = None,
                   lane: Lane = Lane.INTERACTIVE) -> tuple[dict, bool]:
        """The result for `key`, and whether it came from the cache. Raises ApiError.
        Folder-job items pass lane=BACKGROUND: they wait for interactive requests."""
        return await (await self.begin(key, job, request_id, lane))

    async def begin(self, key: str, job: Any, request_id: str | None = None,
                    lane: Lane = Lane.INTERACTIVE, *, probe: bool = False) -> Reading:
        """`read` in two steps: looks `key` up and, on a miss, starts (or joins) its run now, so
        a refusal (queue full) raises here; awaiting the Reading gives what `read` returns.
        `probe=True` for a document probe (shared apart, not counted in engine_runs)."""
        hit = await self.cache.get(key)
        if hit is not None:
            return Reading(hit=hit)
        return Reading(run=self._run(key, job, request_id, lane,
                                     self.probes if probe else self.inflight))

    async def submit_task(self, key: str, job: Any, request_id: str | None = None) -> str:
        """Starts (or joins) the run for `key` without waiting; returns the new task's id."""
        task_id = self._new_id()
        hit = await self.cache.get(key)
        if hit is not None:
            await self.tasks.create(task_id, Outcome(result=json.loads(hit), body=hit))
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

    async def new_task(self, request: SpooledRequest | None = None) -> str:
        """Records a new pending document or batch task (it may be refused: store full) and
        returns its id; `request` is what redoes it after a restart (a lasting store spools
        it before the task is committed). The caller then starts its work with `run_task`,
        or `discard_task`s it if that fails."""
        task_id = self._new_id()
        await self.lasting_tasks.create(task_id, request=request)
        return task_id

    def run_task(self, task_id: str, work: Awaitable[dict]) -> None:
        """Awaits `work` in the background; its result, or the error it raised (as data),
        finishes the task (unless the shutdown cut it short: see the module's docstring)."""
        async def settle() -> None:
            try:
                outcome = Outcome(result=await work)
            except Exception as exc:  # noqa: BLE001 - any failure must finish the task
                info = error_info(exc)
                if info.kind.status >= 500 and info.details:
                    log.error("task %s failed (%s): %s", task_id, info.code, info.details)
                outcome = Outcome(error=info)
            if self.closing and self.lasting_tasks is not self.tasks and _cut_short(outcome):
                log.info("task %s was cut short by the shutdown: it stays pending and is "
                         "redone at the next start", task_id)
                return
            await self.lasting_tasks.finish(task_id, outcome)

        self._spawn(settle())

    async def report_progress(self, task_id: str, done: int, total: int) -> None:
        await self.lasting_tasks.progress(task_id, done, total)

    async def discard_task(self, task_id: str) -> None:
        await self.lasting_tasks.discard(task_id)

    async def task(self, task_id: str) -> TaskState | None:
        state = await self.tasks.get(task_id)
        if state is None and self.lasting_tasks is not self.tasks:
            state = await self.lasting_tasks.get(task_id)
        return state

    def begin_shutdown(self) -> None:
        """From now on a lasting task refused by the closing pool stays pending."""
        self.closing = True

    async def drain(self, timeout: float) -> None:
        """Waits, up to `timeout` seconds, for the background work already started (runs
        settling, tasks finishing), so what it writes is written before the stores close."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._background:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.warning("%d task(s) still settling at shutdown", len(self._background))
                return
            await asyncio.wait(set(self._background), timeout=left)

    def running(self, key: str) -> asyncio.Future | None:
        """The future Outcome of the run in flight for `key`, if any (to await it)."""
        return self.inflight.get(key)

    @property
    def engine_runs(self) -> int:
        return self.inflight.started

    def stats(self) -> dict:
        tasks = self.tasks.stats()
        if self.lasting_tasks is not self.tasks:  # the counts of both stores, added up
            for name, value in self.lasting_tasks.stats().items():
                tasks[name] = tasks.get(name, 0) + value
        return {**self.cache.stats(), "inflight": len(self.inflight),
                **tasks, "engine_runs": self.inflight.started,
                "shared_runs": self.inflight.joined, "document_probes": self.probes.started}

    def _run(self, key: str, job: Any, request_id: str | None, lane: Lane,
             runs: InflightRuns | None = None) -> asyncio.Future:
        runs = self.inflight if runs is None else runs  # (an empty table is falsy)
        if lane is Lane.INTERACTIVE and key in self._background_runs \
                and self._promote is not None:
            self._promote(self._background_runs.pop(key))
        return runs.join(key, lambda: self._start(key, job, request_id, lane))

    def _start(self, key: str, job: Any, request_id: str | None, lane: Lane) -> asyncio.Future:
        pool_future = self._submit(job, request_id, lane)
        outcome_future = asyncio.get_running_loop().create_future()
        if lane is Lane.BACKGROUND:
            self._background_runs[key] = pool_future
            pool_future.add_done_callback(lambda _done: self._background_runs.pop(key, None))

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
                result = done.result()
                # Encoded once, here: the cache keeps these bytes and responses splice them.
                outcome = Outcome(result=result, body=encode_result(result))
                await self.cache.put(key, outcome.body)
                self.results_stored += 1
            outcome_future.set_result(outcome)

        pool_future.add_done_callback(lambda done: self._spawn(settle(done)))
        return outcome_future

    def _spawn(self, coroutine) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _cut_short(outcome: Outcome) -> bool:
    """Whether the outcome is the pool's refusal at shutdown: the task's own error, or one of
    a batch's items'."""
    if outcome.error is not None:
        return outcome.error.code == "shutting_down"
    items = (outcome.result or {}).get("results")
    return isinstance(items, list) and any(
        isinstance(item, dict) and (item.get("error") or {}).get("code") == "shutting_down"
        for item in items)
