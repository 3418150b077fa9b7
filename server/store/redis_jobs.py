"""Folder jobs in Redis (DESIGN.md, "Scale-out"): the `JobStore` every node of a cluster shares,
and the Redis Stream through which the nodes share the work.

The store. Same contract as `SqliteJobStore` (the contract tests run on both): every write is
done by Redis before the method returns, `record` is idempotent (only a queued item is ever
finished), a job's counters move in the same atomic step (a Lua script) as the items they
count. How long a write survives a crash of Redis itself is Redis's persistence setting
(appendonly, appendfsync: docs/DEPLOY.md), not this module's. Keys (`prefix` first, then):

    j:<id>              hash    the job row (strings; None = the field is absent)
    j:<id>:meta         hash    item -> JSON [file, size, mtime_ns]
    j:<id>:state        hash    item -> q | d | f
    j:<id>:tries        hash    item -> reads started
    j:<id>:out          hash    item -> JSON outcome (result or error, finished_at)
    j:<id>:queued       zset    queued items (score 0: ordered by name)
    j:<id>:finished     zset    finished items (the same)
    j:<id>:recent       zset    finished items by finished_at
    j:<id>:zip          hash    seq -> the bytes of a ZIP job's entry (what one node spooled to
                                its disk before; now every node reads it)
    jobs:all            zset    job ids by created_at (the list, newest first)
    jobs:live           zset    queued and running job ids by created_at
    jobs:ended          zset    finished job ids by finished_at (retention)
    jobs:fp:<digest>    string  the job id of a fingerprint (identical re-submissions)
    jobs:enqueueing     set     jobs whose items' stream entries are still being added
    jobs:stream         stream  one entry per item to read: {j: job id, s: seq, p: page}

An item's name is "SSSSSSSSSS:PPPPPPPPPP", seq and page zero-padded, so lexical order is
(seq, page) order and a page of results is one ZRANGEBYLEX.

Lua reaches keys it derives from the prefix, so the store needs one Redis (or a primary with
replicas), not Redis Cluster.

The stream. Each node is a consumer of one group ("runners"): it takes as many entries as it
has free item slots (XREADGROUP), reads each item through its own OcrService at background
priority, records the outcome and acknowledges (XACK + XDEL) the entry in the same script, so
an entry is acknowledged only once its item is recorded. While it reads, the node re-claims
its own entries every claim_idle/4 seconds (XCLAIM JUSTID resets their idle time), so only the
entries of a node that stopped (kill -9, a lost network) go idle; after `claim_idle` seconds
any node takes them over (XAUTOCLAIM) and reads them again: a read interrupted by a crash is
started again, and recording it twice changes nothing. The node that records a job's last
item marks the job done in that same script. A consumer's name is stable across restarts
(host and port), so a restarted node first takes back what it held.

Failures: a Redis that cannot be reached raises `StoreUnavailable` (code store_unavailable:
503 with Retry-After); the runner waits and goes on when Redis answers, an outcome it could not
record is kept and recorded then, and an entry it never acknowledged is still in the stream.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ApiError, ErrorInfo
from . import FINISHED_STATUSES, ItemOutcome, ItemSpec, JobItem, JobRecord

log = logging.getLogger("ppocr.store")

GROUP = "runners"
ORPHAN_TTL_S = 3600  # a ZIP's entries or a job's items whose job was never published
CHUNK = 1000  # items written (or entries added) per round trip when a job is created
_LIVE = ("queued", "running", "done")
_INT_FIELDS = ("total", "dpi", "skipped_symlinks", "done", "failed", "cached")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at")
_STR_FIELDS = ("id", "fingerprint", "source", "name", "location", "options", "model", "status",
               "pdf_text", "error")


class StoreUnavailable(ApiError):
    """Redis cannot be reached, or refused the command: the job store cannot answer now (a
    503 with Retry-After, logged as one line: an outage, not a bug)."""

    def __init__(self, message: str) -> None:
        super().__init__("store_unavailable", message)


@dataclass(frozen=True)
class StreamEntry:
    """An item to read, as the stream holds it."""

    id: str  # the stream entry's id
    job_id: str
    seq: int
    page: int


def item_name(seq: int, page: int) -> str:
    """The item's name in the job's hashes and sorted sets: lexical order is (seq, page)."""
    return f"{seq:010d}:{page:010d}"


def _parse_name(name: bytes | str) -> tuple[int, int]:
    text = name.decode() if isinstance(name, bytes) else name
    seq, page = text.split(":")
    return int(seq), int(page)


def _after(after: tuple[int, int]) -> str:
    """ZRANGEBYLEX's exclusive lower bound for items after (seq, page)."""
    seq, page = after
    if seq < 0:
        return "-"
    if page < 0:
        return "[" + item_name(seq, 0)
    return "(" + item_name(seq, page)


