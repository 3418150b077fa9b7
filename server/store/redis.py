"""Redis as the nodes' shared state (DESIGN.md, "Scale-out"): the link to Redis, the shared
result cache (with an in-process L1 in front) and the task mirror that lets any node answer
GET /ocr_service/<id> for a task another node accepted. Cross-node in-flight sharing (claims)
is server/cluster.py; folder-job streams build on the same `RedisLink`.

Threading and failure model. Everything runs on the IOLoop thread, over one
`redis.asyncio.Redis` client (one connection pool) per node. Every command goes through
`RedisLink.call`, which bounds it by `timeout` and turns any failure into the caller's
fallback value: a Redis outage never raises into a request. A connection failure or a timeout
marks the link down (`available` False, `degraded` says why; one log line), and from then on
`call` answers the fallback at once without touching the network, so a dead Redis costs a
request nothing. The link's own loop pings every `check_interval` seconds, whether up or down;
the first ping that answers after an outage marks it up again (one log line) once the pool's
stale connections are dropped. redis-py's own retries are off: retrying is this loop's job, and
a request never waits for it.

While the link is down the stores fall back to this node's memory: the result cache to its L1
(which then is the node's whole cache, as without Redis), tasks to the node's own task store
(which is always written first; Redis only mirrors it). What was written only locally while
Redis was down stays local: a task accepted then is readable on the node that accepted it.

Keys are `prefix` + a kind + the id: `<prefix>r:<request key>` (a result's encoded body),
`<prefix>t:<task id>` (a task), `<prefix>c:<request key>` (a claim, cluster.py). Every key has
an expiry, so Redis's `maxmemory-policy allkeys-lru` (docs/DEPLOY.md) bounds the memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ErrorInfo
from . import Outcome, SpooledRequest, TaskState, TaskStore, encode_result
from .memory import MemoryResultCache

log = logging.getLogger("ppocr.redis")

T = TypeVar("T")
F = TypeVar("F")

# Failures that mean "Redis cannot be reached now" (the link goes down), as opposed to a
# command Redis refused (out of memory under noeviction, a wrong type): that call falls back,
# the link stays up.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)


def redacted(url: str) -> str:
    """The URL without its password, for logs and /ready."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


