"""Where results and state live, behind three small interfaces (DESIGN.md, "State").

- `ResultCache`: request key -> the result's JSON encoding (bytes), with a TTL. Keys are
  content hashes (image bytes + options + model), so the cache is shared by every client that
  sends the same image the same way: one client's result answers another's identical request.
  It holds the encoded body, not the dict, so a hit is answered without encoding anything
  again, and a shared store (Redis) keeps exactly those bytes.
- `TaskStore`: task id -> pending (with its progress, for a document or a batch: how many of
  its pages or items are done) | done(result) | failed(ErrorInfo), kept `task_ttl` after it
  ends. Ids are random per accepted submission, never derived from the content, so holding the
  same image does not let anyone read another client's task. A `LastingTaskStore` (`sqlite.py`)
  keeps them across restarts, and with each pending task the `SpooledRequest` that redoes it.
- `InflightRuns`: request key -> the one run in flight for it, so identical requests arriving
  while it runs await it instead of starting another (in-process by nature).
- `JobStore`: folder jobs: a job row, its item rows (file, page, state, attempts, error) and
  each item's result, kept across restarts (`sqlite.py`; a Redis store can stand in for it).

The cache and task store are async because a shared store (Redis) will need round trips; the
in-memory implementations (`memory.py`) answer at once. Everything runs on the IOLoop thread.
Outcomes hold error data, never exception objects.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import ErrorInfo


@dataclass(frozen=True)
class Outcome:
    """A finished run: the engine's result dict, or the error it ended with (as data). A run's
    outcome also carries the result's JSON encoding (`body`), made once when it ended and
    stored in the cache; a stored task's outcome may have none."""

    result: dict | None = None
    error: ErrorInfo | None = None
    body: bytes | None = field(default=None, repr=False, compare=False)


def encode_result(result: dict) -> bytes:
    """The one JSON encoding of a result: what the cache stores and a response splices in."""
    return json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class TaskState:
    """What GET /ocr_service/<id> shows: pending while `outcome` is None. `progress` is
    {"done": n, "total": m} for a pending document or batch once its size is known."""

    id: str
    outcome: Outcome | None = None
    progress: dict | None = None

    @property
    def pending(self) -> bool:
        return self.outcome is None


@dataclass(frozen=True)
class SpooledRequest:
    """What redoing a pending task after a restart takes: the parsed request as JSON-able
    `fields`, and the bytes it refers to by name (`files`: name -> bytes; names are
    [a-z0-9-], at most 64 characters)."""

    fields: dict
    files: dict[str, bytes]


class SpoolLost(Exception):
    """A pending task's spooled request is missing or unreadable: the task cannot be redone.
    `info` is the error the task finishes with: `what` ("is missing", "cannot be read") goes
    to the client, `details` (which file, what was wrong) only to the log."""

    code = "task_lost"

    def __init__(self, what: str, details: str | None = None) -> None:
        message = (f"the server restarted while this task was pending, and the copy of its "
                   f"request it kept {what}; send the request again")
        super().__init__(message)
        self.info = ErrorInfo(self.code, message, details)


class ResultCache(Protocol):
    """request key -> `encode_result` bytes (opaque to the cache)."""

    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, body: bytes) -> None: ...
    def stats(self) -> dict: ...


class TaskStore(Protocol):
    async def create(self, task_id: str, outcome: Outcome | None = None,
                     request: SpooledRequest | None = None) -> None:
        """Records an accepted task, pending (outcome None) or already finished; raises
        TaskStoreFull when `max_tasks` tasks are pending. A lasting store first writes (and
        syncs) the pending task's `request`, so that it can be redone after a restart; the
        memory store keeps nothing of it."""

    async def progress(self, task_id: str, done: int, total: int) -> None:
        """Records how far a pending task is; ignored once it has finished (or is unknown)."""

    async def finish(self, task_id: str, outcome: Outcome) -> None: ...
    async def discard(self, task_id: str) -> None:
        """Forgets a task whose submission was refused after it was recorded."""

    async def get(self, task_id: str) -> TaskState | None: ...
    def stats(self) -> dict: ...