# ---------------------------------------------------------------- Lua

# A new job is written in three steps, so that no script runs long (Redis runs one script at
# a time: every node's cache waits behind it) however many items the job has:
# 1. its items, CHUNK at a time, under keys no one knows yet (they expire unless step 2 keeps
#    them: a node that died here leaves nothing behind);
# 2. PUBLISH, atomic: the job row, unless the fingerprint answers with a live job;
# 3. ENQUEUE, CHUNK at a time: the items' stream entries. Each chunk is a compare-and-set on
#    the row's `enqueued` (items 0..enqueued-1 have entries), so any node may finish what a
#    node that died in step 3 began (`finish_enqueueing`), and no entry is ever added twice.

# publish: KEYS job, meta, state, queued, all, live, fp, zip, enqueueing
# ARGV prefix, id, created_at, n_fields, (field, value)*
# Returns the id of the job the fingerprint answers with (this one, or a live one).
_PUBLISH = """
local existing = redis.call('GET', KEYS[7])
if existing then
  local status = redis.call('HGET', ARGV[1] .. 'j:' .. existing, 'status')
  if status == 'queued' or status == 'running' or status == 'done' then return existing end
end
local id = ARGV[2]
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 2, 4 do redis.call('PERSIST', KEYS[k]) end
redis.call('PERSIST', KEYS[8])
redis.call('ZADD', KEYS[5], ARGV[3], id)
redis.call('ZADD', KEYS[6], ARGV[3], id)
redis.call('SET', KEYS[7], id)
if tonumber(redis.call('HGET', KEYS[1], 'files')) > 0 then redis.call('SADD', KEYS[9], id) end
return id
"""

# enqueue: KEYS job, stream, enqueueing; ARGV id, from, to
# Adds the entries of items (from..to-1, page 1) if `enqueued` is `from`; returns `enqueued`.
_ENQUEUE = """
local enqueued = tonumber(redis.call('HGET', KEYS[1], 'enqueued') or '-1')
if enqueued ~= tonumber(ARGV[2]) then return enqueued end
local to = math.min(tonumber(ARGV[3]), tonumber(redis.call('HGET', KEYS[1], 'files')))
for seq = enqueued, to - 1 do
  redis.call('XADD', KEYS[2], '*', 'j', ARGV[1], 's', seq, 'p', 1)
end
redis.call('HSET', KEYS[1], 'enqueued', to)
if to >= tonumber(redis.call('HGET', KEYS[1], 'files')) then
  redis.call('SREM', KEYS[3], ARGV[1])
end
return to
"""

# set_status: KEYS job, live, ended, zip; ARGV id, status, at, error ('' none), retention
# Returns 1 when the job moved (it was queued or running), else 0.
_SET_STATUS = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
local new = ARGV[2]
redis.call('HSET', KEYS[1], 'status', new)
if new == 'running' then
  if redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
    redis.call('HSET', KEYS[1], 'started_at', ARGV[3])
  end
  redis.call('HDEL', KEYS[1], 'finished_at')
elseif new ~= 'queued' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[4], ARGV[5])
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
return 1
"""

# add_pages: KEYS job, meta, state, queued, stream; ARGV id, seq, pages, max_total
# Returns how many items were added, or -1 when the total would pass max_total.
_ADD_PAGES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seq, pages, max_total = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local first = redis.call('HGET', KEYS[2], string.format('%010d:%010d', seq, 1))
if not first then return 0 end
if pages > max_total then return -1 end
local missing = {}
for page = 2, pages do
  local name = string.format('%010d:%010d', seq, page)
  if redis.call('HEXISTS', KEYS[2], name) == 0 then missing[#missing + 1] = page end
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if total + #missing > max_total then return -1 end
for _, page in ipairs(missing) do
  local name = string.format('%010d:%010d', seq, page)
  redis.call('HSET', KEYS[2], name, first)
  redis.call('HSET', KEYS[3], name, 'q')
  redis.call('ZADD', KEYS[4], 0, name)
  redis.call('XADD', KEYS[5], '*', 'j', ARGV[1], 's', seq, 'p', page)
end
redis.call('HINCRBY', KEYS[1], 'total', #missing)
return #missing
"""

