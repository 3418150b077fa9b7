"""The task stores: the TaskStore contract, each case run on MemoryTaskStore
(server/store/memory.py) and on SqliteTaskStore (server/store/sqlite.py), the lasting store's
spools and bookkeeping checked where it has them; then what only a lasting store does: its
tasks, their outcomes and spooled requests survive closing and reopening the file, a spool no
pending task needs is deleted at open, and one that is missing or damaged reads as SpoolLost.
Then the service's side (documents and batches in the lasting store, a task cut short by the
shutdown left pending) and server/documents.py's spooled requests read back as they were.

Time is a clock the test ticks (the store's `timer`), never a sleep; each test has its own
state folder (pytest's tmp_path).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3

import pytest

from ocr_engine import OcrOptions
from server.documents import failed_body, spool_request, spooled_request
from server.errors import ApiError, ErrorInfo, error_info
from server.request import RequestPolicy, parse_request
from server.service import OcrService
from server.store import Outcome, SpooledRequest, SpoolLost, TaskState
from server.store.memory import MemoryResultCache, MemoryTaskStore, TaskStoreFull
from server.store.sqlite import SPOOL_MANIFEST, SqliteTaskStore

RESULT = {"model": "ppocr-v4", "texts": ["hello"], "boxes": [[[0, 0], [1, 0], [1, 1], [0, 1]]],
          "score": 0.987654321, "text": "héllo, 世界"}


def run(coro):
    # The timeout only turns a hang into a failure; no test relies on time passing.
    return asyncio.run(asyncio.wait_for(coro, 30))


class Clock:
    """What the store's `timer` reads; tests move it with `tick`."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def state(tmp_path):
    return tmp_path


@contextlib.asynccontextmanager
async def opened(folder, max_tasks: int = 4, ttl: float = 60, clock: Clock | None = None):
    store = SqliteTaskStore(folder / "tasks.sqlite3", folder / "task-spool", max_tasks, ttl,
                            timer=clock or Clock())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def request(n: int = 0) -> SpooledRequest:
    return SpooledRequest({"kind": "document", "n": n, "pages": [[1, None]]},
                          {"document": b"%PDF-1.7 " + bytes(range(256)) * 4 + str(n).encode()})


# ------------------------------------------ the TaskStore contract, on both stores


@contextlib.asynccontextmanager
async def in_memory(max_tasks: int, ttl: float, clock: Clock):
    yield MemoryTaskStore(max_tasks, ttl, timer=clock)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request, state, clock):
    """Opens the store under test (MemoryTaskStore, then SqliteTaskStore in `state`), its
    `timer` the test's `clock`: `async with open_store(max_tasks=2) as store:`."""
    def open_(max_tasks: int = 4, ttl: float = 60):
        if request.param == "memory":
            return in_memory(max_tasks, ttl, clock)
        return opened(state, max_tasks, ttl, clock)
    return open_


def lasting(store) -> bool:
    """Whether `store` is the lasting one, with its spools, `expire` and `unfinished`."""
    return isinstance(store, SqliteTaskStore)


def test_task_store_unknown_id_is_none(open_store):
    async def scenario():
        async with open_store() as store:
            assert await store.get("f" * 64) is None

    run(scenario())


def test_pending_task_never_expires(open_store, clock):
    async def scenario():
        async with open_store() as store:
            await store.create("t1")
            for _ in range(5):
                clock.tick(1e9)
                state_ = await store.get("t1")
                assert state_ == TaskState("t1") and state_.pending
            if lasting(store):
                assert await store.expire() == 0
                assert (await store.get("t1")).pending

    run(scenario())


def test_finished_task_expires_ttl_after_it_finished_not_after_creation(open_store, clock):
    async def scenario():
        async with open_store() as store:
            await store.create("t1")
            clock.tick(1000)  # far past the ttl, counted from creation
            await store.finish("t1", Outcome(result=RESULT))
            state_ = await store.get("t1")
            assert not state_.pending and state_.outcome == Outcome(result=RESULT)
            clock.tick(59.5)
            assert (await store.get("t1")).outcome.result == RESULT
            clock.tick(0.5)  # exactly 60 s after finishing
            assert await store.get("t1") is None
            assert store.stats() == {"pending_tasks": 0, "finished_tasks": 0}

    run(scenario())


