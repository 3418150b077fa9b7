"""Where results and state live, behind three small interfaces (DESIGN.md, "State").

- `ResultCache`: request key -> result, with a TTL. Keys are content hashes (image bytes +
  options + model), so the cache is shared by every client that sends the same image the same
  way: one client's result answers another's identical request.
- `TaskStore`: task id -> pending | done(result) | failed(ErrorInfo), kept `task_ttl` after it
  ends. Ids are random per accepted submission, never derived from the content, so holding the
  same image does not let anyone read another client's task.
- `InflightRuns`: request key -> the one run in flight for it, so identical requests arriving
  while it runs await it instead of starting another (in-process by nature).

The cache and task store are async because a shared store (Redis) will need round trips; the
in-memory implementations (`memory.py`) answer at once. Everything runs on the IOLoop thread.
Outcomes hold error data, never exception objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import ErrorInfo


@dataclass(frozen=True)
class Outcome:
    """A finished run: the engine's result dict, or the error it ended with (as data)."""

    result: dict | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class TaskState:
    """What GET /ocr_service/<id> shows: pending while `outcome` is None."""

    id: str
    outcome: Outcome | None = None

    @property
    def pending(self) -> bool:
        return self.outcome is None


class ResultCache(Protocol):
    async def get(self, key: str) -> dict | None: ...
    async def put(self, key: str, result: dict) -> None: ...
    def stats(self) -> dict: ...


class TaskStore(Protocol):
    async def create(self, task_id: str, outcome: Outcome | None = None) -> None:
        """Records an accepted task, pending (outcome None) or already finished."""

    async def finish(self, task_id: str, outcome: Outcome) -> None: ...
    async def discard(self, task_id: str) -> None:
        """Forgets a task whose submission was refused after it was recorded."""

    async def get(self, task_id: str) -> TaskState | None: ...
    def stats(self) -> dict: ...


class InflightRuns:
    """The one run in flight per key. `join(key, start)` returns the future Outcome of the
    run for `key`, calling `start()` (which returns a future Outcome) only when none is in
    flight. `start` may raise (queue full): then nothing is registered."""

    def __init__(self) -> None:
        self._runs: dict[str, asyncio.Future] = {}
        self.started = 0  # runs actually started (the rest joined one)
        self.joined = 0

    def join(self, key: str, start: Callable[[], asyncio.Future]) -> asyncio.Future:
        future = self._runs.get(key)
        if future is not None:
            self.joined += 1
            return future
        future = start()
        self.started += 1
        self._runs[key] = future
        future.add_done_callback(lambda _done, key=key: self._runs.pop(key, None))
        return future

    def get(self, key: str) -> asyncio.Future | None:
        return self._runs.get(key)

    def __len__(self) -> int:
        return len(self._runs)