# record (one job): KEYS job, state, tries, out, queued, finished, recent, live, ended, stream,
# zip; ARGV id, group, complete (0/1), now, retention, n_started, name*, n_finished,
# (name, kind d|f, cached 0|1, outcome JSON, finished_at)*, n_acks, entry id*
# Returns 1 when this write finished the job (complete=1 and no item left), else 0.
_RECORD = """
local exists = redis.call('EXISTS', KEYS[1]) == 1
local i = 6
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  if exists and redis.call('HGET', KEYS[2], ARGV[i]) == 'q' then
    redis.call('HINCRBY', KEYS[3], ARGV[i], 1)
  end
  i = i + 1
end
local done, failed, cached = 0, 0, 0
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local name = ARGV[i]
  if exists and redis.call('HGET', KEYS[2], name) == 'q' then
    redis.call('HSET', KEYS[2], name, ARGV[i + 1])
    redis.call('HSET', KEYS[4], name, ARGV[i + 3])
    redis.call('ZREM', KEYS[5], name)
    redis.call('ZADD', KEYS[6], 0, name)
    redis.call('ZADD', KEYS[7], ARGV[i + 4], name)
    if ARGV[i + 1] == 'd' then
      done = done + 1
      if ARGV[i + 2] == '1' then cached = cached + 1 end
    else
      failed = failed + 1
    end
  end
  i = i + 5
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('XACK', KEYS[10], ARGV[2], ARGV[i])
  redis.call('XDEL', KEYS[10], ARGV[i])
  i = i + 1
end
if not exists then return 0 end
if done > 0 then redis.call('HINCRBY', KEYS[1], 'done', done) end
if failed > 0 then redis.call('HINCRBY', KEYS[1], 'failed', failed) end
if cached > 0 then redis.call('HINCRBY', KEYS[1], 'cached', cached) end
if ARGV[3] ~= '1' then return 0 end
local row = redis.call('HMGET', KEYS[1], 'status', 'total', 'done', 'failed')
if row[1] ~= 'queued' and row[1] ~= 'running' then return 0 end
if tonumber(row[3]) + tonumber(row[4]) < tonumber(row[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'done', 'finished_at', ARGV[4])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('ZADD', KEYS[9], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[11], ARGV[5])
return 1
"""

# begin (an item taken from the stream): KEYS job, meta, state, tries; ARGV name
# Returns {} when the job is gone, else {job row (HGETALL), meta, state, attempts}; a queued
# item of an unfinished job counts a started read.
_BEGIN = """
local row = redis.call('HGETALL', KEYS[1])
if #row == 0 then return {} end
local meta = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local state = redis.call('HGET', KEYS[3], ARGV[1]) or ''
local status = redis.call('HGET', KEYS[1], 'status')
local tries
if state == 'q' and (status == 'queued' or status == 'running') then
  tries = redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
else
  tries = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
end
return {row, meta, state, tries}
"""

# delete: KEYS all, live, ended, enqueueing, the job's keys (the row first)...
# ARGV id, prefix. Returns 1 when the job existed. UNLINK: a big job's hashes are freed in
# the background, not while every node waits.
_DELETE = """
local existed = redis.call('EXISTS', KEYS[5])
local fp = redis.call('HGET', KEYS[5], 'fingerprint')
if fp then
  local fp_key = ARGV[2] .. 'jobs:fp:' .. fp
  if redis.call('GET', fp_key) == ARGV[1] then redis.call('DEL', fp_key) end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
for k = 5, #KEYS do redis.call('UNLINK', KEYS[k]) end
return existed
"""


