"""The job store in one SQLite file (stdlib sqlite3): jobs, their items and results.

Threading: a sqlite3 connection belongs to the thread that made it, and its calls block, so
every call runs on one dedicated thread (a single-thread executor that also opens and closes
the connection); the IOLoop only awaits. One thread also means one writer, so no call waits on
SQLite's own locks, and a check-then-write (a duplicate job's fingerprint) is atomic.

Durability: WAL with synchronous=FULL, and every write in its own transaction committed before
the method returns, so what a client was told survives a kill -9 (and a power cut). An item is
a page of a file: (seq, page), seq numbering the job's files, page 1 for an image
(PRIMARY KEY (job_id, seq, page), UNIQUE (job_id, file, page)); a document's further pages are
added once a worker has counted them, with INSERT OR IGNORE. Only a queued item is ever
finished, so writing the same outcome twice, or after the job was deleted, changes nothing: a
job resumed after a crash has every item exactly once. The job row's total and its done /
failed / cached counters move in the same transaction as the items they count.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ErrorInfo
from . import FINISHED_STATUSES, ItemOutcome, ItemSpec, JobItem, JobRecord

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


class SqliteJobStore:
    """`JobStore` in the SQLite file `path` (its folder must exist)."""

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

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the job store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _open(self) -> None:
        # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE.
        db = sqlite3.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA busy_timeout = 10000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            db.close()
            raise RuntimeError(f"{self.path}: job store schema version {version}; this "
                               f"server knows version {SCHEMA_VERSION}")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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
