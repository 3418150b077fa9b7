"""A supervised pool of worker processes, parent side.

Model: one process per worker, one duplex pipe each, and all bookkeeping in the parent on the
IOLoop thread, so nothing here needs a lock. The loop watches each worker's pipe (messages) and
its process sentinel (death) with `add_reader`: a dead worker is noticed at once, with no polling.

- Dispatch: jobs wait in a bounded FIFO; an idle worker gets the next one. A full queue refuses
  new jobs (QueueFull -> 503) instead of growing without bound; with no worker alive at all,
  new jobs are refused (Unavailable -> 503) until one is back.
- Timeouts: every dispatched job arms a timer. When it fires the worker is killed (SIGKILL), the
  job fails with a timeout (504) and a fresh worker replaces the old one.
- Crashes: a worker that dies mid-job is replaced and its job is retried once on another worker;
  a second death fails the job (worker_crashed). A poison image therefore costs two workers, never
  a hung client.
- Recycling: after `max_tasks` jobs (plus a random jitter so workers do not restart together) a
  replacement is started; the old worker keeps serving until the new one is ready, then finishes
  its current job and exits. No job is lost and capacity never dips.
- Boot: workers load and warm up before they report ready. A boot error (missing models, say)
  or repeated deaths before ready halt the pool through `on_fatal`, rather than crash-looping.

This is deliberately not multiprocessing.Pool or ProcessPoolExecutor: both hang when a worker
dies mid-task or is recycled (cpython #96062, #115634).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import worker as worker_module
from .errors import ApiError

log = logging.getLogger("ppocr.pool")

# Consecutive deaths before "ready" (without a boot_error message) that count as a boot failure.
MAX_BOOT_DEATHS = 3


@dataclass(frozen=True)
class PoolConfig:
    size: int = 2
    max_tasks: int = 1000
    task_timeout: float = 60.0
    queue_size: int = 64
    boot_timeout: float = 180.0
    retries: int = 1


class State(enum.Enum):
    BOOTING = "booting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"


@dataclass
class Job:
    id: int
    payload: Any
    future: asyncio.Future
    attempts: int = 0
    timer: asyncio.TimerHandle | None = None
    worker: Worker | None = None


@dataclass
class Worker:
    id: int
    process: multiprocessing.process.BaseProcess
    conn: Any
    task_limit: int
    pid: int
    state: State = State.BOOTING
    job: Job | None = None
    tasks_done: int = 0
    # Set when the pool itself ends the worker (recycled, timed out, shutting down): its exit is
    # expected and not logged as a death.
    ending: str | None = None
    replacement: Worker | None = None
    started_at: float = field(default_factory=time.monotonic)
    boot_timer: asyncio.TimerHandle | None = None


class PoolClosed(ApiError):
    def __init__(self) -> None:
        super().__init__("shutting_down", "the server is shutting down")


class QueueFull(ApiError):
    def __init__(self, size: int) -> None:
        super().__init__("queue_full", f"all workers are busy and {size} requests are "
                         "already waiting; retry later")


class Unavailable(ApiError):
    def __init__(self) -> None:
        super().__init__("unavailable", "no OCR worker is running right now; retry later")


class PoolBootError(RuntimeError):
    """Workers cannot start; the message says why (it is shown to the operator)."""


class WorkerPool:
    """Runs `factory(spec)` in each worker and `handler(payload)` for each job.

    `factory` must be importable at module level (workers are started with 'spawn', which
    pickles it by reference). Results and errors come back as the futures of `submit`.
    """

    def __init__(self, factory: Callable[[Any], Callable[[Any], Any]], spec: Any,
                 config: PoolConfig, on_fatal: Callable[[str], None] | None = None,
                 start_method: str = "spawn") -> None:
        self.factory = factory
        self.spec = spec
        self.config = config
        self.on_fatal = on_fatal
        self.listeners: list[Callable[[str, Worker], None]] = []
        self._context = multiprocessing.get_context(start_method)
        self._workers: dict[int, Worker] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._ids = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._boot_deaths = 0
        self._closing = False
        self._fatal: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    # -- public ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts every worker and returns once all are ready; PoolBootError if they can't."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        for _ in range(self.config.size):
            self._spawn()
        while self.ready_count < self.config.size:
            if self._fatal:
                await self.close(timeout=0)
                raise PoolBootError(self._fatal)
            await self._wait_change()

    def submit(self, payload: Any) -> asyncio.Future:
        if self._closing:
            raise PoolClosed()
        if self.ready_count == 0:
            raise Unavailable()
        if len(self._queue) >= self.config.queue_size:
            raise QueueFull(self.config.queue_size)
        job = Job(next(self._job_ids), payload, self._loop.create_future())
        self._queue.append(job)
        self._dispatch()
        return job.future

    async def close(self, timeout: float = 30.0) -> None:
        """Stops taking jobs, lets queued and running jobs finish (up to `timeout` seconds),
        then stops every worker. Jobs still waiting after that fail with shutting_down."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while (self._queue or self.busy_count) and time.monotonic() < deadline and self.alive_count:
            await self._wait_change(deadline - time.monotonic())
        while self._queue:
            self._settle(self._queue.popleft(), error=PoolClosed())
        for worker in list(self._workers.values()):
            if worker.job is not None:
                # Still busy past the deadline: it would not read a stop message either.
                self._settle(worker.job, error=PoolClosed())
                self._kill(worker, "shutdown")
            else:
                self._stop(worker, "shutdown")
        stop_deadline = time.monotonic() + 10
        while self._workers and time.monotonic() < stop_deadline:
            await self._wait_change(stop_deadline - time.monotonic())
        for worker in list(self._workers.values()):
            self._kill(worker, "shutdown")
            self._forget(worker)

    @property
    def ready_count(self) -> int:
        return sum(w.state in (State.IDLE, State.BUSY) for w in self._workers.values())

    @property
    def alive_count(self) -> int:
        """Workers that can take or are taking jobs, plus those booting to join them."""
        return sum(w.state is not State.STOPPING for w in self._workers.values())

    @property
    def busy_count(self) -> int:
        return sum(w.job is not None for w in self._workers.values())

    @property
    def queued(self) -> int:
        return len(self._queue)

    def stats(self) -> dict:
        return {"size": self.config.size, "ready": self.ready_count, "busy": self.busy_count,
                "queued": len(self._queue), "closing": self._closing,
                "workers": [{"id": w.id, "pid": w.pid, "state": w.state.value,
                             "tasks_done": w.tasks_done} for w in self._workers.values()]}

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers.values() if w.pid is not None]

    def busy_pids(self) -> list[int]:
        return [w.pid for w in self._workers.values() if w.job is not None]

    # -- workers --------------------------------------------------------------------------

    def _spawn(self, replaces: Worker | None = None) -> Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        worker_id = next(self._ids)
        process = self._context.Process(
            target=worker_module.run_worker, args=(child_conn, self.factory, self.spec),
            name=f"ppocr-worker-{worker_id}", daemon=True)
        process.start()
        child_conn.close()
        jitter = random.randint(0, max(1, self.config.max_tasks // 10))
        worker = Worker(worker_id, process, parent_conn, self.config.max_tasks + jitter,
                        process.pid)
        self._workers[worker_id] = worker
        if replaces is not None:
            replaces.replacement = worker
        self._loop.add_reader(parent_conn.fileno(), self._on_message, worker)
        self._loop.add_reader(process.sentinel, self._on_exit, worker)
        worker.boot_timer = self._loop.call_later(self.config.boot_timeout, self._on_boot_timeout,
                                                  worker)
        log.info("worker %d started (pid %d)", worker_id, process.pid)
        return worker

    def _on_message(self, worker: Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            # The pipe closed: the process is dying; its sentinel will report the exit.
            self._loop.remove_reader(worker.conn.fileno())
            return
        self._handle(worker, message)

    def _handle(self, worker: Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            self._on_ready(worker)
        elif kind == "boot_error":
            self._halt(f"worker {worker.id} failed to boot: {message[1]}")
        elif kind == "result":
            self._on_result(worker, message[1], message[2], message[3])

    def _on_ready(self, worker: Worker) -> None:
        if worker.boot_timer:
            worker.boot_timer.cancel()
        self._boot_deaths = 0
        worker.state = State.IDLE
        log.info("worker %d ready (pid %d, %.1f s)", worker.id, worker.pid,
                 time.monotonic() - worker.started_at)
        for old in list(self._workers.values()):
            if old.replacement is worker and old.job is None:
                self._stop(old, "recycled")
        self._notify("ready", worker)
        self._dispatch()

    def _on_result(self, worker: Worker, job_id: int, ok: bool, value: Any) -> None:
        job = worker.job
        if job is None or job.id != job_id:
            return  # a result for a job we already timed out and gave up on
        worker.job = None
        worker.state = State.IDLE
        worker.tasks_done += 1
        if ok:
            self._settle(job, result=value)
        else:
            self._settle(job, error=value)
        if worker.replacement is not None and worker.replacement.state in (State.IDLE,
                                                                           State.BUSY):
            self._stop(worker, "recycled")  # its replacement is already serving
        elif worker.tasks_done >= worker.task_limit and worker.replacement is None \
                and not self._closing:
            log.info("worker %d recycling after %d tasks", worker.id, worker.tasks_done)
            self._spawn(replaces=worker)
        self._notify("done", worker)
        self._dispatch()

    def _on_exit(self, worker: Worker) -> None:
        try:
            # A message sent just before the exit (a result, a boot error) is still in the pipe.
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass
        self._forget(worker)
        exitcode = worker.process.exitcode
        if worker.ending is None and not self._closing:
            log.warning("worker %d (pid %d) died: %s", worker.id, worker.pid,
                        _describe_exit(exitcode))
        job, worker.job = worker.job, None
        if job is not None:
            job.attempts += 1
            if job.attempts <= self.config.retries and not self._closing:
                log.warning("retrying job %d on another worker", job.id)
                self._queue.appendleft(job)
            else:
                self._settle(job, error=ApiError("worker_crashed", f"the OCR worker died while reading this image "
                    f"({_describe_exit(exitcode)}), {job.attempts} time(s)"))
        if worker.state is State.BOOTING:
            self._boot_deaths += 1
            if self._boot_deaths >= MAX_BOOT_DEATHS:
                self._halt(f"workers keep dying before they are ready "
                           f"(last: {_describe_exit(exitcode)})")
        if worker.ending != "recycled" and not self._closing and self._fatal is None:
            replacement = self._spawn()
            for other in self._workers.values():
                if other.replacement is worker:  # a recycling replacement died: use the new one
                    other.replacement = replacement
        self._notify("exit", worker)
        self._dispatch()

    def _on_boot_timeout(self, worker: Worker) -> None:
        if worker.state is State.BOOTING:
            self._halt(f"worker {worker.id} did not become ready within "
                       f"{self.config.boot_timeout:.0f} s")

    def _on_job_timeout(self, job: Job) -> None:
        worker = job.worker
        if worker is None or worker.job is not job:
            return
        log.warning("job %d timed out after %.0f s; killing worker %d (pid %d)", job.id,
                    self.config.task_timeout, worker.id, worker.pid)
        worker.job = None  # the job ends here: no retry, a hung image would hang again
        self._settle(job, error=ApiError("timeout", f"reading the image took longer than {self.config.task_timeout:g} s"))
        self._kill(worker, "timed out")

    # -- helpers --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for worker in list(self._workers.values()):
            if not self._queue:
                return
            if worker.state is not State.IDLE or worker.job is not None:
                continue
            job = self._queue.popleft()
            if job.future.done():
                continue
            worker.state, worker.job, job.worker = State.BUSY, job, worker
            job.timer = self._loop.call_later(self.config.task_timeout, self._on_job_timeout, job)
            try:
                worker.conn.send(("job", job.id, job.payload))
            except OSError:
                # The worker died between two events; its sentinel fires next and retries the job.
                pass
            self._notify("dispatch", worker)

    def _settle(self, job: Job, result: Any = None, error: Any = None) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if job.future.done():
            return
        if error is None:
            job.future.set_result(result)
        elif isinstance(error, BaseException):
            job.future.set_exception(error)
        else:
            job.future.set_exception(ApiError.from_info(error))

    def _stop(self, worker: Worker, reason: str) -> None:
        """Asks an idle worker to exit after it has finished what it is doing."""
        if worker.state is State.STOPPING:
            return
        worker.state, worker.ending = State.STOPPING, reason
        try:
            worker.conn.send(("stop",))
        except OSError:
            pass

    def _kill(self, worker: Worker, reason: str) -> None:
        worker.state, worker.ending = State.STOPPING, reason
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _forget(self, worker: Worker) -> None:
        if self._workers.pop(worker.id, None) is None:
            return
        for fd in (worker.conn.fileno(), worker.process.sentinel):
            try:
                self._loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
        if worker.boot_timer:
            worker.boot_timer.cancel()
        worker.process.join(timeout=1)
        worker.conn.close()

    def _halt(self, message: str) -> None:
        if self._fatal is not None:
            return
        self._fatal = message
        log.error("halting the worker pool: %s", message)
        self._notify("fatal", None)
        if self.on_fatal is not None:
            self.on_fatal(message)

    def _notify(self, event: str, worker: Worker | None) -> None:
        if self._changed is not None:
            self._changed.set()
        for listener in self.listeners:
            listener(event, worker)

    async def _wait_change(self, timeout: float | None = None) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


def _error_from_worker(error: dict) -> ApiError:
    from .errors import error_from_dict

    return error_from_dict(error)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"