class RedisLink:
    """One node's connection to Redis: the client, whether Redis answers now, and the loop
    that finds out when it answers again.

    API (shared with server/jobs' Redis streams; keep it stable):
    - `client`: the `redis.asyncio.Redis` (bytes replies, no retries, socket timeouts =
      `timeout`); use it only inside `call`;
    - `key(*parts)`: `prefix` + the parts joined by ":" (`key("r", k)` -> "ppocr:r:<k>");
    - `available` / `degraded`: up, or the reason it is down ("connecting" before the first
      answer); `await start()` pings once (never raises) and starts the watch loop;
      `await close()` stops it and closes the pool;
    - `await call(awaitable, fallback)`: the awaitable's value, or `fallback` when the link is
      down (the awaitable is then closed unawaited), the call fails or takes over `timeout`;
    - `on_change(listener)`: `listener(available)` after each transition (IOLoop thread);
    - `await until_available()`: returns once the link is up (loops that need a connection);
    - `mark_down(reason)`: for a caller that found the connection broken outside `call`
      (a pub/sub reader, a blocking stream read).
    """

    def __init__(self, url: str, *, prefix: str = "ppocr:", timeout: float = 0.5,
                 check_interval: float = 1.0, client: aioredis.Redis | None = None) -> None:
        self.url = redacted(url)
        self.prefix = prefix
        self.timeout = timeout
        self.check_interval = check_interval
        # The pool is not capped: a capped one answers "too many connections" under a burst,
        # which would read as an outage. A connection is held only for one command's round
        # trip, so the number open is the number of commands in flight at once.
        self.client: aioredis.Redis = client or aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
            client_name="ppocr-server")
        self.available = False
        self.degraded: str | None = "connecting"
        self.failures = 0  # calls that fell back because Redis could not be reached
        self.refusals = 0  # commands Redis answered with an error
        self.outages = 0  # transitions to down
        self._listeners: list[Callable[[bool], None]] = []
        self._up = asyncio.Event()
        self._watcher: asyncio.Task | None = None
        # Set by close: the loops stop at their next turn even where redis-py turned the
        # cancellation into a connection error (it does, mid-connect).
        self.closed = False
        self._reset_pool = False  # drop the pooled connections before the next ping
        self._logged_down = False
        self._last_refusal_log = 0.0

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Pings once (a Redis down at start leaves the node degraded, never stopped) and
        starts the watch loop."""
        await self._check()
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        self.closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        with contextlib.suppress(Exception):
            await self.client.aclose()

    async def until_available(self) -> None:
        await self._up.wait()

    async def call(self, operation: Awaitable[T], fallback: F = None) -> T | F:
        if not self.available:
            _close_unawaited(operation)
            self.failures += 1
            return fallback
        try:
            return await asyncio.wait_for(operation, self.timeout)
        except _UNREACHABLE as exc:
            self.failures += 1
            self.mark_down(_describe(exc))
            return fallback
        except RedisError as exc:
            self.refusals += 1
            now = time.monotonic()
            if now - self._last_refusal_log > 60:  # at most a line a minute
                self._last_refusal_log = now
                log.warning("redis refused a command (%s); this node answers from its own "
                            "memory for it", _describe(exc))
            return fallback

    def mark_down(self, reason: str) -> None:
        if not self.available:
            self.degraded = reason
            return
        self.available = False
        self.degraded = reason
        self.outages += 1
        self._up.clear()
        self._reset_pool = True
        if not self._logged_down:
            self._logged_down = True
            log.warning("redis at %s is unavailable (%s): this node serves on its own (its "
                        "memory cache and task store, no cross-node sharing) until it is back",
                        self.url, reason)
        self._notify(False)

    def stats(self) -> dict:
        return {"redis": "ok" if self.available else "degraded",
                **({} if self.available else {"redis_degraded": self.degraded})}

    # -- the watch loop -------------------------------------------------------------------

    async def _watch(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.check_interval)
            await self._check()

    async def _check(self) -> None:
        if self._reset_pool:
            self._reset_pool = False
            with contextlib.suppress(Exception):
                await self.client.connection_pool.disconnect()
        try:
            await asyncio.wait_for(self.client.ping(), self.timeout)
        except (RedisError, *_UNREACHABLE) as exc:
            if self.available:
                self.mark_down(_describe(exc))
            else:
                self.degraded = _describe(exc)
                if not self._logged_down:  # down from the start
                    self._logged_down = True
                    log.warning("redis at %s is unavailable (%s): this node serves on its "
                                "own until it answers", self.url, self.degraded)
            return
        if not self.available:
            self.available = True
            self.degraded = None
            self._up.set()
            if self._logged_down:
                self._logged_down = False
                log.info("redis at %s answers again: shared cache, tasks and cross-node "
                         "sharing resume", self.url)
            self._notify(True)

    def _notify(self, available: bool) -> None:
        for listener in self._listeners:
            try:
                listener(available)
            except Exception:  # noqa: BLE001 - one listener must not stop the others
                log.exception("redis link listener failed")


def _describe(exc: BaseException) -> str:
    text = str(exc) or "no answer"
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        text = "no answer within the timeout"
    return f"{type(exc).__name__}: {text}"[:200]


def _close_unawaited(operation: Awaitable) -> None:
    # A coroutine never awaited warns at garbage collection; close it instead.
    close = getattr(operation, "close", None)
    if close is not None:
        close()
    elif isinstance(operation, asyncio.Future):
        operation.cancel()


# ---------------------------------------------------------------- the shared result cache

class RedisResultCache:
    """`ResultCache` in Redis (SET EX `ttl`) behind an in-process L1 (`MemoryResultCache`
    of `l1_size` entries, same TTL). Values are content-addressed (the key hashes the image
    and the options), so an L1 entry can never be stale, only expire early or late by the
    clock difference. While the link is down, L1 is the node's whole cache.

    `ttl` 0 (service.time 0) turns caching off, as in memory; `l1_size` 0 makes every get a
    round trip (the benchmark's "L1 miss")."""

    def __init__(self, link: RedisLink, ttl: float, l1_size: int,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._link = link
        self._ttl_ms = int(ttl * 1000)
        self.l1 = MemoryResultCache(l1_size, ttl, timer=timer)
        self.hits = self.misses = self.shared_hits = 0

    def _key(self, key: str) -> str:
        return self._link.key("r", key)

    async def get(self, key: str) -> bytes | None:
        if self._ttl_ms <= 0:
            self.misses += 1
            return None
        body = await self.l1.get(key)
        if body is None:
            body = await self._link.call(self._link.client.get(self._key(key)))
            if body is not None:
                self.shared_hits += 1
                await self.l1.put(key, body)
        if body is None:
            self.misses += 1
        else:
            self.hits += 1
        return body

    async def put(self, key: str, body: bytes) -> None:
        if self._ttl_ms <= 0:
            return
        await self.l1.put(key, body)
        await self._link.call(self._link.client.set(self._key(key), body, px=self._ttl_ms))

    def stats(self) -> dict:
        return {"cache_entries": self.l1.stats()["cache_entries"], "cache_hits": self.hits,
                "cache_misses": self.misses, "cache_shared_hits": self.shared_hits}


# ---------------------------------------------------------------- tasks readable on any node

# A task's record: one byte of kind, then its data. Pending: JSON progress (or "null"); done:
# the result as JSON; failed: the error as JSON ({"code", "message"}: details stay in the
# log of the node that ran it).
_PENDING, _DONE, _FAILED = b"P", b"D", b"F"
_MAX_UNSYNCED = 10_000


def encode_task(outcome: Outcome | None, progress: dict | None = None) -> bytes:
    if outcome is None:
        return _PENDING + json.dumps(progress, separators=(",", ":")).encode()
    if outcome.error is not None:
        return _FAILED + json.dumps({"code": outcome.error.code,
                                     "message": outcome.error.message},
                                    ensure_ascii=False, separators=(",", ":")).encode()
    return _DONE + (outcome.body if outcome.body is not None
                    else encode_result(outcome.result))


def decode_task(task_id: str, record: bytes) -> TaskState | None:
    kind, data = record[:1], record[1:]
    try:
        if kind == _PENDING:
            return TaskState(task_id, progress=json.loads(data))
        if kind == _FAILED:
            error = json.loads(data)
            return TaskState(task_id, Outcome(error=ErrorInfo(error["code"], error["message"])))
        if kind == _DONE:
            return TaskState(task_id, Outcome(result=json.loads(data), body=bytes(data)))
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("task %s: unreadable record in redis; treated as unknown", task_id)
    return None


class RedisTaskMirror:
    """A TaskStore (or LastingTaskStore) that is the node's own `local` store, mirrored to
    Redis so every node can read its tasks.

    The local store stays the truth for this node's tasks: it enforces `max_tasks`, keeps a
    lasting task's spooled request for restart-resume (SQLite: per node), and answers this
    node's own polls without a round trip, Redis up or down. Every write goes to it first,
    then to Redis (a write Redis missed is made again when it is back). `get` asks this
    node's stores (`node_stores`), then Redis.

    A pending record is a lease: it expires `lease` seconds after it was last written, and
    this node rewrites the expiry of its pending tasks every lease/3. So a task pending on a
    node that died reads 404 elsewhere once the lease ends (as on the node itself, for a single
    image's task: memory is gone), instead of pending forever. A lasting task comes back at the
    node's restart: `open` re-mirrors the unfinished tasks it resumes. A finished record
    expires `ttl` (service.task_ttl) after it finished.
    """

    def __init__(self, link: RedisLink, local: TaskStore, ttl: float,
                 lease: float = 30.0, node_stores: list[TaskStore] | None = None) -> None:
        self._link = link
        self.local = local
        # Every task store of this node (SharedState shares one list among its mirrors):
        # `get` asks all of them before Redis, so a task this node finished while Redis was
        # down never reads as the pending record Redis may still hold.
        self._node_stores = node_stores if node_stores is not None else [local]
        if local not in self._node_stores:
            self._node_stores.append(local)
        self._ttl_ms = int(ttl * 1000)
        self._lease_ms = int(lease * 1000)
        self._lease = lease
        self._mirrored: dict[str, dict | None] = {}  # pending ids mirrored -> progress
        # Tasks that finished while Redis was down: written at its return (at most
        # `_MAX_UNSYNCED`, the oldest dropped: they are readable on this node all the same).
        self._unsynced: dict[str, Outcome] = {}
        self._renewer: asyncio.Task | None = None
        self._stopped = False
        self._background: set[asyncio.Task] = set()
        link.on_change(self._link_changed)

    def _key(self, task_id: str) -> str:
        return self._link.key("t", task_id)

    # -- life cycle (a lasting local store's; a memory one has none) ------------------------

    async def open(self) -> None:
        opener = getattr(self.local, "open", None)
        if opener is not None:
            await opener()
        unfinished = getattr(self.local, "unfinished", None)
        if unfinished is not None:
            for task_id in await unfinished():
                self._mirrored[task_id] = None
            await self._write_pending(list(self._mirrored))
        self._start_renewing()

    def _start_renewing(self) -> None:
        # Lazily (at open, or at the first pending task): the store is built off the loop.
        if self._renewer is None and not self._stopped:
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def close(self) -> None:
        await self.stop_renewing()
        closer = getattr(self.local, "close", None)
        if closer is not None:
            await closer()

    async def stop_renewing(self) -> None:
        self._stopped = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    # -- TaskStore --------------------------------------------------------------------------

    async def create(self, task_id: str, outcome: Outcome | None = None,
                     request: SpooledRequest | None = None) -> None:
        await self.local.create(task_id, outcome, request)
        if outcome is None:
            self._start_renewing()
            self._mirrored[task_id] = None
            await self._write_pending([task_id])
        else:
            await self._write_finished(task_id, outcome)

    async def progress(self, task_id: str, done: int, total: int) -> None:
        await self.local.progress(task_id, done, total)
        if task_id in self._mirrored:
            self._mirrored[task_id] = {"done": done, "total": total}
            await self._write_pending([task_id])

    async def finish(self, task_id: str, outcome: Outcome) -> None:
        await self.local.finish(task_id, outcome)
        if self._mirrored.pop(task_id, _ABSENT) is not _ABSENT:
            await self._write_finished(task_id, outcome)

    async def discard(self, task_id: str) -> None:
        await self.local.discard(task_id)
        self._mirrored.pop(task_id, None)
        await self._link.call(self._link.client.delete(self._key(task_id)))

    async def get(self, task_id: str) -> TaskState | None:
        for store in self._node_stores:
            state = await store.get(task_id)
            if state is not None:
                return state
        record = await self._link.call(self._link.client.get(self._key(task_id)))
        return decode_task(task_id, record) if record is not None else None

    def stats(self) -> dict:
        return self.local.stats()

    # -- LastingTaskStore (delegated) -------------------------------------------------------

    async def unfinished(self) -> list[str]:
        return await self.local.unfinished()

    async def spooled(self, task_id: str) -> SpooledRequest:
        return await self.local.spooled(task_id)

    async def expire(self) -> int:
        return await self.local.expire()

    # -- Redis writes -----------------------------------------------------------------------

    async def _write_pending(self, task_ids: list[str]) -> None:
        if not task_ids:
            return
        pipe = self._link.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.set(self._key(task_id), encode_task(None, self._mirrored.get(task_id)),
                     px=self._lease_ms)
        await self._link.call(pipe.execute())

    async def _write_finished(self, task_id: str, outcome: Outcome) -> None:
        written = await self._link.call(self._link.client.set(
            self._key(task_id), encode_task(outcome), px=self._ttl_ms), _NOT_WRITTEN)
        if written is _NOT_WRITTEN:
            self._unsynced[task_id] = outcome
            while len(self._unsynced) > _MAX_UNSYNCED:
                del self._unsynced[next(iter(self._unsynced))]

    async def _resync(self) -> None:
        await self._write_pending(list(self._mirrored))
        unsynced, self._unsynced = self._unsynced, {}
        for task_id, outcome in unsynced.items():
            await self._write_finished(task_id, outcome)

    async def _renew(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._lease / 3)
            if self._mirrored and self._link.available:
                pipe = self._link.client.pipeline(transaction=False)
                for task_id in self._mirrored:
                    pipe.pexpire(self._key(task_id), self._lease_ms)
                renewed = await self._link.call(pipe.execute(), fallback=[])
                lost = [task_id for task_id, ok in zip(self._mirrored, renewed, strict=False)
                        if not ok]
                if lost:  # expired during an outage or evicted: write them again
                    await self._write_pending(lost)

    def _link_changed(self, available: bool) -> None:
        # Back from an outage: the pending tasks' leases may have run out meanwhile, and
        # tasks that finished meanwhile are still pending (or unknown) there.
        if available and (self._mirrored or self._unsynced):
            task = asyncio.get_running_loop().create_task(self._resync())
            self._background.add(task)
            task.add_done_callback(self._background.discard)


_ABSENT: Any = object()
_NOT_WRITTEN: Any = object()


__all__ = ["RedisLink", "RedisResultCache", "RedisTaskMirror", "encode_task", "decode_task",
           "redacted"]
