"""In-process stores: cachetools' TTLCache for results and finished tasks, a dict for pending
tasks. Not thread-safe (nor need they be: the IOLoop thread is their only user). `timer` is
injectable so tests tick time instead of sleeping."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from cachetools import TTLCache

from . import Outcome, SpooledRequest, TaskState


class TaskStoreFull(Exception):
    """More pending tasks than the store keeps; the submission is refused (503)."""

    code = "queue_full"


class MemoryResultCache:
    def __init__(self, size: int, ttl: float, timer: Callable[[], float] = time.monotonic):
        # maxsize 0 would make TTLCache refuse every item; size 0 or ttl 0 means "no caching".
        self._cache: TTLCache | None = (TTLCache(size, ttl, timer=timer)
                                        if size > 0 and ttl > 0 else None)
        self.hits = self.misses = 0

    async def get(self, key: str) -> bytes | None:
        body = self._cache.get(key) if self._cache is not None else None
        if body is None:
            self.misses += 1
        else:
            self.hits += 1
        return body

    async def put(self, key: str, body: bytes) -> None:
        if self._cache is not None:
            self._cache[key] = body

    def stats(self) -> dict:
        return {"cache_entries": len(self._cache) if self._cache is not None else 0,
                "cache_hits": self.hits, "cache_misses": self.misses}


class MemoryTaskStore:
    """Pending tasks are kept until they finish (at most `max_tasks` of them); finished ones
    for `ttl` seconds after they finished, at most `max_tasks`: past that the one that finished
    first is dropped (polling a task does not keep it longer, unlike an LRU)."""

    def __init__(self, max_tasks: int, ttl: float,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._max = max_tasks
        self._ttl = ttl
        self._timer = timer
        # Pending task id -> its progress ({"done", "total"}, or None until it reports one).
        self._pending: dict[str, dict | None] = {}
        # task id -> (expiry, outcome), in finishing order; one TTL, so the first expires first.
        self._finished: OrderedDict[str, tuple[float, Outcome]] = OrderedDict()

    async def create(self, task_id: str, outcome: Outcome | None = None,
                     request: SpooledRequest | None = None) -> None:
        # `request` is for a lasting store: a task kept in memory ends with the process.
        if outcome is not None:
            self._store(task_id, outcome)
            return
        if len(self._pending) >= self._max:
            raise TaskStoreFull(f"{self._max} non-blocking tasks are already pending; retry "
                                "later")
        self._pending[task_id] = None

    async def progress(self, task_id: str, done: int, total: int) -> None:
        if task_id in self._pending:
            self._pending[task_id] = {"done": done, "total": total}

    async def finish(self, task_id: str, outcome: Outcome) -> None:
        if task_id in self._pending:
            del self._pending[task_id]
            self._store(task_id, outcome)

    async def discard(self, task_id: str) -> None:
        self._pending.pop(task_id, None)
        self._finished.pop(task_id, None)

    async def get(self, task_id: str) -> TaskState | None:
        if task_id in self._pending:
            return TaskState(task_id, progress=self._pending[task_id])
        self._expire()
        entry = self._finished.get(task_id)
        return TaskState(task_id, entry[1]) if entry is not None else None

    def stats(self) -> dict:
        self._expire()
        return {"pending_tasks": len(self._pending), "finished_tasks": len(self._finished)}

    def _store(self, task_id: str, outcome: Outcome) -> None:
        self._finished.pop(task_id, None)
        self._finished[task_id] = (self._timer() + self._ttl, outcome)
        self._expire()
        while len(self._finished) > self._max:
            self._finished.popitem(last=False)

    def _expire(self) -> None:
        now = self._timer()
        while self._finished:
            expiry, _ = next(iter(self._finished.values()))
            if expiry > now:
                return
            self._finished.popitem(last=False)
