"""The lasting stores, each in its own SQLite file (stdlib sqlite3): the job store (jobs, their
items and results) and the task store (non-blocking documents and batches, with their spooled
requests).

Threading: a sqlite3 connection belongs to the thread that made it, and its calls block, so
every call runs on one dedicated thread per file (a single-thread executor that also opens and
closes the connection); the IOLoop only awaits. One thread also means one writer, so no call
waits on SQLite's own locks, and a check-then-write (a duplicate job's fingerprint, the pending
tasks' bound) is atomic.

Durability: WAL with synchronous=FULL, and every write in its own transaction committed before
the method returns, so what a client was told survives a kill -9 (and a power cut).

Jobs. An item is a page of a file: (seq, page), seq numbering the job's files, page 1 for an
image (PRIMARY KEY (job_id, seq, page), UNIQUE (job_id, file, page)); a document's further
pages are added once a worker has counted them, with INSERT OR IGNORE. Only a queued item is
ever finished, so writing the same outcome twice, or after the job was deleted, changes
nothing: a job resumed after a crash has every item exactly once. The job row's total and its done /
failed / cached counters move in the same transaction as the items they count.

Tasks (`SqliteTaskStore`, its own file: its life cycle is the service's, not the job runner's,
and a task's commit never waits behind a job's batch of items). A row per task: pending until
its outcome is written, then numbered in finishing order. A pending task's request is spooled
first, into <spool_dir>/.<id>.partial/, every file and the folder synced, then renamed to
<spool_dir>/<id>/: a row is only ever committed once its spool is complete, and a spool
without a pending row (a crash in between, a finished task whose spool removal was cut short)
is deleted at the next open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ErrorInfo
from . import (
    FINISHED_STATUSES,
    ItemOutcome,
    ItemSpec,
    JobItem,
    JobRecord,
    Outcome,
    SpooledRequest,
    SpoolLost,
    TaskState,
)
from .files import remove_tree, write_synced
from .memory import TaskStoreFull

log = logging.getLogger("ppocr.store")

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('folder', 'zip')),
    name TEXT NOT NULL,
    location TEXT NOT NULL,
    options TEXT NOT NULL,
    model TEXT NOT NULL,
    dpi INTEGER NOT NULL,
    pdf_text TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    total INTEGER NOT NULL,
    skipped_symlinks INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_fingerprint ON jobs (fingerprint);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    file TEXT NOT NULL,
    page INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    result TEXT,
    finished_at REAL,
    PRIMARY KEY (job_id, seq, page),
    UNIQUE (job_id, file, page)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_by_state ON items (job_id, state, seq, page);
CREATE INDEX IF NOT EXISTS items_by_finish ON items (job_id, finished_at);
"""
_JOB_COLUMNS = ("id, fingerprint, source, name, location, options, model, status, total, "
                "created_at, dpi, pdf_text, skipped_symlinks, started_at, finished_at, done, "
                "failed, cached, error")
_ITEM_COLUMNS = ("seq, file, page, state, attempts, cached, result, error_code, error_message, "
                 "finished_at")
_LIVE = ("queued", "running", "done")  # a job an identical submission is answered with
_UNFINISHED = ("queued", "running")


class _SqliteFile:
    """One SQLite file (its folder must exist), its connection on one dedicated thread."""

    _what = "store"  # for messages
    _schema = ""
    _version = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # touched only on the executor's thread

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppocr-sqlite")
        await self._call(self._open)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError(f"the {self._what} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- on the store's thread ----------------------------------------------------------

    def _open(self) -> None:
        # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE.
        db = sqlite3.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA busy_timeout = 10000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, self._version):
            db.close()
            raise RuntimeError(f"{self.path}: {self._what} schema version {version}; this "
                               f"server knows version {self._version}")
        db.executescript(self._schema)
        db.execute(f"PRAGMA user_version = {self._version}")
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            value = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return value