def test_create_with_outcome_is_done_at_once_and_expires_after_ttl(open_store, clock):
    async def scenario():
        async with open_store() as store:
            await store.create("t1", Outcome(result=RESULT))
            state_ = await store.get("t1")
            assert not state_.pending and state_.outcome.result == RESULT
            assert store.stats() == {"pending_tasks": 0, "finished_tasks": 1}
            clock.tick(60)
            assert await store.get("t1") is None

    run(scenario())


def test_finish_of_a_task_that_is_not_pending_records_nothing(open_store):
    async def scenario():
        async with open_store() as store:
            await store.finish("never-created", Outcome(result=RESULT))
            assert await store.get("never-created") is None
            assert store.stats() == {"pending_tasks": 0, "finished_tasks": 0}
            await store.create("t1")
            await store.finish("t1", Outcome(result={"first": True}))
            await store.finish("t1", Outcome(result={"second": True}))  # finishes once
            assert (await store.get("t1")).outcome.result == {"first": True}

    run(scenario())


def test_finished_tasks_are_bounded_the_oldest_dropped(open_store, clock):
    async def scenario():
        async with open_store(max_tasks=2) as store:
            for task_id in ("t1", "t2", "t3"):
                await store.create(task_id, Outcome(result={"id": task_id}))
                clock.tick(1)
            assert await store.get("t1") is None
            assert (await store.get("t2")).outcome.result == {"id": "t2"}
            assert (await store.get("t3")).outcome.result == {"id": "t3"}
            assert store.stats() == {"pending_tasks": 0, "finished_tasks": 2}

    run(scenario())


def test_finished_task_bound_drops_the_oldest_even_if_it_was_polled(open_store, clock):
    # Once a BUG of MemoryTaskStore: finished tasks lived in a TTLCache, whose eviction is
    # least-recently-*used*, so a polled old task survived and a newer, never-polled one was
    # dropped, though the docstring and the max_tasks config key say "the oldest dropped".
    async def scenario():
        async with open_store(max_tasks=2) as store:
            await store.create("t1", Outcome(result={"id": "t1"}))
            clock.tick(1)
            await store.create("t2", Outcome(result={"id": "t2"}))
            clock.tick(1)
            assert (await store.get("t1")).outcome.result == {"id": "t1"}  # a client polls t1
            await store.create("t3", Outcome(result={"id": "t3"}))
            survivors = [task_id for task_id in ("t1", "t2", "t3")
                         if await store.get(task_id) is not None]
            assert survivors == ["t2", "t3"], (
                f"{type(store).__name__} drops the least recently polled finished task, not "
                f"the oldest as documented: kept {survivors}, expected ['t2', 't3']")

    run(scenario())


def test_finishing_order_not_creation_order_decides_which_finished_task_is_dropped(open_store):
    async def scenario():
        # The clock never ticks: equal times, the finishing order alone decides.
        async with open_store(max_tasks=2) as store:
            for task_id in ("a", "b"):
                await store.create(task_id)
            await store.finish("b", Outcome(result={"id": "b"}))
            await store.finish("a", Outcome(result={"id": "a"}))
            await store.create("c", Outcome(result={"id": "c"}))
            assert await store.get("b") is None
            assert [(await store.get(t)).outcome.result["id"] for t in ("a", "c")] == ["a", "c"]

    run(scenario())


def test_pending_tasks_are_bounded_with_queue_full(open_store, state):
    async def scenario():
        async with open_store(max_tasks=2) as store:
            await store.create("t1")
            await store.create("t2")
            with pytest.raises(TaskStoreFull) as refused:
                await store.create("t3", request=request(3))
            assert refused.value.code == "queue_full"
            assert error_info(refused.value).code == "queue_full"
            assert error_info(refused.value).kind.status == 503
            assert await store.get("t3") is None
            assert not (state / "task-spool" / "t3").exists()  # refused before spooling
            assert store.stats() == {"pending_tasks": 2, "finished_tasks": 0}
            # Finishing one frees its pending slot; finished tasks do not count against pending.
            await store.finish("t1", Outcome(result=RESULT))
            await store.create("t3")
            assert (await store.get("t3")).pending
            assert store.stats() == {"pending_tasks": 2, "finished_tasks": 1}

    run(scenario())