class RedisJobStore:
    """`JobStore` in Redis, under `prefix`, and the nodes' shared work stream.

    `client` is this store's own `redis.asyncio.Redis`: its socket timeout bounds every call,
    and must exceed `block_s` (a stream read blocks that long) and the longest script (a new
    job writes all its items at once: ~1 s per 100,000). `consumer` names this node in the
    group (stable across its restarts); `claim_idle` is how long another node's taken entry
    may go unrefreshed before this node takes it over; `retention` (jobs.retention) is set
    as the expiry of a finished ZIP job's entries (the job itself is deleted by the runner's
    retention sweep, from any node). `close_client`: `close` closes the client too.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "ppocr:", *,
                 consumer: str = "node", claim_idle: float = 60.0,
                 retention: float = 7 * 86400.0, block_s: float = 1.0,
                 close_client: bool = False) -> None:
        self.client = client
        self._close_client = close_client
        self.prefix = prefix
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.retention = retention
        self.block_s = block_s
        self.stream_key = prefix + "jobs:stream"
        self._all, self._live = prefix + "jobs:all", prefix + "jobs:live"
        self._ended = prefix + "jobs:ended"
        self._enqueueing = prefix + "jobs:enqueueing"  # jobs whose entries are being added
        self._publish = client.register_script(_PUBLISH)
        self._enqueue = client.register_script(_ENQUEUE)
        self._set_status = client.register_script(_SET_STATUS)
        self._add_pages = client.register_script(_ADD_PAGES)
        self._record = client.register_script(_RECORD)
        self._begin = client.register_script(_BEGIN)
        self._delete = client.register_script(_DELETE)

    # -- keys -----------------------------------------------------------------------------

    def _job(self, job_id: str, part: str = "") -> str:
        return f"{self.prefix}j:{job_id}{':' + part if part else ''}"

    def _fp(self, fingerprint: str) -> str:
        return f"{self.prefix}jobs:fp:{fingerprint}"

    def _job_keys(self, job_id: str) -> list[str]:
        return [self._job(job_id)] + [self._job(job_id, part) for part in (
            "meta", "state", "tries", "out", "queued", "finished", "recent", "zip")]

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Creates the consumer group (and the stream) unless they exist. Redis down at
        start is not fatal: the runner creates the group once it answers."""
        try:
            await self.ensure_group()
        except StoreUnavailable as exc:
            log.warning("the job store in redis is unavailable at start (%s); jobs wait for "
                        "it", exc)

    async def close(self) -> None:
        """Closes the client if it was given to the store to close (`close_client`)."""
        if self._close_client:
            await self.client.aclose()

    async def ensure_group(self) -> None:
        # From id 0: entries added before the group existed are read too.
        try:
            await self._call(self.client.xgroup_create(self.stream_key, GROUP, id="0",
                                                       mkstream=True))
        except StoreUnavailable as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _call(self, operation: Any) -> Any:
        try:
            return await operation
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"the job store (redis) cannot be reached: "
                                   f"{type(exc).__name__}") from exc
        except RedisError as exc:
            raise StoreUnavailable(f"the job store (redis) refused the command: "
                                   f"{str(exc)[:120]}") from exc

    # -- JobStore ---------------------------------------------------------------------------

    async def create(self, job: JobRecord, items: list[ItemSpec]) -> JobRecord:
        meta, state, queued = (self._job(job.id, part) for part in ("meta", "state", "queued"))
        for first in range(0, len(items), CHUNK):
            names = [item_name(seq, 1) for seq in range(first, min(first + CHUNK,
                                                                   len(items)))]
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(meta, mapping={name: json.dumps(
                [item.file, item.size, item.mtime_ns], ensure_ascii=False)
                for name, item in zip(names, items[first:first + CHUNK], strict=True)})
            pipe.hset(state, mapping=dict.fromkeys(names, "q"))
            pipe.zadd(queued, dict.fromkeys(names, 0))
            for key in (meta, state, queued):
                pipe.expire(key, ORPHAN_TTL_S)
            await self._call(pipe.execute())
        fields = _encode_job(job)
        fields.update(total=str(len(items)), files=str(len(items)), enqueued="0")
        args: list[Any] = [self.prefix, job.id, repr(job.created_at), len(fields)]
        for name, value in fields.items():
            args += [name, value]
        keys = [self._job(job.id), meta, state, queued, self._all, self._live,
                self._fp(job.fingerprint), self._job(job.id, "zip"), self._enqueueing]
        job_id = (await self._call(self._publish(keys=keys, args=args))).decode()
        if job_id != job.id:  # an identical job answers: what step 1 wrote goes
            await self._call(self.client.unlink(meta, state, queued))
        else:
            await self._enqueue_items(job.id, 0, len(items))
        return await self.get(job_id)

    async def _enqueue_items(self, job_id: str, enqueued: int, files: int) -> None:
        while enqueued < files:
            reached = await self._call(self._enqueue(
                keys=[self._job(job_id), self.stream_key, self._enqueueing],
                args=[job_id, enqueued, enqueued + CHUNK]))
            if reached < 0 or reached < enqueued:
                return  # the job was deleted meanwhile
            enqueued = max(reached, enqueued)

    async def finish_enqueueing(self) -> int:
        """Adds the stream entries a node that died while creating a job did not add (any
        node may; the compare-and-set keeps every entry single); how many jobs it resumed."""
        resumed = 0
        for raw in await self._call(self.client.smembers(self._enqueueing)):
            job_id = raw.decode()
            enqueued, files = await self._call(self.client.hmget(self._job(job_id),
                                                                 ["enqueued", "files"]))
            if enqueued is None or files is None:
                await self._call(self.client.srem(self._enqueueing, job_id))
                continue
            if int(enqueued) < int(files):
                await self._enqueue_items(job_id, int(enqueued), int(files))
                resumed += 1
        return resumed

    async def find(self, fingerprint: str) -> JobRecord | None:
        job_id = await self._call(self.client.get(self._fp(fingerprint)))
        if job_id is None:
            return None
        job = await self.get(job_id.decode())
        return job if job is not None and job.status in _LIVE else None

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self._call(self.client.hgetall(self._job(job_id)))
        return _decode_job(row) if row else None

    async def _jobs(self, ids: Iterable[bytes | str]) -> list[JobRecord]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._job(job_id.decode() if isinstance(job_id, bytes) else job_id))
        rows = await self._call(pipe.execute())
        return [_decode_job(row) for row in rows if row]  # deleted meanwhile: left out

    async def page(self, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self._all)
        pipe.zrevrange(self._all, offset, offset + limit - 1)
        total, ids = await self._call(pipe.execute())
        return await self._jobs(ids), total

    async def unfinished(self) -> list[JobRecord]:
        return await self._jobs(await self._call(self.client.zrange(self._live, 0, -1)))

    async def set_status(self, job_id: str, status: str, at: float,
                         error: str | None = None) -> bool:
        keys = [self._job(job_id), self._live, self._ended, self._job(job_id, "zip")]
        args = [job_id, status, repr(at), error or "", max(1, math.ceil(self.retention))]
        return bool(await self._call(self._set_status(keys=keys, args=args)))

    async def pending(self, job_id: str, after: tuple[int, int], limit: int
                      ) -> list[JobItem]:
        names = await self._call(self.client.zrangebylex(
            self._job(job_id, "queued"), _after(after), "+", start=0, num=limit))
        return await self._items(job_id, names)

    async def add_pages(self, job_id: str, seq: int, pages: int, max_total: int
                        ) -> int | None:
        keys = [self._job(job_id), self._job(job_id, "meta"), self._job(job_id, "state"),
                self._job(job_id, "queued"), self.stream_key]
        added = await self._call(self._add_pages(keys=keys,
                                                 args=[job_id, seq, pages, max_total]))
        return None if added < 0 else added

    async def record(self, started: list[tuple[str, int, int]],
                     finished: list[tuple[str, ItemOutcome]]) -> None:
        by_job: dict[str, tuple[list, list]] = {}
        for job_id, seq, page in started:
            by_job.setdefault(job_id, ([], []))[0].append(item_name(seq, page))
        for job_id, outcome in finished:
            by_job.setdefault(job_id, ([], []))[1].append(outcome)
        if not by_job:
            return
        # One script per job (each atomic); the jobs' scripts go in one round trip.
        pipe = self.client.pipeline(transaction=False)
        for job_id, (names, outcomes) in by_job.items():
            await self._record_call(job_id, names, outcomes, [], False, 0.0, pipe)
        await self._call(pipe.execute())

    async def items(self, job_id: str, after: tuple[int, int], limit: int) -> list[JobItem]:
        names = await self._call(self.client.zrangebylex(
            self._job(job_id, "finished"), _after(after), "+", start=0, num=limit))
        return await self._items(job_id, names)

    async def recent(self, job_id: str, limit: int) -> list[JobItem]:
        # Ties in finished_at come out by name, descending: (seq, page) descending.
        names = await self._call(self.client.zrevrange(self._job(job_id, "recent"), 0,
                                                       limit - 1))
        return await self._items(job_id, names)

    async def delete(self, job_id: str) -> bool:
        keys = [self._all, self._live, self._ended, self._enqueueing, *self._job_keys(job_id)]
        return bool(await self._call(self._delete(keys=keys, args=[job_id, self.prefix])))

    async def expired(self, finished_before: float) -> list[JobRecord]:
        ids = await self._call(self.client.zrangebyscore(self._ended, "-inf",
                                                         f"({finished_before!r}"))
        return await self._jobs(ids)

    async def _items(self, job_id: str, names: list[bytes]) -> list[JobItem]:
        if not names:
            return []
        pipe = self.client.pipeline(transaction=False)
        for part in ("meta", "state", "tries", "out"):
            pipe.hmget(self._job(job_id, part), names)
        metas, states, tries, outs = await self._call(pipe.execute())
        items = []
        for name, meta, state, attempts, out in zip(names, metas, states, tries, outs,
                                                    strict=True):
            if meta is None or state is None:
                continue  # deleted meanwhile
            items.append(_decode_item(name, meta, state, attempts, out))
        return items

    async def _record_call(self, job_id: str, names: list[str], outcomes: list[ItemOutcome],
                           acks: list[str], complete: bool, now: float, pipe: Any = None
                           ) -> Any:
        keys = [self._job(job_id)] + [self._job(job_id, part) for part in (
            "state", "tries", "out", "queued", "finished", "recent")] + [
            self._live, self._ended, self.stream_key, self._job(job_id, "zip")]
        args: list[Any] = [job_id, GROUP, "1" if complete else "0", repr(now),
                           max(1, math.ceil(self.retention)), len(names), *names,
                           len(outcomes)]
        for outcome in outcomes:
            args += [item_name(outcome.seq, outcome.page),
                     "f" if outcome.error is not None else "d",
                     "1" if outcome.cached and outcome.error is None else "0",
                     _encode_outcome(outcome), repr(outcome.finished_at)]
        args += [len(acks), *acks]
        if pipe is not None:
            return await self._record(keys=keys, args=args, client=pipe)
        return await self._call(self._record(keys=keys, args=args))

    # -- ZIP entries ------------------------------------------------------------------------

    async def put_archive_entries(self, job_id: str, entries: list[tuple[int, bytes]]
                                  ) -> None:
        """Stores a ZIP job's entries (seq -> bytes) before the job is created, so that any
        node can read them. Until `create` keeps them they expire in ORPHAN_TTL_S (a node
        that died mid-upload leaves nothing behind); they expire `retention` after the job
        finishes."""
        if entries:
            key = self._job(job_id, "zip")
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping={str(seq): data for seq, data in entries})
            pipe.expire(key, ORPHAN_TTL_S)
            await self._call(pipe.execute())

    async def archive_entry(self, job_id: str, seq: int) -> bytes | None:
        return await self._call(self.client.hget(self._job(job_id, "zip"), str(seq)))

    async def drop_archive(self, job_id: str) -> None:
        await self._call(self.client.delete(self._job(job_id, "zip")))

    # -- the stream -------------------------------------------------------------------------

    async def take(self, count: int) -> list[StreamEntry]:
        """Up to `count` entries no node has taken yet, waiting at most block_s for one."""
        try:
            reply = await self._call(self.client.xreadgroup(
                GROUP, self.consumer, {self.stream_key: ">"}, count=count,
                block=max(1, int(self.block_s * 1000))))
        except StoreUnavailable as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # Redis lost the group (restarted without persistence)
            return []
        return [entry for _stream, messages in reply or [] for entry in _entries(messages)]

    async def held(self, count: int) -> list[StreamEntry]:
        """The entries this consumer took and never acknowledged (a restart takes them
        back at once instead of waiting claim_idle for another node to)."""
        reply = await self._call(self.client.xreadgroup(
            GROUP, self.consumer, {self.stream_key: "0"}, count=count))
        return [entry for _stream, messages in reply or [] for entry in _entries(messages)]

    async def reclaim(self, count: int) -> list[StreamEntry]:
        """Up to `count` entries another node took over claim_idle ago and has not
        refreshed since (it stopped): now this node's."""
        reply = await self._call(self.client.xautoclaim(
            self.stream_key, GROUP, self.consumer, int(self.claim_idle * 1000), "0-0",
            count=count))
        return list(_entries(reply[1]))

    async def refresh(self, entry_ids: list[str]) -> None:
        """Resets the idle time of entries this node is reading (none is taken over)."""
        if entry_ids:
            await self._call(self.client.xclaim(self.stream_key, GROUP, self.consumer, 0,
                                                entry_ids, justid=True))

    async def begin(self, entry: StreamEntry) -> tuple[JobRecord | None, JobItem | None]:
        """The entry's job and item, counting the read as started when the item is queued
        and the job unfinished. (None, None): the job is gone."""
        name = item_name(entry.seq, entry.page)
        keys = [self._job(entry.job_id)] + [self._job(entry.job_id, part)
                                            for part in ("meta", "state", "tries")]
        reply = await self._call(self._begin(keys=keys, args=[name]))
        if not reply:
            return None, None
        row, meta, state, attempts = reply
        job = _decode_job(dict(zip(row[::2], row[1::2], strict=True)))
        if not meta or not state:
            return job, None
        return job, _decode_item(name.encode(), meta, state, attempts, None)

    async def finish(self, entry: StreamEntry, outcome: ItemOutcome | None, now: float
                     ) -> bool:
        """Records the entry's outcome (None: nothing to record, the entry is dropped) and
        acknowledges the entry, atomically; True when that finished the job (marked done)."""
        outcomes = [outcome] if outcome is not None else []
        return bool(await self._record_call(entry.job_id, [], outcomes, [entry.id], True, now))

    async def complete_if_finished(self, job_id: str, now: float) -> bool:
        """Marks an unfinished job with no item left done (a job of no items)."""
        return bool(await self._record_call(job_id, [], [], [], True, now))


