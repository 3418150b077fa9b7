"""The JobStore contract, run on both stores: SqliteJobStore (a file in tmp_path) and
RedisJobStore (a real redis-server on a free loopback port, tests/redis_nginx.py), then what
only the Redis store does: the work stream its nodes share (entries per item and per added
page, acknowledged with the item's record, taken over from a consumer that stopped
refreshing them, the job marked done by whoever records its last item) and the answer when
Redis cannot be reached.

Each test gets a fresh key prefix, so the tests share one redis-server and never see each
other's keys. Times are injected numbers, never the wall clock; the one wait (an entry going
idle for the takeover) is a bounded poll of Redis's own idle counter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from server.errors import CATALOGUE, ErrorInfo, error_info
from server.store import ItemOutcome, ItemSpec, JobRecord, JobStore
from server.store.redis_jobs import GROUP, RedisJobStore, StoreUnavailable
from server.store.sqlite import SqliteJobStore
from tests.redis_nginx import RedisServer

TIMEOUT = 60


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> RedisServer:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def job_record(job_id: str = "a" * 32, fingerprint: str = "f", created_at: float = 1.0,
               source: str = "folder") -> JobRecord:
    return JobRecord(id=job_id, fingerprint=fingerprint, source=source, name="scans",
                     location="/x", options='{"drop_score":0.5}', model="m", status="queued",
                     total=0, created_at=created_at, dpi=150, pdf_text="auto",
                     skipped_symlinks=2)


def redis_store(server: RedisServer, prefix: str | None = None, **kwargs) -> RedisJobStore:
    client = aioredis.Redis.from_url(server.url, socket_timeout=10)
    return RedisJobStore(client, prefix or f"t{secrets.token_hex(4)}:", **kwargs)


StoreFactory = Callable[[], Awaitable[JobStore]]


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path) -> AsyncIterator[StoreFactory]:
    """A factory of an opened, empty store of the parametrized kind (closed by the test)."""
    if request.param == "sqlite":
        async def make() -> JobStore:
            store = SqliteJobStore(tmp_path / "jobs.sqlite3")
            await store.open()
            return store
    else:
        server = request.getfixturevalue("redis_server")

        async def make() -> JobStore:
            store = redis_store(server)
            await store.open()
            return store
    return make


async def close(store: JobStore) -> None:
    await store.close()
    if isinstance(store, RedisJobStore):
        await store.client.aclose()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


# ---------------------------------------------------------------- the contract, on both stores

def test_writes_are_idempotent_and_pages_are_added_once(open_store):
    async def scenario() -> None:
        store = await open_store()
        job = job_record()
        stored = await store.create(job, [ItemSpec("a.pdf", 10, 5), ItemSpec("b.jpg")])
        assert stored == dataclasses.replace(job, total=2)  # every field round-trips
        duplicate = dataclasses.replace(job, id="b" * 32)
        assert (await store.create(duplicate, [ItemSpec("c.jpg")])).id == job.id
        assert await store.get("b" * 32) is None  # nothing of the duplicate was written
        assert await store.add_pages(job.id, 0, 3, max_total=10) == 2
        assert await store.add_pages(job.id, 0, 3, max_total=10) == 0  # again: nothing new
        assert await store.add_pages(job.id, 1, 20, max_total=10) is None
        assert await store.add_pages(job.id, 1, 8, max_total=10) is None  # 4 + 7 > 10
        assert await store.add_pages("c" * 32, 0, 3, max_total=10) == 0  # no such job
        assert (await store.get(job.id)).total == 4
        pending = await store.pending(job.id, (-1, -1), 10)
        assert [(item.file, item.seq, item.page, item.state) for item in pending] == [
            ("a.pdf", 0, 1, "queued"), ("a.pdf", 0, 2, "queued"), ("a.pdf", 0, 3, "queued"),
            ("b.jpg", 1, 1, "queued")]
        outcome = ItemOutcome(0, 2, result={"text": "page two", "score": 0.1 + 0.2},
                              cached=True, finished_at=2.000001)
        for _ in range(2):  # a resumed job may write an outcome twice: it counts once
            await store.record([(job.id, 0, 2)], [(job.id, outcome)])
        stored = await store.get(job.id)
        assert (stored.done, stored.cached, stored.failed) == (1, 1, 0)
        [item] = await store.items(job.id, (-1, -1), 10)
        assert (item.seq, item.page, item.result, item.attempts, item.cached,
                item.finished_at) == (0, 2, {"text": "page two", "score": 0.1 + 0.2}, 1, True,
                                      2.000001)
        assert [(i.seq, i.page) for i in await store.pending(job.id, (0, 1), 10)] == [
            (0, 3), (1, 1)]
        assert [(i.seq, i.page) for i in await store.pending(job.id, (0, -1), 10)] == [
            (0, 1), (0, 3), (1, 1)]
        assert [(i.seq, i.page) for i in await store.pending(job.id, (-1, -1), 2)] == [
            (0, 1), (0, 3)]
        assert await store.set_status(job.id, "running", 3.0)
        assert await store.set_status(job.id, "running", 3.5)  # started_at is kept
        assert (await store.get(job.id)).started_at == 3.0
        assert await store.set_status(job.id, "done", 4.0)
        assert not await store.set_status(job.id, "cancelled", 5.0)  # finished stays finished
        assert not await store.set_status("c" * 32, "running", 5.0)
        finished = await store.get(job.id)
        assert (finished.status, finished.started_at, finished.finished_at) == ("done", 3.0,
                                                                                4.0)
        assert [j.id for j in await store.expired(4.5)] == [job.id]
        assert await store.expired(4.0) == []  # strictly before
        assert await store.delete(job.id)
        assert not await store.delete(job.id)
        await store.record([], [(job.id, outcome)])  # a late write for a deleted job: nothing
        assert await store.get(job.id) is None and await store.items(job.id, (-1, -1), 9) == []
        assert await store.pending(job.id, (-1, -1), 9) == []
        assert await store.find(job.fingerprint) is None
        assert await store.page(10, 0) == ([], 0)
        await close(store)

    run(scenario)


def test_failures_recent_items_and_results_in_order(open_store):
    async def scenario() -> None:
        store = await open_store()
        job = await store.create(job_record(), [ItemSpec(f"{n}.png") for n in range(5)])
        error = ErrorInfo("invalid_image", "not an image", details="never stored")
        await store.record([(job.id, 3, 1), (job.id, 3, 1)], [
            (job.id, ItemOutcome(3, 1, error=error, finished_at=7.0)),
            (job.id, ItemOutcome(1, 1, result={"text": "one"}, finished_at=5.0)),
            (job.id, ItemOutcome(4, 1, result={"text": "four"}, finished_at=7.0))])
        stored = await store.get(job.id)
        assert (stored.done, stored.failed, stored.cached, stored.total) == (2, 1, 0, 5)
        items = await store.items(job.id, (-1, -1), 10)
        assert [(i.seq, i.state) for i in items] == [(1, "done"), (3, "failed"), (4, "done")]
        failed = items[1]
        assert (failed.error, failed.result, failed.attempts) == (
            ErrorInfo("invalid_image", "not an image"), None, 2)
        assert [i.seq for i in await store.items(job.id, (1, 1), 1)] == [3]
        # Newest first; a tie in finished_at goes by (seq, page) descending.
        assert [i.seq for i in await store.recent(job.id, 5)] == [4, 3, 1]
        assert [i.seq for i in await store.recent(job.id, 1)] == [4]
        assert [i.seq for i in await store.pending(job.id, (-1, -1), 10)] == [0, 2]
        await close(store)

    run(scenario)


def test_listing_finding_and_unfinished_jobs(open_store):
    async def scenario() -> None:
        store = await open_store()
        old = await store.create(job_record("1" * 32, "fp-old", 10.0), [ItemSpec("x.png")])
        new = await store.create(job_record("2" * 32, "fp-new", 20.0), [])
        mid = await store.create(job_record("3" * 32, "fp-mid", 15.0), [ItemSpec("y.png")])
        jobs, total = await store.page(2, 0)
        assert ([j.id for j in jobs], total) == ([new.id, mid.id], 3)
        jobs, total = await store.page(2, 2)
        assert ([j.id for j in jobs], total) == ([old.id], 3)
        assert [j.id for j in await store.unfinished()] == [old.id, mid.id, new.id]
        assert (await store.find("fp-mid")).id == mid.id
        assert await store.find("fp-none") is None
        # A cancelled (or failed) job is not an identical re-submission's answer: a new job
        # with its fingerprint is created, and found from then on.
        assert await store.set_status(mid.id, "cancelled", 30.0, error=None)
        assert await store.set_status(old.id, "failed", 31.0, error="the store broke")
        assert (await store.get(old.id)).error == "the store broke"
        assert await store.find("fp-mid") is None
        again = await store.create(job_record("4" * 32, "fp-mid", 40.0), [ItemSpec("y.png")])
        assert again.id == "4" * 32
        assert (await store.find("fp-mid")).id == again.id
        assert [j.id for j in await store.unfinished()] == [new.id, again.id]
        assert [j.id for j in await store.expired(100.0)] == [mid.id, old.id]
        # Deleting the cancelled one leaves the fingerprint with the live one.
        assert await store.delete(mid.id)
        assert (await store.find("fp-mid")).id == again.id
        await close(store)

    run(scenario)


def test_a_file_name_is_only_data(open_store):
    async def scenario() -> None:
        store = await open_store()
        names = ["ü ñ 中文.png", "quote'\"%s{}.jpg", "a:b:c/with/slash.png", "-", "+"]
        job = await store.create(job_record(), [ItemSpec(name) for name in names])
        assert [i.file for i in await store.pending(job.id, (-1, -1), 10)] == names
        await close(store)

    run(scenario)


# ---------------------------------------------------------------- the Redis store's stream

def test_stream_entries_are_acknowledged_with_their_record_and_the_last_one_ends_the_job(
        redis_server):
    async def scenario() -> None:
        prefix = f"t{secrets.token_hex(4)}:"
        node_a = redis_store(redis_server, prefix, consumer="a", retention=120)
        node_b = redis_store(redis_server, prefix, consumer="b", retention=120)
        await node_a.open()
        await node_b.open()  # the group exists already: fine
        job = await node_a.create(job_record(source="zip"), [ItemSpec("doc.pdf"),
                                                             ItemSpec("b.png")])
        await node_a.put_archive_entries(job.id, [(0, b"%PDF-1.4"), (1, b"\x89PNG")])
        assert await node_b.archive_entry(job.id, 1) == b"\x89PNG"  # any node reads it
        taken_a = await node_a.take(1)
        taken_b = await node_b.take(5)
        assert [(e.seq, e.page) for e in taken_a] == [(0, 1)]
        assert [(e.seq, e.page) for e in taken_b] == [(1, 1)]
        assert await node_b.take(5) == []  # nothing left untaken (waited block_s)
        # Node A counts the document's pages: they become entries too.
        assert await node_a.add_pages(job.id, 0, 2, max_total=10) == 1
        [page_two] = await node_b.take(5)
        assert (page_two.job_id, page_two.seq, page_two.page) == (job.id, 0, 2)

        got_job, item = await node_a.begin(taken_a[0])
        assert (got_job.id, item.file, item.state, item.attempts) == (job.id, "doc.pdf",
                                                                      "queued", 1)
        outcomes = {(0, 1): ItemOutcome(0, 1, result={"text": "p1"}, finished_at=9.0),
                    (1, 1): ItemOutcome(1, 1, result={"text": "b"}, finished_at=9.5),
                    (0, 2): ItemOutcome(0, 2, error=ErrorInfo("invalid_document", "torn"),
                                        finished_at=9.7)}
        assert not await node_a.finish(taken_a[0], outcomes[(0, 1)], now=10.0)
        assert not await node_b.finish(taken_b[0], outcomes[(1, 1)], now=10.5)
        pending_entries = await node_b.client.xpending(node_b.stream_key, GROUP)
        assert pending_entries["pending"] == 1  # only page two's entry is still taken
        assert await node_b.finish(page_two, outcomes[(0, 2)], now=11.0)  # the last: done
        done = await node_a.get(job.id)
        assert (done.status, done.finished_at, done.done, done.failed, done.total) == (
            "done", 11.0, 2, 1, 3)
        assert [j.id for j in await node_a.unfinished()] == []
        assert [j.id for j in await node_a.expired(12.0)] == [job.id]
        # Acknowledged entries leave the stream; the finished ZIP job's entries expire.
        assert await node_a.client.xlen(node_a.stream_key) == 0
        assert 0 < await node_a.client.ttl(f"{prefix}j:{job.id}:zip") <= 120
        # A repeated finish (an entry read twice) changes nothing and ends nothing again.
        assert not await node_b.finish(page_two, outcomes[(0, 2)], now=12.0)
        assert (await node_a.get(job.id)).finished_at == 11.0
        assert await node_a.delete(job.id)
        assert await node_a.client.keys(f"{prefix}j:*") == []
        for store in (node_a, node_b):
            await close(store)

    run(scenario)


def test_entries_of_a_consumer_that_stopped_refreshing_are_taken_over(redis_server):
    async def scenario() -> None:
        prefix = f"t{secrets.token_hex(4)}:"
        # 1 s: no stall of a loaded machine between two steps below comes near it.
        dead = redis_store(redis_server, prefix, consumer="dead", claim_idle=1.0)
        alive = redis_store(redis_server, prefix, consumer="alive", claim_idle=1.0)
        await dead.open()
        await alive.open()
        job = await dead.create(job_record(), [ItemSpec(f"{n}.png") for n in range(3)])
        taken = await dead.take(2)
        assert len(taken) == 2
        assert await alive.reclaim(10) == []  # fresh: not taken over
        # The node that keeps refreshing its entries keeps them, however long it reads.
        deadline = time.monotonic() + 10
        while await oldest_idle_ms(alive, "dead") < 1050:
            assert time.monotonic() < deadline, "the entries never went idle"
            await dead.refresh([taken[0].id])
            await asyncio.sleep(0.05)  # polling Redis's idle counter, under a deadline
        await dead.refresh([taken[0].id])
        reclaimed = await alive.reclaim(10)
        assert [(e.seq, e.page) for e in reclaimed] == [(1, 1)]  # the unrefreshed one only
        assert await alive.held(10) == reclaimed  # now held by the taker
        # The dead node's late record of the same item still counts once.
        outcome = ItemOutcome(1, 1, result={"text": "x"}, finished_at=3.0)
        await alive.finish(reclaimed[0], outcome, now=4.0)
        await dead.finish(taken[1], outcome, now=4.0)
        assert (await alive.get(job.id)).done == 1
        # A job whose entries are gone (deleted job) is (None, None) to a taker.
        assert await alive.delete(job.id)
        assert await alive.begin(taken[0]) == (None, None)
        for store in (dead, alive):
            await close(store)

    run(scenario)


async def oldest_idle_ms(store: RedisJobStore, consumer: str) -> int:
    """The longest idle time of `consumer`'s taken entries (XPENDING's own counter)."""
    rows = await store.client.xpending_range(store.stream_key, GROUP, "-", "+", 100,
                                             consumername=consumer)
    return max(row["time_since_delivered"] for row in rows)


def test_a_job_whose_creator_died_before_adding_its_entries_gets_them_once(redis_server,
                                                                          monkeypatch):
    async def scenario() -> None:
        monkeypatch.setattr("server.store.redis_jobs.CHUNK", 2)  # several chunks per job
        prefix = f"t{secrets.token_hex(4)}:"
        creator = redis_store(redis_server, prefix, consumer="creator")
        other = redis_store(redis_server, prefix, consumer="other")
        await creator.open()

        async def died(job_id: str, enqueued: int, files: int) -> None:
            await creator._enqueue(keys=[creator._job(job_id), creator.stream_key,
                                         creator._enqueueing], args=[job_id, 0, 2])
        creator._enqueue_items = died  # published, then only the first chunk's entries
        job = await creator.create(job_record(), [ItemSpec(f"{n}.png") for n in range(5)])
        assert job.total == 5 and await creator.client.xlen(creator.stream_key) == 2
        assert await other.finish_enqueueing() == 1
        assert await other.finish_enqueueing() == 0  # done: nothing resumed again
        taken = await other.take(10)
        assert sorted(entry.seq for entry in taken) == [0, 1, 2, 3, 4]  # each exactly once
        # A superseded creation leaves nothing: its items' keys are gone.
        duplicate = dataclasses.replace(job_record(), id="d" * 32)
        assert (await other.create(duplicate, [ItemSpec("z.png")])).id == job.id
        assert await other.client.keys(f"{prefix}j:{'d' * 32}*") == []
        for store in (creator, other):
            await close(store)

    run(scenario)


def test_an_entry_of_a_cancelled_job_is_only_acknowledged(redis_server):
    async def scenario() -> None:
        prefix = f"t{secrets.token_hex(4)}:"
        submitter = redis_store(redis_server, prefix, consumer="submitter")
        reader = redis_store(redis_server, prefix, consumer="reader")
        await submitter.open()
        job = await submitter.create(job_record(), [ItemSpec("a.png"), ItemSpec("b.png")])
        first, second = await reader.take(2)
        assert await submitter.set_status(job.id, "cancelled", 2.0)  # on another node
        cancelled, item = await reader.begin(first)
        assert (cancelled.status, item.state, item.attempts) == ("cancelled", "queued", 0)
        assert not await reader.finish(first, None, now=3.0)  # nothing recorded, acked
        # An item read before the cancel is still recorded (it was in flight: it is kept).
        await reader.begin(second)
        outcome = ItemOutcome(1, 1, result={"text": "b"}, finished_at=2.5)
        assert not await reader.finish(second, outcome, now=3.0)  # cancelled stays cancelled
        stored = await reader.get(job.id)
        assert (stored.status, stored.done, stored.finished_at) == ("cancelled", 1, 2.0)
        assert await reader.client.xlen(reader.stream_key) == 0
        assert (await reader.client.xpending(reader.stream_key, GROUP))["pending"] == 0
        for store in (submitter, reader):
            await close(store)

    run(scenario)


def test_a_job_of_no_items_is_completed_on_request(redis_server):
    async def scenario() -> None:
        store = redis_store(redis_server)
        await store.open()
        job = await store.create(job_record(), [])
        assert await store.complete_if_finished(job.id, 5.0)
        assert (await store.get(job.id)).status == "done"
        assert not await store.complete_if_finished(job.id, 6.0)
        await close(store)

    run(scenario)


def test_an_unreachable_redis_is_store_unavailable_a_503_with_retry_after(tmp_path):
    async def scenario() -> None:
        server = RedisServer(tmp_path / "redis")
        server.start()
        store = redis_store(server)
        await store.open()
        job = await store.create(job_record(), [ItemSpec("a.png")])
        server.stop()
        with pytest.raises(StoreUnavailable) as raised:
            await store.get(job.id)
        with pytest.raises(StoreUnavailable):
            await store.take(1)
        info = error_info(raised.value)
        assert info.code == "store_unavailable" and "redis" in info.message
        kind = CATALOGUE["store_unavailable"]
        assert kind.status == 503 and kind.retry_after >= 1
        await close(store)

    run(scenario)