def test_the_store_refuses_past_the_bound_even_when_creations_race(open_store, state):
    async def scenario():
        async with open_store(max_tasks=2) as store:
            outcomes = await asyncio.gather(*(store.create(f"t{i}", request=request(i))
                                              for i in range(4)), return_exceptions=True)
            refused = [o for o in outcomes if isinstance(o, TaskStoreFull)]
            assert len(refused) == 2 and outcomes.count(None) == 2
            assert store.stats()["pending_tasks"] == 2
            if lasting(store):
                assert len(await store.unfinished()) == 2
                # refused spools removed
                assert len(list((state / "task-spool").iterdir())) == 2

    run(scenario())


def test_progress_is_shown_while_pending_and_ignored_once_finished(open_store):
    async def scenario():
        async with open_store() as store:
            await store.create("t1")
            await store.progress("t1", 2, 5)
            assert await store.get("t1") == TaskState("t1", progress={"done": 2, "total": 5})
            await store.finish("t1", Outcome(result=RESULT))
            await store.progress("t1", 3, 5)
            await store.progress("unknown", 1, 1)
            assert (await store.get("t1")).progress is None

    run(scenario())


def test_discard_forgets_a_pending_or_finished_task_and_its_spool(open_store, state):
    async def scenario():
        async with open_store() as store:
            await store.create("t1", request=request())
            if lasting(store):
                assert (state / "task-spool" / "t1" / SPOOL_MANIFEST).is_file()
            await store.discard("t1")
            assert await store.get("t1") is None
            assert not (state / "task-spool" / "t1").exists()
            await store.create("t2", Outcome(result=RESULT))
            await store.discard("t2")
            assert await store.get("t2") is None
            assert store.stats() == {"pending_tasks": 0, "finished_tasks": 0}

    run(scenario())


def test_error_outcomes_keep_their_data_details_included(open_store):
    async def scenario():
        async with open_store() as store:
            error = ErrorInfo("worker_crashed", "the OCR worker died on this image twice",
                              details="Traceback ...")
            await store.create("t1")
            await store.finish("t1", Outcome(error=error))
            assert (await store.get("t1")).outcome == Outcome(error=error)

    run(scenario())


# -------------------------------------------------------------- what lasts across a restart


def test_tasks_outcomes_and_spools_survive_closing_and_reopening(state):
    async def scenario():
        clock = Clock()
        async with opened(state, clock=clock) as store:
            await store.create("old")
            await store.create("new", request=request(1))
            await store.create("done", request=request(2))
            await store.progress("new", 1, 3)
            await store.finish("done", Outcome(result=RESULT))
            assert not (state / "task-spool" / "done").exists()  # deleted as it finished
            failed = Outcome(error=ErrorInfo("invalid_document", "page 2: truncated"))
            await store.create("failed")
            await store.finish("failed", failed)
        clock.tick(30)
        async with opened(state, clock=clock) as store:
            assert await store.unfinished() == ["old", "new"]  # oldest first
            # Progress is not kept: the redone task reports its own.
            assert await store.get("new") == TaskState("new")
            assert await store.spooled("new") == request(1)
            assert (await store.get("done")).outcome == Outcome(result=RESULT)
            assert (await store.get("failed")).outcome == failed
            assert store.stats() == {"pending_tasks": 2, "finished_tasks": 2}
            clock.tick(30)  # 60 s after they finished
            assert await store.get("done") is None
            assert await store.expire() == 2
        with sqlite3.connect(state / "tasks.sqlite3") as db:
            assert sorted(row[0] for row in db.execute("SELECT id FROM tasks")) == ["new", "old"]

    run(scenario())


