"""Result cache, task store, in-flight sharing and the service's read path (server/store,
server/service.py), driven by hand: a fake pool submit whose futures the test settles itself
and a clock the stores read through `timer`, which the test ticks instead of sleeping. Nothing
here waits on wall-clock time; `turns_until` only lets the loop run callbacks already queued."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import pytest

from server.errors import INTERNAL_MESSAGE, ApiError, ErrorInfo, error_info
from server.pool import Lane
from server.service import OcrService, request_key
from server.store import InflightRuns, Outcome, encode_result
from server.store.memory import MemoryResultCache, MemoryTaskStore, TaskStoreFull

HEX64 = re.compile(r"^[0-9a-f]{64}$")
RESULT = {"model": "ppocr-v4", "texts": ["hello"], "boxes": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}


def run(coro):
    # The timeout only turns a hang into a failure; no test relies on time passing.
    return asyncio.run(asyncio.wait_for(coro, 10))


async def turns_until(condition: Callable[[], bool], turns: int = 100) -> None:
    """Lets the loop run the callbacks it already has queued (no time passes) until
    `condition` holds; fails if it never does."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held while the loop ran its queued callbacks")


def traceback_depth(exc: BaseException) -> int:
    depth, tb = 0, exc.__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


class Clock:
    """What the stores' `timer` reads; tests move it with `tick`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


class FakeQueueFull(Exception):
    code = "queue_full"


class FakeWorkerCrashed(Exception):
    code = "worker_crashed"


class FakeSubmit:
    """Stands in for the pool's submit: returns a future the test resolves by hand, or raises
    `refuse_with` (the pool's queue being full)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, str | None]] = []
        self.futures: list[asyncio.Future] = []
        self.refuse_with: BaseException | None = None

    def __call__(self, job, request_id, lane=None):
        self.calls.append((job, request_id))
        if self.refuse_with is not None:
            raise self.refuse_with
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def resolve(self, index: int, result: dict) -> None:
        self.futures[index].set_result(result)

    def fail(self, index: int, exc: BaseException) -> None:
        self.futures[index].set_exception(exc)


class RecordingTaskStore(MemoryTaskStore):
    """MemoryTaskStore that lets a test await the moment a task is finished (the service
    finishes tasks from a background task)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._finished_signals: dict[str, asyncio.Future] = {}

    def _signal(self, task_id: str) -> asyncio.Future:
        if task_id not in self._finished_signals:
            self._finished_signals[task_id] = asyncio.get_running_loop().create_future()
        return self._finished_signals[task_id]

    async def finish(self, task_id: str, outcome: Outcome) -> None:
        await super().finish(task_id, outcome)
        signal = self._signal(task_id)
        if not signal.done():
            signal.set_result(outcome)

    async def finished(self, task_id: str) -> Outcome:
        return await self._signal(task_id)


@dataclass
class Harness:
    clock: Clock
    submit: FakeSubmit
    cache: MemoryResultCache
    tasks: RecordingTaskStore
    service: OcrService
    issued: list[str] = field(default_factory=list)


def make_harness(*, cache_size: int = 16, cache_ttl: float = 60.0, max_tasks: int = 8,
                 task_ttl: float = 300.0, counted_ids: bool = False) -> Harness:
    clock = Clock()
    submit = FakeSubmit()
    cache = MemoryResultCache(cache_size, cache_ttl, timer=clock)
    tasks = RecordingTaskStore(max_tasks, task_ttl, timer=clock)
    issued: list[str] = []
    extra = {}
    if counted_ids:
        def new_id() -> str:
            issued.append(f"{len(issued) + 1:064x}")
            return issued[-1]
        extra["new_id"] = new_id
    service = OcrService(submit, cache, tasks, **extra)
    return Harness(clock, submit, cache, tasks, service, issued)


KEY = request_key(b"image bytes", "options", "ppocr-v4")
OTHER_KEY = request_key(b"other image", "options", "ppocr-v4")


# ------------------------------------------------------------------------------ MemoryResultCache


def test_cache_put_then_get_and_counters():
    async def scenario():
        cache = MemoryResultCache(4, 60, timer=Clock())
        assert await cache.get("a") is None
        await cache.put("a", RESULT)
        assert await cache.get("a") == RESULT
        assert await cache.get("a") == RESULT
        assert await cache.get("b") is None
        assert cache.hits == 2 and cache.misses == 2
        assert cache.stats() == {"cache_entries": 1, "cache_hits": 2, "cache_misses": 2}

    run(scenario())


def test_cache_entry_expires_ttl_after_it_was_put():
    async def scenario():
        clock = Clock()
        cache = MemoryResultCache(4, 60, timer=clock)
        await cache.put("a", RESULT)
        clock.tick(59.999)
        assert await cache.get("a") == RESULT
        clock.tick(0.001)  # exactly 60 s after the put
        assert cache.stats()["cache_entries"] == 0  # expired entries are not counted
        assert await cache.get("a") is None

    run(scenario())


def test_cache_put_again_restarts_the_ttl():
    async def scenario():
        clock = Clock()
        cache = MemoryResultCache(4, 60, timer=clock)
        await cache.put("a", RESULT)
        clock.tick(50)
        await cache.put("a", RESULT)
        clock.tick(50)
        assert await cache.get("a") == RESULT
        clock.tick(10)
        assert await cache.get("a") is None

    run(scenario())


def test_cache_evicts_least_recently_used_at_maxsize():
    async def scenario():
        clock = Clock()
        cache = MemoryResultCache(2, 60, timer=clock)
        await cache.put("a", {"n": 1})
        await cache.put("b", {"n": 2})
        assert await cache.get("a") == {"n": 1}  # a is now the most recently used
        await cache.put("c", {"n": 3})
        assert await cache.get("b") is None
        assert await cache.get("a") == {"n": 1}
        assert await cache.get("c") == {"n": 3}
        assert cache.stats()["cache_entries"] == 2

    run(scenario())


@pytest.mark.parametrize("size, ttl", [(0, 60), (16, 0), (0, 0)])
def test_cache_of_size_zero_or_ttl_zero_caches_nothing(size, ttl):
    async def scenario():
        cache = MemoryResultCache(size, ttl, timer=Clock())
        await cache.put("a", RESULT)
        assert await cache.get("a") is None
        assert cache.stats() == {"cache_entries": 0, "cache_hits": 0, "cache_misses": 1}

    run(scenario())


# MemoryTaskStore's cases, the TaskStore contract, run on both stores in
# tests/test_task_store_sqlite.py.


# ---------------------------------------------------------------------------------- InflightRuns


def test_inflight_join_twice_starts_once_and_shares_the_future():
    async def scenario():
        runs = InflightRuns()
        started: list[asyncio.Future] = []

        def start() -> asyncio.Future:
            started.append(asyncio.get_running_loop().create_future())
            return started[-1]

        first = runs.join("k", start)
        second = runs.join("k", start)
        assert first is second is started[0]
        assert len(started) == 1
        assert (runs.started, runs.joined, len(runs)) == (1, 1, 1)
        assert runs.get("k") is first
        # A different key is a different run.
        other = runs.join("k2", start)
        assert other is not first and len(started) == 2 and len(runs) == 2

        first.set_result(Outcome(result=RESULT))
        await turns_until(lambda: runs.get("k") is None)
        assert len(runs) == 1  # k2 still running
        # The key is free again: the next join starts a new run.
        third = runs.join("k", start)
        assert third is started[2] and third is not first
        assert (runs.started, runs.joined) == (3, 1)

    run(scenario())


def test_inflight_start_that_raises_registers_nothing():
    async def scenario():
        runs = InflightRuns()

        def refuse() -> asyncio.Future:
            raise FakeQueueFull("queue is full")

        with pytest.raises(FakeQueueFull):
            runs.join("k", refuse)
        assert (runs.started, runs.joined, len(runs)) == (0, 0, 0)
        assert runs.get("k") is None
        # The next join calls start again rather than joining a phantom run.
        future = asyncio.get_running_loop().create_future()
        assert runs.join("k", lambda: future) is future
        assert (runs.started, runs.joined) == (1, 0)

    run(scenario())


def test_inflight_failed_run_frees_the_key_too():
    async def scenario():
        runs = InflightRuns()
        future = asyncio.get_running_loop().create_future()
        runs.join("k", lambda: future)
        future.set_result(Outcome(error=ErrorInfo("worker_crashed", "died")))
        await turns_until(lambda: len(runs) == 0)

    run(scenario())


# ------------------------------------------------------------------------------ OcrService.read


def test_request_key_depends_on_image_options_and_model():
    base = request_key(b"img", "opts", "m")
    assert HEX64.match(base)
    assert base == request_key(b"img", "opts", "m")
    assert len({base, request_key(b"img2", "opts", "m"), request_key(b"img", "opts2", "m"),
                request_key(b"img", "opts", "m2")}) == 4
    # The separator keeps the fields apart.
    assert request_key(b"ab", "c", "m") != request_key(b"a", "bc", "m")


def test_read_miss_submits_then_hit_answers_cached_without_submitting():
    async def scenario():
        h = make_harness()
        reader = asyncio.ensure_future(h.service.read(KEY, "job", "req-1"))
        await turns_until(lambda: len(h.submit.calls) == 1)
        assert h.submit.calls == [("job", "req-1")]
        h.submit.resolve(0, RESULT)
        assert await reader == (RESULT, False)

        assert await h.service.read(KEY, "job", "req-2") == (RESULT, True)
        assert len(h.submit.calls) == 1
        assert h.service.engine_runs == 1
        stats = h.service.stats()
        assert stats["cache_hits"] == 1 and stats["cache_entries"] == 1
        assert stats["inflight"] == 0

    run(scenario())


def test_concurrent_reads_of_the_same_key_submit_once():
    async def scenario():
        h = make_harness()
        readers = 5

        async def resolve_when_all_joined():
            await turns_until(lambda: h.service.inflight.started + h.service.inflight.joined
                              == readers)
            h.submit.resolve(0, RESULT)

        *answers, _ = await asyncio.gather(
            *(h.service.read(KEY, "job", f"req-{i}") for i in range(readers)),
            resolve_when_all_joined())
        assert answers == [(RESULT, False)] * readers
        assert len(h.submit.calls) == 1
        assert h.service.stats()["engine_runs"] == 1
        assert h.service.stats()["shared_runs"] == readers - 1
        # Another key is its own run.
        other = asyncio.ensure_future(h.service.read(OTHER_KEY, "job2"))
        await turns_until(lambda: len(h.submit.calls) == 2)
        h.submit.resolve(1, {"model": "m", "texts": []})
        assert await other == ({"model": "m", "texts": []}, False)

    run(scenario())


def test_failed_run_raises_a_fresh_api_error_with_the_worker_code_for_every_caller():
    async def scenario():
        h = make_harness()
        readers = 4

        async def fail_when_all_joined():
            await turns_until(lambda: h.service.inflight.started + h.service.inflight.joined
                              == readers)
            h.submit.fail(0, FakeWorkerCrashed("the worker died on this image twice"))

        *errors, _ = await asyncio.gather(
            *(h.service.read(KEY, "job") for _ in range(readers)), fail_when_all_joined(),
            return_exceptions=True)
        assert all(isinstance(e, ApiError) for e in errors), errors
        assert {e.code for e in errors} == {"worker_crashed"}
        assert {e.status for e in errors} == {500}
        assert {e.message for e in errors} == {"the worker died on this image twice"}
        assert len({id(e) for e in errors}) == readers, "callers share one exception object"
        assert len({traceback_depth(e) for e in errors}) == 1
        # A failure is not cached: the next read runs again.
        retry = asyncio.ensure_future(h.service.read(KEY, "job"))
        await turns_until(lambda: len(h.submit.calls) == 2)
        h.submit.resolve(1, RESULT)
        assert await retry == (RESULT, False)

    run(scenario())


def test_read_refused_by_a_full_queue_propagates_and_leaves_nothing_in_flight():
    async def scenario():
        h = make_harness()
        h.submit.refuse_with = FakeQueueFull("every worker is busy")
        with pytest.raises(FakeQueueFull):
            await h.service.read(KEY, "job")
        assert len(h.service.inflight) == 0 and h.service.engine_runs == 0
        h.submit.refuse_with = None
        reader = asyncio.ensure_future(h.service.read(KEY, "job"))
        await turns_until(lambda: len(h.submit.futures) == 1)
        h.submit.resolve(0, RESULT)
        assert await reader == (RESULT, False)

    run(scenario())


def test_cancelled_reader_does_not_cancel_the_run_and_its_result_is_cached():
    async def scenario():
        h = make_harness()
        reader = asyncio.ensure_future(h.service.read(KEY, "job"))
        await turns_until(lambda: len(h.submit.futures) == 1)
        running = h.service.running(KEY)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert not h.submit.futures[0].cancelled()
        h.submit.resolve(0, RESULT)
        assert (await running).result == RESULT
        assert await h.cache.get(KEY) == encode_result(RESULT)

    run(scenario())


def test_internal_error_details_are_logged_once_per_run_and_never_shown(caplog):
    secret = "RuntimeError at /srv/models/secret_path.onnx line 42"

    async def scenario():
        h = make_harness()
        readers = 3

        async def fail_when_all_joined(index: int):
            await turns_until(lambda: len(h.submit.futures) > index and
                              h.service.inflight.started + h.service.inflight.joined
                              == readers * (index + 1))
            h.submit.fail(index, RuntimeError(secret))

        for run_index in range(2):
            *errors, _ = await asyncio.gather(
                *(h.service.read(KEY, "job", f"req-{run_index}") for _ in range(readers)),
                fail_when_all_joined(run_index), return_exceptions=True)
            assert all(isinstance(e, ApiError) for e in errors), errors
            for e in errors:
                assert e.code == "internal_error" and e.status == 500
                assert e.message == INTERNAL_MESSAGE
                assert "secret_path" not in e.message and "secret_path" not in str(e)
                assert "secret_path" not in repr(e.to_dict())
                assert e.info.details is not None and "secret_path" in e.info.details
        return h

    with caplog.at_level(logging.ERROR, logger="ppocr.service"):
        run(scenario())
    records = [r for r in caplog.records if r.name == "ppocr.service"]
    assert len(records) == 2, [r.getMessage() for r in records]  # two runs, six callers
    assert all(r.levelno == logging.ERROR for r in records)
    assert "secret_path" in records[0].getMessage() and "req-0" in records[0].getMessage()
    assert "internal_error" in records[0].getMessage()
    assert "req-1" in records[1].getMessage()


def test_client_errors_with_details_are_not_logged_by_the_service(caplog):
    class BadImage(Exception):
        info = ErrorInfo("invalid_image", "not a decodable image", details="decoder said no")

    async def scenario():
        h = make_harness()
        reader = asyncio.ensure_future(h.service.read(KEY, "job"))
        await turns_until(lambda: len(h.submit.futures) == 1)
        h.submit.fail(0, BadImage())
        with pytest.raises(ApiError) as failure:
            await reader
        assert failure.value.code == "invalid_image" and failure.value.status == 415

    with caplog.at_level(logging.DEBUG, logger="ppocr.service"):
        run(scenario())
    assert [r for r in caplog.records if r.name == "ppocr.service"] == []


# ------------------------------------------------------------------------ OcrService.submit_task


def test_task_ids_are_random_64_hex_and_never_the_key():
    async def scenario():
        h = make_harness()
        first = await h.service.submit_task(KEY, "job")
        second = await h.service.submit_task(KEY, "job")
        assert HEX64.match(first) and HEX64.match(second)
        assert first != second
        assert KEY not in (first, second)
        assert len(h.submit.calls) == 1  # the second submission joined the run in flight
        # Once cached, a further submission still gets its own id.
        h.submit.resolve(0, RESULT)
        await h.tasks.finished(first)
        await h.tasks.finished(second)
        third = await h.service.submit_task(KEY, "job")
        assert HEX64.match(third) and third not in (first, second, KEY)
        for task_id in (first, second, third):
            state = await h.service.task(task_id)
            assert state.outcome == Outcome(result=RESULT)

    run(scenario())


def test_a_task_id_never_handed_out_is_none():
    async def scenario():
        h = make_harness()
        task_id = await h.service.submit_task(KEY, "job")
        h.submit.resolve(0, RESULT)
        await h.tasks.finished(task_id)
        assert (await h.service.task(task_id)).outcome.result == RESULT
        assert await h.service.task(KEY) is None  # holding the image does not reveal the task
        assert await h.service.task("0" * 64) is None
        assert await h.service.task(task_id[::-1]) is None

    run(scenario())


def test_submitted_task_is_pending_then_done_and_expires_task_ttl_after_finishing():
    async def scenario():
        h = make_harness(task_ttl=300)
        task_id = await h.service.submit_task(KEY, "job", "req-1")
        assert h.submit.calls == [("job", "req-1")]
        assert (await h.service.task(task_id)).pending
        h.clock.tick(10_000)  # a pending task outlives any ttl
        assert (await h.service.task(task_id)).pending
        h.submit.resolve(0, RESULT)
        assert await h.tasks.finished(task_id) == Outcome(result=RESULT)
        h.clock.tick(299)
        assert (await h.service.task(task_id)).outcome.result == RESULT
        h.clock.tick(1)
        assert await h.service.task(task_id) is None

    run(scenario())


def test_result_fills_the_cache_even_when_no_caller_awaits():
    async def scenario():
        h = make_harness()
        await h.service.submit_task(KEY, "job")
        running = h.service.running(KEY)
        assert running is not None
        h.submit.resolve(0, RESULT)
        await running
        assert await h.cache.get(KEY) == encode_result(RESULT)
        assert await h.service.read(KEY, "job") == (RESULT, True)
        assert len(h.submit.calls) == 1

    run(scenario())


def test_failed_task_stores_error_data_and_every_poll_raises_a_fresh_error():
    async def scenario():
        h = make_harness()
        task_id = await h.service.submit_task(KEY, "job")
        h.submit.fail(0, FakeWorkerCrashed("the worker died on this image twice"))
        await h.tasks.finished(task_id)

        state = await h.service.task(task_id)
        assert state.outcome.result is None
        stored = state.outcome.error
        assert isinstance(stored, ErrorInfo), (
            f"a failed task must store ErrorInfo data, not {type(stored).__name__}")
        assert not isinstance(stored, BaseException)
        assert not any(isinstance(getattr(stored, f.name), BaseException)
                       for f in fields(stored))
        assert stored == ErrorInfo("worker_crashed", "the worker died on this image twice")

        errors, depths = [], []
        for _ in range(100):
            state = await h.service.task(task_id)
            try:
                raise ApiError.from_info(state.outcome.error)  # what the task handler does
            except ApiError as error:
                errors.append(error)
                depths.append(traceback_depth(error))
        assert len({id(e) for e in errors}) == 100, "polls share one exception object"
        assert set(depths) == {1}, f"traceback grows across polls: depths {sorted(set(depths))}"
        assert {(e.code, e.status, e.message) for e in errors} == {
            ("worker_crashed", 500, "the worker died on this image twice")}
        assert (await h.service.task(task_id)).outcome.error == stored  # unchanged by polls
        assert await h.cache.get(KEY) is None  # failures are not cached

    run(scenario())


def test_submit_on_a_cached_key_is_a_done_task_that_outlives_cache_expiry():
    async def scenario():
        h = make_harness(cache_ttl=10, task_ttl=300)
        reader = asyncio.ensure_future(h.service.read(KEY, "job"))
        await turns_until(lambda: len(h.submit.futures) == 1)
        h.submit.resolve(0, RESULT)
        await reader

        task_id = await h.service.submit_task(KEY, "job")
        assert len(h.submit.calls) == 1  # answered from the cache
        assert (await h.service.task(task_id)).outcome == Outcome(result=RESULT)

        h.clock.tick(11)  # the cache entry has expired...
        assert await h.cache.get(KEY) is None
        state = await h.service.task(task_id)  # ...the task has not
        assert state is not None, "task on a cached key answers 404 once the cache evicts it"
        assert state.outcome == Outcome(result=RESULT)
        h.clock.tick(288)  # 299 s after the submission
        assert (await h.service.task(task_id)).outcome.result == RESULT
        h.clock.tick(1)
        assert await h.service.task(task_id) is None

    run(scenario())


def test_submit_on_a_cached_key_outlives_eviction_by_a_full_cache():
    async def scenario():
        h = make_harness(cache_size=1, cache_ttl=600, task_ttl=300)
        first = asyncio.ensure_future(h.service.read(KEY, "job"))
        await turns_until(lambda: len(h.submit.futures) == 1)
        h.submit.resolve(0, RESULT)
        await first
        task_id = await h.service.submit_task(KEY, "job")

        other = asyncio.ensure_future(h.service.read(OTHER_KEY, "job2"))
        await turns_until(lambda: len(h.submit.futures) == 2)
        h.submit.resolve(1, {"model": "m", "texts": ["other"]})
        await other
        assert await h.cache.get(KEY) is None  # evicted by OTHER_KEY (size 1)

        state = await h.service.task(task_id)
        assert state is not None, "task on a cached key answers 404 once the cache evicts it"
        assert state.outcome == Outcome(result=RESULT)

    run(scenario())


def test_queue_full_from_submit_propagates_and_records_no_task():
    async def scenario():
        h = make_harness(counted_ids=True)
        h.submit.refuse_with = FakeQueueFull("every worker is busy and the queue is full")
        with pytest.raises(FakeQueueFull):
            await h.service.submit_task(KEY, "job")
        assert h.tasks.stats() == {"pending_tasks": 0, "finished_tasks": 0}
        assert len(h.service.inflight) == 0 and h.service.engine_runs == 0
        for task_id in h.issued:  # whatever id was drawn for it answers nothing
            assert await h.service.task(task_id) is None
        assert error_info(FakeQueueFull("x")).kind.status == 503

        h.submit.refuse_with = None
        task_id = await h.service.submit_task(KEY, "job")
        assert (await h.service.task(task_id)).pending

    run(scenario())


def test_task_store_full_refuses_the_submission_and_records_no_task():
    async def scenario():
        h = make_harness(max_tasks=1, counted_ids=True)
        kept = await h.service.submit_task(KEY, "job")
        with pytest.raises(TaskStoreFull) as refused:
            await h.service.submit_task(OTHER_KEY, "job2")
        assert refused.value.code == "queue_full"
        refused_id = h.issued[-1]
        assert await h.service.task(refused_id) is None
        assert h.tasks.stats() == {"pending_tasks": 1, "finished_tasks": 0}
        h.submit.resolve(0, RESULT)
        await h.tasks.finished(kept)
        assert (await h.service.task(kept)).outcome.result == RESULT

    run(scenario())


def test_an_interactive_read_that_joins_a_background_run_promotes_it():
    async def scenario():
        promoted = []
        clock = Clock()
        submit = FakeSubmit()
        service = OcrService(submit, MemoryResultCache(16, 60, timer=clock),
                             MemoryTaskStore(8, 300, timer=clock),
                             promote=lambda future: promoted.append(future) or True)
        background = asyncio.ensure_future(service.read("k", "job", None, Lane.BACKGROUND))
        await turns_until(lambda: len(submit.futures) == 1)
        assert promoted == []
        interactive = asyncio.ensure_future(service.read("k", "job"))
        await turns_until(lambda: promoted)
        assert promoted == [submit.futures[0]] and len(submit.futures) == 1  # joined, promoted
        submit.resolve(0, RESULT)
        assert (await interactive)[0] == RESULT and (await background)[0] == RESULT
        return promoted

    assert len(asyncio.run(asyncio.wait_for(scenario(), 10))) == 1
