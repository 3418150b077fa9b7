"""Results by key: the LRU+TTL cache, in-flight sharing and non-blocking tasks.

Everything here runs on the IOLoop thread only (cachetools caches are not thread-safe, and need
not be here). The key is the sha256 of the image bytes plus the canonical options and model, so
the same image asked the same way is read once: a cached result answers at once, and identical
requests arriving while the first is still running all await that one run.

A non-blocking task's id is that same key. Its outcome (done or failed) stays readable for
`task_ttl` seconds, independently of the result cache, so a busy cache cannot lose a task the
client has not fetched yet; pending tasks are never evicted.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from .errors import ApiError


def request_key(image: bytes, options_key: str, model: str) -> str:
    digest = hashlib.sha256(image)
    digest.update(b"\0" + options_key.encode() + b"\0" + model.encode())
    return digest.hexdigest()


@dataclass
class Outcome:
    """A finished run: the engine's result dict, or the error it ended with."""

    result: dict | None = None
    error: ApiError | None = None


class OcrService:
    def __init__(self, submit: Callable[[Any], asyncio.Future], cache_size: int,
                 cache_ttl: float, task_ttl: float, max_tasks: int,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._submit = submit
        # maxsize 0 would make TTLCache refuse every item; a size-0 cache means "no caching".
        self._cache: TTLCache | None = (TTLCache(cache_size, cache_ttl, timer=timer)
                                        if cache_size > 0 and cache_ttl > 0 else None)
        self._tasks: TTLCache = TTLCache(max_tasks, task_ttl, timer=timer)
        self._inflight: dict[str, asyncio.Future] = {}
        self._pending_tasks: set[str] = set()
        self.engine_runs = 0  # runs actually submitted to the pool (the rest were shared)

    def cached(self, key: str) -> dict | None:
        if self._cache is None:
            return None
        return self._cache.get(key)

    async def run(self, key: str, job: Any) -> tuple[dict, bool]:
        """The result for `key`, and whether it came from the cache. Raises ApiError."""
        hit = self.cached(key)
        if hit is not None:
            return hit, True
        outcome = await asyncio.shield(self._start(key, job))
        if outcome.error is not None:
            raise outcome.error
        return outcome.result, False

    def submit_task(self, key: str, job: Any) -> None:
        """Starts (or joins) the run for `key` without waiting; its id is the key."""
        if self.cached(key) is not None:
            return
        future = self._start(key, job)
        self._pending_tasks.add(key)
        future.add_done_callback(lambda f, key=key: self._finish_task(key, f))

    def task(self, key: str) -> Outcome | None:
        """None: unknown or expired. Outcome() with neither field: still pending."""
        if key in self._pending_tasks:
            return Outcome()
        outcome = self._tasks.get(key)
        if outcome is not None:
            return outcome
        hit = self.cached(key)
        return Outcome(result=hit) if hit is not None else None

    def running(self, key: str) -> asyncio.Future | None:
        """The future Outcome of the run in flight for `key`, if any (to await it)."""
        return self._inflight.get(key)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def stats(self) -> dict:
        return {"cache_entries": len(self._cache) if self._cache is not None else 0,
                "inflight": len(self._inflight), "pending_tasks": len(self._pending_tasks),
                "engine_runs": self.engine_runs}

    def _start(self, key: str, job: Any) -> asyncio.Future:
        """The future Outcome of the one run for `key`, started here if none is in flight."""
        future = self._inflight.get(key)
        if future is not None:
            return future
        pool_future = self._submit(job)  # may raise QueueFull etc.: nothing registered yet
        self.engine_runs += 1
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future

        def settle(done: asyncio.Future) -> None:
            del self._inflight[key]
            if done.cancelled():
                outcome = Outcome(error=ApiError("internal_error", "the run was cancelled"))
            elif done.exception() is not None:
                error = done.exception()
                if not isinstance(error, ApiError):
                    error = ApiError("internal_error", f"{type(error).__name__}: {error}")
                outcome = Outcome(error=error)
            else:
                outcome = Outcome(result=done.result())
                if self._cache is not None:
                    # Filled even when every client has gone: the work is not wasted.
                    self._cache[key] = outcome.result
            future.set_result(outcome)

        pool_future.add_done_callback(settle)
        return future

    def _finish_task(self, key: str, future: asyncio.Future) -> None:
        self._pending_tasks.discard(key)
        self._tasks[key] = future.result()