class SqliteJobStore(_SqliteFile):
    """`JobStore` in the SQLite file `path` (its folder must exist)."""

    _what = "job store"
    _schema = _SCHEMA
    _version = SCHEMA_VERSION

    async def create(self, job: JobRecord, items: list[ItemSpec]) -> JobRecord:
        return await self._call(self._create, job, items)

    async def find(self, fingerprint: str) -> JobRecord | None:
        return await self._call(self._find, fingerprint)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._call(self._get, job_id)

    async def page(self, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        return await self._call(self._page, limit, offset)

    async def unfinished(self) -> list[JobRecord]:
        return await self._call(self._jobs, f"WHERE status IN {_UNFINISHED} "
                                "ORDER BY created_at, id")

    async def set_status(self, job_id: str, status: str, at: float,
                         error: str | None = None) -> bool:
        return await self._call(self._set_status, job_id, status, at, error)

    async def pending(self, job_id: str, after: tuple[int, int], limit: int
                      ) -> list[JobItem]:
        return await self._call(self._items, "state = 'queued'", job_id, after, limit)

    async def add_pages(self, job_id: str, seq: int, pages: int, max_total: int
                        ) -> int | None:
        return await self._call(self._add_pages, job_id, seq, pages, max_total)

    async def record(self, started: list[tuple[str, int, int]],
                     finished: list[tuple[str, ItemOutcome]]) -> None:
        await self._call(self._record, started, finished)

    async def items(self, job_id: str, after: tuple[int, int], limit: int) -> list[JobItem]:
        return await self._call(self._items, "state != 'queued'", job_id, after, limit)

    async def recent(self, job_id: str, limit: int) -> list[JobItem]:
        return await self._call(self._recent, job_id, limit)

    async def delete(self, job_id: str) -> bool:
        return await self._call(self._delete, job_id)

    async def expired(self, finished_before: float) -> list[JobRecord]:
        return await self._call(
            self._jobs, f"WHERE status IN {FINISHED_STATUSES} AND finished_at < ? "
            "ORDER BY finished_at", finished_before)

    # -- on the store's thread ----------------------------------------------------------

    def _create(self, job: JobRecord, items: list[ItemSpec]) -> JobRecord:
        def work(db: sqlite3.Connection) -> JobRecord:
            existing = self._find(job.fingerprint)
            if existing is not None:
                return existing
            db.execute(
                "INSERT INTO jobs (id, fingerprint, source, name, location, options, model, "
                "dpi, pdf_text, status, total, created_at, skipped_symlinks, started_at, "
                "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.fingerprint, job.source, job.name, job.location, job.options,
                 job.model, job.dpi, job.pdf_text, job.status, len(items), job.created_at,
                 job.skipped_symlinks, job.started_at, job.finished_at))
            db.executemany(
                "INSERT INTO items (job_id, seq, file, page, size, mtime_ns, state) "
                "VALUES (?, ?, ?, 1, ?, ?, 'queued')",
                ((job.id, seq, item.file, item.size, item.mtime_ns)
                 for seq, item in enumerate(items)))
            return self._get(job.id)
        return self._write(work)

    def _find(self, fingerprint: str) -> JobRecord | None:
        jobs = self._jobs(f"WHERE fingerprint = ? AND status IN {_LIVE} "
                          "ORDER BY created_at DESC LIMIT 1", fingerprint)
        return jobs[0] if jobs else None

    def _get(self, job_id: str) -> JobRecord | None:
        jobs = self._jobs("WHERE id = ?", job_id)
        return jobs[0] if jobs else None

    def _page(self, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        total = self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        return self._jobs("ORDER BY created_at DESC, id LIMIT ? OFFSET ?", limit, offset), total

    def _jobs(self, where: str, *args: Any) -> list[JobRecord]:
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs {where}", args).fetchall()
        return [JobRecord(**dict(row)) for row in rows]

    def _set_status(self, job_id: str, status: str, at: float, error: str | None) -> bool:
        finished = at if status in FINISHED_STATUSES else None
        started = at if status == "running" else None

        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?), "
                "finished_at = ?, error = COALESCE(?, error) "
                f"WHERE id = ? AND status IN {_UNFINISHED}",
                (status, started, finished, error, job_id))
            return cursor.rowcount == 1
        return self._write(work)

    def _add_pages(self, job_id: str, seq: int, pages: int, max_total: int) -> int | None:
        def work(db: sqlite3.Connection) -> int | None:
            first = db.execute("SELECT file, size, mtime_ns FROM items "
                               "WHERE job_id = ? AND seq = ? AND page = 1",
                               (job_id, seq)).fetchone()
            if first is None:
                return 0  # the job was deleted
            have = db.execute("SELECT COUNT(*) FROM items WHERE job_id = ? AND seq = ?",
                              (job_id, seq)).fetchone()[0]
            total = db.execute("SELECT total FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            if total + max(0, pages - have) > max_total:
                return None
            added = 0
            for page in range(2, pages + 1):
                added += db.execute(
                    "INSERT OR IGNORE INTO items (job_id, seq, file, page, size, mtime_ns, "
                    "state) VALUES (?, ?, ?, ?, ?, ?, 'queued')",
                    (job_id, seq, first["file"], page, first["size"],
                     first["mtime_ns"])).rowcount
            db.execute("UPDATE jobs SET total = total + ? WHERE id = ?", (added, job_id))
            return added
        return self._write(work)

    def _record(self, started: list[tuple[str, int, int]],
                finished: list[tuple[str, ItemOutcome]]) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE items SET attempts = attempts + 1 WHERE job_id = ? "
                           "AND seq = ? AND page = ? AND state = 'queued'", started)
            counts: dict[str, list[int]] = {}
            for job_id, outcome in finished:
                error = outcome.error
                state = "failed" if error is not None else "done"
                cursor = db.execute(
                    "UPDATE items SET state = ?, cached = ?, result = ?, error_code = ?, "
                    "error_message = ?, finished_at = ? "
                    "WHERE job_id = ? AND seq = ? AND page = ? AND state = 'queued'",
                    (state, int(outcome.cached),
                     None if outcome.result is None else json.dumps(
                         outcome.result, ensure_ascii=False, separators=(",", ":")),
                     error and error.code, error and error.message, outcome.finished_at,
                     job_id, outcome.seq, outcome.page))
                if cursor.rowcount:
                    done, failed, cached = counts.setdefault(job_id, [0, 0, 0])
                    counts[job_id] = [done + (error is None), failed + (error is not None),
                                      cached + (error is None and outcome.cached)]
            db.executemany("UPDATE jobs SET done = done + ?, failed = failed + ?, "
                           "cached = cached + ? WHERE id = ?",
                           [(*values, job_id) for job_id, values in counts.items()])
        self._write(work)

    def _items(self, state: str, job_id: str, after: tuple[int, int], limit: int
               ) -> list[JobItem]:
        rows = self._db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE job_id = ? AND {state} "
            "AND (seq, page) > (?, ?) ORDER BY seq, page LIMIT ?",
            (job_id, *after, limit)).fetchall()
        return [_item(row) for row in rows]

    def _recent(self, job_id: str, limit: int) -> list[JobItem]:
        rows = self._db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE job_id = ? AND finished_at IS NOT NULL "
            "ORDER BY finished_at DESC, seq DESC, page DESC LIMIT ?",
            (job_id, limit)).fetchall()
        return [_item(row) for row in rows]

    def _delete(self, job_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM items WHERE job_id = ?", (job_id,))
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 1
        return self._write(work)


def _item(row: sqlite3.Row) -> JobItem:
    error = (ErrorInfo(row["error_code"], row["error_message"] or "")
             if row["error_code"] is not None else None)
    return JobItem(seq=row["seq"], file=row["file"], page=row["page"], state=row["state"],
                   attempts=row["attempts"], cached=bool(row["cached"]),
                   result=json.loads(row["result"]) if row["result"] is not None else None,
                   error=error, finished_at=row["finished_at"])


# ---------------------------------------------------------------- non-blocking tasks

TASK_SCHEMA_VERSION = 1
_TASK_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    finished INTEGER UNIQUE,  -- finishing order (1, 2, ...); NULL while pending
    finished_at REAL,
    result TEXT,
    error_code TEXT,
    error_message TEXT,
    error_details TEXT,
    CHECK ((finished IS NULL) = (finished_at IS NULL))
);
CREATE INDEX IF NOT EXISTS tasks_by_finish ON tasks (finished_at);
"""
SPOOL_MANIFEST = "request.json"  # in a task's spool folder, beside its files
_SPOOL_NAME = re.compile(r"^[a-z0-9-]{1,64}$")  # a spooled file's name (no dot: no clash)


class SqliteTaskStore(_SqliteFile):
    """`LastingTaskStore` in the SQLite file `path`, pending tasks' requests spooled under
    `spool_dir` (created at open; its parent and `path`'s folder must exist).

    The contract is MemoryTaskStore's: pending tasks are kept until they finish, at most
    `max_tasks` of them (TaskStoreFull past that); finished ones for `ttl` seconds after they
    finished, at most `max_tasks`, dropped in finishing order (polling keeps none longer).
    `timer` gives epoch seconds: they are stored, so they must mean the same after a restart;
    tests inject a clock they tick.

    The IOLoop thread keeps a mirror of the pending tasks (with their progress, which lives
    only there: a task redone after a restart reports its own) and of when each finished one
    finished, updated after each commit, so `stats`, a poll of a pending task and one of an
    unknown or expired id need no round trip; the file is the truth at `open`. Expired rows are
    deleted as tasks finish, at `open`, and every `sweep_interval` seconds (None: never on a
    timer). Spool files go through the loop's default executor, rows through the store's thread.
    """

    _what = "task store"
    _schema = _TASK_SCHEMA
    _version = TASK_SCHEMA_VERSION

    def __init__(self, path: str | Path, spool_dir: str | Path, max_tasks: int, ttl: float,
                 timer: Callable[[], float] = time.time,
                 sweep_interval: float | None = None) -> None:
        super().__init__(path)
        self.spool_dir = Path(spool_dir)
        self._max = max_tasks
        self._ttl = ttl
        self._timer = timer
        self._sweep_interval = sweep_interval
        self._pending: dict[str, dict | None] = {}  # id -> progress, in creation order
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> finished at, in order
        self._sweeper: asyncio.Task | None = None

    # -- life cycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Opens the file, deletes expired rows and orphaned spools, loads the mirror."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self.spool_dir.mkdir, mode=0o700,
                                                           exist_ok=True))
        await super().open()
        pending, finished = await self._call(self._load, self._timer())
        self._pending = dict.fromkeys(pending)
        self._finished = OrderedDict(finished)
        await loop.run_in_executor(None, self._remove_orphaned_spools, set(pending))
        if self._sweep_interval:
            self._sweeper = loop.create_task(self._sweep_periodically())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await super().close()

    # -- TaskStore -------------------------------------------------------------------------

    async def create(self, task_id: str, outcome: Outcome | None = None,
                     request: SpooledRequest | None = None) -> None:
        now = self._timer()
        if outcome is not None:
            await self._call(self._insert_finished, task_id, now, outcome)
            self._mirror_finished(task_id, now)
            return
        if len(self._pending) >= self._max:  # refused before spooling (the file re-checks)
            raise self._full()
        loop = asyncio.get_running_loop()
        if request is not None:
            await loop.run_in_executor(None, self._write_spool, task_id, request)
        try:
            await self._call(self._insert_pending, task_id, now)
        except BaseException:
            if request is not None:
                await loop.run_in_executor(None, self._remove_spool, task_id)
            raise
        self._pending[task_id] = None

    async def progress(self, task_id: str, done: int, total: int) -> None:
        if task_id in self._pending:
            self._pending[task_id] = {"done": done, "total": total}

    async def finish(self, task_id: str, outcome: Outcome) -> None:
        if task_id not in self._pending:
            return
        now = self._timer()
        if not await self._call(self._finish, task_id, now, outcome):
            return  # discarded meanwhile
        self._pending.pop(task_id, None)
        self._mirror_finished(task_id, now)
        await self._discard_spool(task_id)

    async def discard(self, task_id: str) -> None:
        await self._call(self._delete, task_id)
        self._pending.pop(task_id, None)
        self._finished.pop(task_id, None)
        await self._discard_spool(task_id)

    async def get(self, task_id: str) -> TaskState | None:
        if task_id in self._pending:
            return TaskState(task_id, progress=self._pending[task_id])
        self._expire_mirror()
        if task_id not in self._finished:
            return None
        outcome = await self._call(self._outcome, task_id)
        return TaskState(task_id, outcome) if outcome is not None else None

    def stats(self) -> dict:
        self._expire_mirror()
        return {"pending_tasks": len(self._pending), "finished_tasks": len(self._finished)}

    # -- LastingTaskStore ------------------------------------------------------------------

    async def unfinished(self) -> list[str]:
        return await self._call(self._pending_ids)

    async def spooled(self, task_id: str) -> SpooledRequest:
        return await asyncio.get_running_loop().run_in_executor(None, self._read_spool,
                                                                task_id)

    async def expire(self) -> int:
        removed = await self._call(self._write, functools.partial(self._trim,
                                                                  now=self._timer()))
        self._expire_mirror()
        return removed

    # -- the mirror (IOLoop thread) --------------------------------------------------------

    def _full(self) -> TaskStoreFull:
        return TaskStoreFull(f"{self._max} non-blocking tasks are already pending; retry later")

    def _mirror_finished(self, task_id: str, now: float) -> None:
        self._finished.pop(task_id, None)
        self._finished[task_id] = now
        self._expire_mirror()
        while len(self._finished) > self._max:
            self._finished.popitem(last=False)

    def _expire_mirror(self) -> None:
        cutoff = self._timer() - self._ttl  # the same test as _trim's
        while self._finished and next(iter(self._finished.values())) <= cutoff:
            self._finished.popitem(last=False)

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                removed = await self.expire()
            except Exception:
                log.exception("cannot delete expired tasks")
                continue
            if removed:
                log.info("deleted %d finished task(s) past service.task_ttl", removed)

    async def _discard_spool(self, task_id: str) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._remove_spool, task_id)
        except OSError as exc:  # the next open deletes it (no pending row keeps it)
            log.warning("cannot delete the spool of task %s: %s", task_id, exc)

    # -- on the store's thread -------------------------------------------------------------

    def _load(self, now: float) -> tuple[list[str], list[tuple[str, float]]]:
        self._write(functools.partial(self._trim, now=now))
        finished = self._db.execute("SELECT id, finished_at FROM tasks WHERE finished IS NOT "
                                    "NULL ORDER BY finished").fetchall()
        return self._pending_ids(), [(row["id"], row["finished_at"]) for row in finished]

    def _pending_ids(self) -> list[str]:
        rows = self._db.execute("SELECT id FROM tasks WHERE finished IS NULL "
                                "ORDER BY created_at, rowid").fetchall()
        return [row["id"] for row in rows]

    def _trim(self, db: sqlite3.Connection, now: float) -> int:
        """Deletes finished rows past the TTL, then the first finished past `max_tasks`."""
        removed = db.execute("DELETE FROM tasks WHERE finished_at <= ?",
                             (now - self._ttl,)).rowcount
        return removed + db.execute(
            "DELETE FROM tasks WHERE finished IN (SELECT finished FROM tasks WHERE finished "
            "IS NOT NULL ORDER BY finished DESC LIMIT -1 OFFSET ?)", (self._max,)).rowcount

    def _insert_pending(self, task_id: str, now: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            pending = db.execute("SELECT COUNT(*) FROM tasks WHERE finished IS NULL"
                                 ).fetchone()[0]
            if pending >= self._max:
                raise self._full()
            db.execute("INSERT INTO tasks (id, created_at) VALUES (?, ?)", (task_id, now))
        self._write(work)

    def _insert_finished(self, task_id: str, now: float, outcome: Outcome) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
            db.execute("INSERT INTO tasks (id, created_at) VALUES (?, ?)", (task_id, now))
            self._set_outcome(db, task_id, now, outcome)
            self._trim(db, now)
        self._write(work)

    def _finish(self, task_id: str, now: float, outcome: Outcome) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            if not self._set_outcome(db, task_id, now, outcome):
                return False
            self._trim(db, now)
            return True
        return self._write(work)

    @staticmethod
    def _set_outcome(db: sqlite3.Connection, task_id: str, now: float, outcome: Outcome
                     ) -> bool:
        error = outcome.error
        result = None if outcome.result is None else json.dumps(
            outcome.result, ensure_ascii=False, separators=(",", ":"))
        return db.execute(
            "UPDATE tasks SET finished = (SELECT COALESCE(MAX(finished), 0) + 1 FROM tasks), "
            "finished_at = ?, result = ?, error_code = ?, error_message = ?, "
            "error_details = ? WHERE id = ? AND finished IS NULL",
            (now, result, error and error.code, error and error.message,
             error and error.details, task_id)).rowcount == 1

    def _outcome(self, task_id: str) -> Outcome | None:
        row = self._db.execute("SELECT result, error_code, error_message, error_details "
                               "FROM tasks WHERE id = ? AND finished IS NOT NULL",
                               (task_id,)).fetchone()
        if row is None:
            return None
        if row["error_code"] is not None:
            return Outcome(error=ErrorInfo(row["error_code"], row["error_message"] or "",
                                           row["error_details"]))
        return Outcome(result=json.loads(row["result"]))

    def _delete(self, task_id: str) -> None:
        self._write(lambda db: db.execute("DELETE FROM tasks WHERE id = ?", (task_id,)))

    # -- the spool (the loop's default executor) -------------------------------------------

    def _write_spool(self, task_id: str, request: SpooledRequest) -> None:
        """<spool_dir>/<task_id>/: the files, then the manifest, each synced; the folder is
        complete before it has its name."""
        for name in request.files:
            if not _SPOOL_NAME.match(name):
                raise ValueError(f"bad spool file name {name!r}")
        manifest = json.dumps({"fields": request.fields, "files": list(request.files)},
                              ensure_ascii=False, separators=(",", ":")).encode()
        partial = self.spool_dir / f".{task_id}.partial"
        remove_tree(partial)
        partial.mkdir(mode=0o700)
        try:
            dir_fd = os.open(partial, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for name, data in request.files.items():
                    write_synced(dir_fd, name, (data,))
                write_synced(dir_fd, SPOOL_MANIFEST, (manifest,))
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            os.rename(partial, self.spool_dir / task_id)
            _fsync_folder(self.spool_dir)
        except BaseException:
            remove_tree(partial)
            raise

    def _read_spool(self, task_id: str) -> SpooledRequest:
        folder = self.spool_dir / task_id
        try:
            manifest = json.loads((folder / SPOOL_MANIFEST).read_bytes())
            fields, names = manifest["fields"], manifest["files"]
            if not isinstance(fields, dict) or not isinstance(names, list) \
                    or not all(isinstance(name, str) and _SPOOL_NAME.match(name)
                               for name in names):
                raise ValueError("the manifest is malformed")
            return SpooledRequest(fields, {name: (folder / name).read_bytes()
                                           for name in names})
        except FileNotFoundError as exc:
            raise SpoolLost("is missing", details=f"{exc}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpoolLost("cannot be read",
                            details=f"{folder}: {type(exc).__name__}: {exc}") from None

    def _remove_spool(self, task_id: str) -> None:
        remove_tree(self.spool_dir / task_id)

    def _remove_orphaned_spools(self, pending: set[str]) -> None:
        """Spool folders of no pending task: a crash before the row was committed or after
        the task finished, or a spool cut short (.partial)."""
        removed = 0
        for name in os.listdir(self.spool_dir):
            if name not in pending:
                try:
                    remove_tree(self.spool_dir / name)
                except OSError as exc:
                    log.warning("cannot delete %s: %s", self.spool_dir / name, exc)
                    continue
                removed += 1
        if removed:
            log.info("deleted %d spooled task request(s) no pending task needs", removed)


def _fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


