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

Across nodes (service.redis_url; server/cluster.py): with a `cluster`, the node's first request
for a key that is not in flight here claims it in Redis before starting anything. The claim's
winner runs it (and keeps the claim alive); the other nodes follow: their run is a wait for the
winner's result, registered in `inflight` like a run, so this node's later requests join the
wait. Requests arriving while the claim is being asked await that answer (`_claiming`).
A follower that takes over (the winner died) or gives up (Redis down) runs it here.
`engine_runs` counts the runs this node's pool was given, never the waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .cluster import Claim, ClusterRuns

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


@dataclass(frozen=True)
class Encoded:
    """A result as its JSON encoding: `body`; whether it came from the cache; the engine's
    time for a fresh run (None for a hit)."""

    body: bytes
    cached: bool
    engine_ms: float | None = None


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

    async def encoded(self) -> Encoded:
        """The result's `encode_result` bytes (raises ApiError)."""
        if self._run is None:
            return Encoded(self._hit, True)
        outcome = await self._outcome()
        return Encoded(outcome.body, False,
                       (outcome.result.get("timings_ms") or {}).get("total"))

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
                 lasting_tasks: TaskStore | None = None,
                 cluster: ClusterRuns | None = None) -> None:
        self._submit = submit
        self.cluster = cluster  # cross-node sharing (None: this node alone)
        # key -> the answer of the claim this node is asking for it (the cached body or None).
        self._claiming: dict[str, asyncio.Future] = {}
        self.engine_started = 0  # runs given to this node's pool
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
        if probe:
            return Reading(run=self._run(key, job, request_id, lane, self.probes))
        run = await self._join(key, job, request_id, lane)
        return Reading(hit=run) if isinstance(run, bytes) else Reading(run=run)

    async def submit_task(self, key: str, job: Any, request_id: str | None = None) -> str:
        """Starts (or joins) the run for `key` without waiting; returns the new task's id."""
        task_id = self._new_id()
        hit = await self.cache.get(key)
        if hit is not None:
            await self.tasks.create(task_id, Outcome(result=json.loads(hit), body=hit))
            return task_id
        await self.tasks.create(task_id)  # may refuse (store full) before any work starts
        try:
            run = await self._join(key, job, request_id, Lane.INTERACTIVE)
        except BaseException:
            await self.tasks.discard(task_id)  # refused (queue full): the client gets no id
            raise
        if isinstance(run, bytes):  # another node's result, found while claiming
            await self.tasks.finish(task_id, Outcome(result=json.loads(run), body=run))
            return task_id
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
        return self.engine_started

    def stats(self) -> dict:
        tasks = self.tasks.stats()
        if self.lasting_tasks is not self.tasks:  # the counts of both stores, added up
            for name, value in self.lasting_tasks.stats().items():
                tasks[name] = tasks.get(name, 0) + value
        return {**self.cache.stats(), "inflight": len(self.inflight),
                **tasks, "engine_runs": self.engine_started,
                "shared_runs": self.inflight.joined, "document_probes": self.probes.started,
                **(self.cluster.stats() if self.cluster is not None else {})}

    async def _join(self, key: str, job: Any, request_id: str | None, lane: Lane
                    ) -> asyncio.Future | bytes:
        """The future Outcome of the run for `key`, joined here or claimed across nodes (see
        the module's docstring), or the result's body when the claim found it cached. Without
        a cluster (or with Redis down) this is `_run`, with no await in between."""
        while True:
            cluster = self.cluster
            if cluster is None or not cluster.available or self.inflight.get(key) is not None:
                return self._run(key, job, request_id, lane)
            deciding = self._claiming.get(key)
            if deciding is not None:  # this node's first request for it is asking
                body = await asyncio.shield(deciding)
                if body is not None:
                    return body
                if self.inflight.get(key) is not None:
                    return self._run(key, job, request_id, lane)
                continue  # its start was refused: ask again
            deciding = asyncio.get_running_loop().create_future()
            self._claiming[key] = deciding
            body = None
            try:
                claim = await cluster.claim(key)
                body = claim.body if claim is not None else None
                if body is not None:
                    return body
                return self._run(key, job, request_id, lane, claim=claim)
            finally:
                del self._claiming[key]
                deciding.set_result(body)

    def _run(self, key: str, job: Any, request_id: str | None, lane: Lane,
             runs: InflightRuns | None = None, claim: Claim | None = None) -> asyncio.Future:
        """`claim`: this node's answer from the cluster (None: no cluster, or Redis down)."""
        runs = self.inflight if runs is None else runs  # (an empty table is falsy)
        if lane is Lane.INTERACTIVE and key in self._background_runs \
                and self._promote is not None:
            self._promote(self._background_runs.pop(key))
        if claim is not None and not claim.lead:
            return runs.join(key, lambda: self._follow(key, job, request_id, lane))
        if claim is not None and runs.get(key) is not None:  # started here meanwhile
            self._spawn(self.cluster.release(claim))
            claim = None
        counted = runs is self.inflight  # probes are not engine runs
        return runs.join(key, lambda: self._start(key, job, request_id, lane, claim, counted))

    def _follow(self, key: str, job: Any, request_id: str | None, lane: Lane
                ) -> asyncio.Future:
        """The future Outcome of another node's run of `key`: its result or shared error,
        or this node's own run when it takes over or gives up (server/cluster.py)."""
        outcome_future = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            try:
                followed = await self.cluster.follow(key)
                if followed.body is not None:
                    outcome = Outcome(result=json.loads(followed.body), body=followed.body)
                elif followed.error is not None:
                    outcome = Outcome(error=followed.error)
                else:  # took over, or gave up: run it here (a refusal raises)
                    outcome = await self._start(key, job, request_id, lane, followed.claim)
            except Exception as exc:  # noqa: BLE001 - the waiters must get an answer
                outcome = Outcome(error=error_info(exc))
            outcome_future.set_result(outcome)

        self._spawn(follow())
        return outcome_future

    def _start(self, key: str, job: Any, request_id: str | None, lane: Lane,
               claim: Claim | None = None, counted: bool = True) -> asyncio.Future:
        try:
            pool_future = self._submit(job, request_id, lane)
        except BaseException:
            if claim is not None:  # the other nodes must not wait for a run never started
                self._spawn(self.cluster.release(claim))
            raise
        if counted:
            self.engine_started += 1
        outcome_future = asyncio.get_running_loop().create_future()
        if claim is not None:
            self._spawn(self.cluster.hold(claim, outcome_future))
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
            if claim is not None:  # after the cache put: a follower told reads it there
                await self.cluster.finish(claim, outcome.body, outcome.error)

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