def test_the_ttl_counts_from_finishing_across_a_restart_and_open_deletes_expired_rows(state):
    async def scenario():
        clock = Clock()
        async with opened(state, clock=clock) as store:
            await store.create("t1", Outcome(result=RESULT))
        clock.tick(61)
        async with opened(state, clock=clock) as store:
            assert await store.get("t1") is None
            assert store.stats() == {"pending_tasks": 0, "finished_tasks": 0}
        with sqlite3.connect(state / "tasks.sqlite3") as db:
            assert db.execute("SELECT COUNT(*) FROM tasks").fetchone() == (0,)

    run(scenario())


def test_a_smaller_bound_after_a_restart_keeps_the_last_to_finish(state):
    async def scenario():
        async with opened(state, max_tasks=4) as store:
            for task_id in ("t1", "t2", "t3"):
                await store.create(task_id, Outcome(result={"id": task_id}))
        async with opened(state, max_tasks=1) as store:
            assert [t for t in ("t1", "t2", "t3") if await store.get(t) is not None] == ["t3"]

    run(scenario())


def test_open_deletes_spools_no_pending_task_needs(state):
    async def scenario():
        async with opened(state) as store:
            await store.create("kept", request=request())
        spool = state / "task-spool"
        (spool / ".cut.partial").mkdir()  # a crash while spooling
        (spool / ".cut.partial" / "document").write_bytes(b"half")
        (spool / "no-row").mkdir()  # a crash between the spool and the row
        (spool / "stray").write_bytes(b"x")
        async with opened(state) as store:
            assert sorted(path.name for path in spool.iterdir()) == ["kept"]
            assert await store.spooled("kept") == request()

    run(scenario())


def test_a_missing_or_damaged_spool_reads_as_spool_lost(state):
    async def scenario():
        async with opened(state) as store:
            for task_id in ("gone", "garbled", "short"):
                await store.create(task_id, request=request())
            spool = state / "task-spool"
            for path in (spool / "gone").iterdir():
                path.unlink()
            (spool / "garbled" / SPOOL_MANIFEST).write_text("{not json")
            (spool / "short" / "document").unlink()
            for task_id, says in (("gone", "is missing"), ("garbled", "cannot be read"),
                                  ("short", "is missing")):
                with pytest.raises(SpoolLost) as lost:
                    await store.spooled(task_id)
                info = error_info(lost.value)
                assert info.code == "task_lost" and info.kind.status == 500
                assert says in info.message and "send the request again" in info.message
                assert str(spool) not in info.message  # the path is for the log only
                assert info.details

    run(scenario())


def test_a_spool_holds_the_fields_as_json_and_the_files_as_they_were(state):
    async def scenario():
        files = {"item-0": b"\x89PNG" + bytes(1000), "item-2": b"", "document": b"%PDF"}
        fields = {"batch": [{"file": "item-0"}, {"filename": "a/b.jpg"}, {"file": "item-2"}],
                  "password": "s\u00e9cret"}
        async with opened(state) as store:
            await store.create("t1", request=SpooledRequest(fields, files))
            folder = state / "task-spool" / "t1"
            manifest = json.loads((folder / SPOOL_MANIFEST).read_text())
            assert manifest == {"fields": fields, "files": list(files)}
            assert {path.name for path in folder.iterdir()} == {SPOOL_MANIFEST, *files}
            assert oct(folder.stat().st_mode & 0o777) == "0o700"
            assert await store.spooled("t1") == SpooledRequest(fields, files)
            with pytest.raises(ValueError):
                await store.create("t2", request=SpooledRequest({}, {"../x": b""}))
            assert await store.get("t2") is None

    run(scenario())


# -------------------------------------------------------------- the service and the spool


def lasting_service(store: SqliteTaskStore) -> OcrService:
    def submit(job, request_id, lane):
        raise AssertionError("no run is submitted here")
    return OcrService(submit, MemoryResultCache(4, 60), MemoryTaskStore(4, 60),
                      lasting_tasks=store)


def test_documents_and_batches_go_to_the_lasting_store_and_polls_find_both(state):
    async def scenario():
        async with opened(state) as store:
            ocr = lasting_service(store)
            task_id = await ocr.new_task(request())
            assert (await store.get(task_id)).pending
            assert await ocr.tasks.get(task_id) is None  # not the images' store
            ocr.run_task(task_id, asyncio.sleep(0, result=RESULT))
            await ocr.drain(10)
            assert (await ocr.task(task_id)).outcome == Outcome(result=RESULT)
            await ocr.tasks.create("image-task", Outcome(result={"image": True}))
            assert (await ocr.task("image-task")).outcome.result == {"image": True}
            stats = ocr.stats()
            assert (stats["pending_tasks"], stats["finished_tasks"]) == (0, 2)

    run(scenario())