class LastingTaskStore(TaskStore, Protocol):
    """A TaskStore kept across restarts (kill -9 included): every write is committed before
    it returns; a pending task's spooled request is kept until the task finishes or is
    discarded. Progress is not written: a task redone after a restart reports its own."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def unfinished(self) -> list[str]:
        """The ids of the pending tasks, oldest first (to redo at start)."""

    async def spooled(self, task_id: str) -> SpooledRequest:
        """The pending task's spooled request; raises SpoolLost when it cannot be read."""

    async def expire(self) -> int:
        """Deletes finished tasks past their TTL (or past `max_tasks`); how many."""


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


# ---------------------------------------------------------------- folder jobs (server/jobs.py)

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATUSES = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class JobRecord:
    """A folder or ZIP job as stored. `done` counts items read (`cached` of them from the
    result cache), `failed` items that ended with an error; times are epoch seconds."""

    id: str
    fingerprint: str  # what a re-submitted identical job is recognised by
    source: str  # "folder" | "zip"
    name: str  # the folder as the client named it, or the ZIP's file name
    location: str  # the folder's absolute path inside the roots; "" for a ZIP (spooled)
    options: str  # OcrOptions.cache_key() of the job's options
    model: str
    status: str
    total: int  # items: images, and documents' pages once a document's pages are counted
    created_at: float
    dpi: int = 200  # PDF pages are rendered at this resolution
    pdf_text: str = "ocr"  # how a PDF page is read (server/documents.py)
    skipped_symlinks: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    done: int = 0
    failed: int = 0
    cached: int = 0
    error: str | None = None  # why a failed job failed


@dataclass(frozen=True)
class ItemSpec:
    """One file of a new job: a path relative to the job's folder, or a ZIP entry's name, with
    the size and mtime it was listed with. It becomes item (seq, page 1); a document's further
    pages become items (seq, 2..n) once a worker has counted them (`JobStore.add_pages`)."""

    file: str
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class ItemOutcome:
    """A finished item: its result dict, or the error it failed with (as data)."""

    seq: int
    page: int = 1
    result: dict | None = None
    cached: bool = False
    error: ErrorInfo | None = None
    finished_at: float = 0.0


@dataclass(frozen=True)
class JobItem:
    """An item as stored: `state` is queued | done | failed; `attempts` counts the reads
    started (a read interrupted by a crash is started again)."""

    seq: int
    file: str
    page: int
    state: str
    attempts: int = 0
    cached: bool = False
    result: dict | None = None
    error: ErrorInfo | None = None
    finished_at: float | None = None


class JobStore(Protocol):
    """Jobs, their items and results, kept across restarts. Every method's writes are
    committed (durably) before it returns; `record` is idempotent: an item finishes once."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def create(self, job: JobRecord, items: list[ItemSpec]) -> JobRecord:
        """Records `job` and its items (numbered 0.. in order) in one transaction, unless a
        queued, running or done job with the same fingerprint exists: then that one is
        returned and nothing is written."""

    async def find(self, fingerprint: str) -> JobRecord | None:
        """The queued, running or done job with this fingerprint, if any."""

    async def get(self, job_id: str) -> JobRecord | None: ...
    async def page(self, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        """Jobs newest first, and how many there are."""

    async def unfinished(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (to resume at start)."""

    async def set_status(self, job_id: str, status: str, at: float,
                         error: str | None = None) -> bool:
        """Moves an unfinished job to `status` (running sets started_at once, a finished
        status sets finished_at); False when the job is unknown or already finished."""

    async def pending(self, job_id: str, after: tuple[int, int], limit: int
                      ) -> list[JobItem]:
        """Queued items after `after` ((seq, page)), in order."""

    async def add_pages(self, job_id: str, seq: int, pages: int, max_total: int
                        ) -> int | None:
        """Adds the queued items (seq, 2..pages) of a document (idempotent) and counts them
        into the job's total; how many were new, or None (nothing added) when the total
        would pass `max_total`."""

    async def record(self, started: list[tuple[str, int, int]],
                     finished: list[tuple[str, ItemOutcome]]) -> None:
        """Counts started reads ((job id, seq, page)) and stores finished items; an item
        already finished, or of a deleted job, is left as it is."""

    async def items(self, job_id: str, after: tuple[int, int], limit: int) -> list[JobItem]:
        """Finished items after `after` ((seq, page)), in order (results, read in pages)."""

    async def recent(self, job_id: str, limit: int) -> list[JobItem]:
        """The last items to finish, newest first."""

    async def delete(self, job_id: str) -> bool: ...
    async def expired(self, finished_before: float) -> list[JobRecord]:
        """Finished jobs that finished before `finished_before`."""