def _entries(messages: Any) -> Iterable[StreamEntry]:
    for entry_id, fields in messages or []:
        if not fields:
            continue  # deleted from the stream while pending (acknowledged elsewhere)
        try:
            yield StreamEntry(entry_id.decode(), fields[b"j"].decode(), int(fields[b"s"]),
                              int(fields[b"p"]))
        except (KeyError, ValueError, UnicodeDecodeError):
            log.warning("malformed job stream entry %r: ignored", entry_id)


# ---------------------------------------------------------------- encoding

def _encode_job(job: JobRecord) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name in (*_STR_FIELDS, *_INT_FIELDS, *_FLOAT_FIELDS):
        value = getattr(job, name)
        if value is None:
            continue
        fields[name] = repr(value) if isinstance(value, float) else str(value)
    return fields


def _decode_job(row: dict) -> JobRecord:
    values: dict[str, Any] = {}
    for raw_name, raw in row.items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if name in _INT_FIELDS:
            values[name] = int(text)
        elif name in _FLOAT_FIELDS:
            values[name] = float(text)
        elif name in _STR_FIELDS:
            values[name] = text
    return JobRecord(**values)


def _encode_outcome(outcome: ItemOutcome) -> str:
    body: dict[str, Any] = {"t": outcome.finished_at}
    if outcome.error is not None:
        body["e"] = [outcome.error.code, outcome.error.message]
    else:
        body["c"] = bool(outcome.cached)
        body["r"] = outcome.result
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


_STATES = {b"q": "queued", b"d": "done", b"f": "failed"}


def _decode_item(name: bytes, meta: bytes, state: bytes, attempts: Any, out: bytes | None
                 ) -> JobItem:
    seq, page = _parse_name(name)
    file = json.loads(meta)[0]
    result = error = finished_at = None
    cached = False
    if out is not None:
        body = json.loads(out)
        finished_at = body.get("t")
        if "e" in body:
            error = ErrorInfo(body["e"][0], body["e"][1])
        else:
            cached, result = bool(body.get("c")), body.get("r")
    return JobItem(seq=seq, file=file, page=page, state=_STATES.get(bytes(state), "queued"),
                   attempts=int(attempts or 0), cached=cached, result=result, error=error,
                   finished_at=finished_at)


__all__ = ["RedisJobStore", "StoreUnavailable", "StreamEntry", "GROUP", "item_name",
           "FINISHED_STATUSES"]