@pytest.mark.parametrize(("outcome", "closing", "stays_pending"), [
    ("shutting_down", True, True),
    ("batch_item_shutting_down", True, True),
    ("shutting_down", False, False),  # not at shutdown: the error is the task's
    ("invalid_document", True, False),  # the task's own error, shutdown or not
    ("result", True, False),
])
def test_a_task_cut_short_by_the_shutdown_stays_pending_for_the_next_start(
        state, outcome, closing, stays_pending):
    async def work() -> dict:
        if outcome == "result":
            return RESULT
        if outcome == "batch_item_shutting_down":
            return {"results": [{"status": "done", "lines": []}, failed_body(
                ApiError("shutting_down", "the server is shutting down"))]}
        raise ApiError(outcome, "page 2: stopped")

    async def scenario():
        async with opened(state) as store:
            ocr = lasting_service(store)
            task_id = await ocr.new_task(request())
            if closing:
                ocr.begin_shutdown()
            ocr.run_task(task_id, work())
            await ocr.drain(10)
            assert (await store.get(task_id)).pending is stays_pending
            assert (state / "task-spool" / task_id).exists() is stays_pending
        async with opened(state) as store:
            assert (await store.unfinished() == [task_id]) is stays_pending

    run(scenario())


POLICY = RequestPolicy(defaults=OcrOptions(), default_model="ppocr-v4",
                       models=("ppocr-v4", "ppocr-v4-server"), filename_roots=(),
                       max_body_size=1 << 20)


def upload(data: bytes, name: str = "x") -> dict:
    return {"filename": name, "body": data, "content_type": "application/octet-stream"}


def test_a_spooled_request_reads_back_as_the_request_it_was():
    document = parse_request({"block_flag": "false", "pages": "1-2,4-", "dpi": "150",
                              "pdf_text": "auto", "password": "p\u00e4ss", "drop_score": "0.7",
                              "model": "ppocr-v4-server"},
                             {"file": [upload(b"%PDF-1.7 ...")]}, POLICY)
    spooled = spool_request(document, document.image)
    json.dumps(spooled.fields)  # JSON as it is
    again, data = spooled_request(spooled, POLICY)
    assert again == dataclasses.replace(document, image=None) and data == b"%PDF-1.7 ..."

    batch = parse_request({"block_flag": "false", "use_angle_cls": "false"},
                          {"file": [upload(b"\x89PNG one"), upload(b""), upload(b"%PDF two")]},
                          POLICY)
    assert batch.batch[1].error is not None  # an empty item: refused alone
    again, data = spooled_request(spool_request(batch), POLICY)
    assert again == batch and data is None
    named = parse_request({"file_type": "filename", "img_src": ["a.jpg", "b/c.pdf"],
                           "block_flag": "false"}, {}, POLICY)
    assert named.batch is not None and named.batch[1].filename == "b/c.pdf"
    assert spooled_request(spool_request(named), POLICY)[0] == named


def test_a_spooled_request_that_no_longer_fits_fails_clearly():
    document = parse_request({"model": "ppocr-v4-server"}, {"file": [upload(b"%PDF")]}, POLICY)
    spooled = spool_request(document, document.image)
    narrower = dataclasses.replace(POLICY, models=("ppocr-v4",))
    with pytest.raises(ApiError) as refused:
        spooled_request(spooled, narrower)
    assert refused.value.code == "unknown_model"
    for damage in ({"version": 99}, {"options": {"no_such_option": 1}}, {"document": None}):
        with pytest.raises(SpoolLost) as lost:
            spooled_request(SpooledRequest({**spooled.fields, **damage}, spooled.files),
                            POLICY)
        assert error_info(lost.value).code == "task_lost"
    with pytest.raises(SpoolLost):
        spooled_request(SpooledRequest(spooled.fields, {}), POLICY)
