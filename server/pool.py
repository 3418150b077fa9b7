"""A supervised pool of worker processes, parent side.

Model: one process per worker, one socket each (framed messages, `protocol`), and all
bookkeeping in the parent on the IOLoop thread, so nothing here needs a lock. The loop watches
each worker's socket (messages, non-blocking in both directions) and its process sentinel
(death) with `add_reader`: a dead worker is noticed at once, with no polling, and a worker that
stops reading can never block the loop. After every event one step, `_reconcile`, retires
recycled workers, tops the pool up to its size and dispatches.

- Dispatch: jobs wait in two bounded FIFO lanes. The interactive lane always goes first; the
  background lane (folder-job items) is dispatched only when no interactive job waits, and
  holds at most `background_workers` workers at once, or every worker once no interactive job
  came for `background_takeover_s` (an interactive job then waits for one item at most, instead
  of half the machine idling between requests). A full lane refuses new jobs (QueueFull
  -> 503) instead of growing without bound; with no worker alive, new jobs are refused
  (Unavailable -> 503) until one is back.
- Hand-over: a worker answers `Started` as soon as it takes a job. One that has not within
  `ping_timeout` (stopped, wedged) is killed and replaced, and its job goes back to the front of
  its lane: it never ran, so this is not one of its retries.
- Liveness: an idle worker is pinged every `ping_interval`; one that does not answer within
  `ping_timeout` is killed and replaced. Only workers that answer count as ready.
- Timeouts: every dispatched job arms a timer that covers the hand-over too. When it fires the
  worker is killed (SIGKILL), the job fails with JobTimedOut (504) and a fresh worker replaces
  the old one.
- Crashes: a worker that dies mid-job is replaced and its job is retried once on another worker;
  a second death fails the job (WorkerCrashed). A poison image costs two workers, never a hung
  client.
- Recycling: after `max_tasks` jobs (plus a random jitter so workers do not restart together),
  or when its resident memory after a job passes `max_worker_rss_mb`, a replacement is started;
  the old worker keeps serving until the new one is ready, then finishes its current job and
  exits. No job is lost and capacity never dips.
- Spawning: a worker that cannot be started (EMFILE, ENOMEM, ...) is retried with exponential
  backoff for as long as it takes; the failure is logged once per interval.
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

from . import protocol
from .errors import ErrorInfo
from .logs import Throttled
from .worker import run_worker

log = logging.getLogger("ppocr.pool")

# Consecutive deaths before "ready" (without a boot_error message) that count as a boot failure.
MAX_BOOT_DEATHS = 3
# Hand-overs a job may lose to unresponsive workers before it fails as unavailable.
MAX_HANDOVERS = 2
SPAWN_BACKOFF_FIRST, SPAWN_BACKOFF_MAX = 0.1, 10.0


@dataclass(frozen=True)
class PoolConfig:
    size: int = 2
    max_tasks: int = 1000
    task_timeout: float = 60.0
    queue_size: int = 64
    boot_timeout: float = 180.0
    retries: int = 1
    ping_interval: float = 5.0
    ping_timeout: float = 10.0
    max_worker_rss_mb: int = 0  # 0: no memory-based recycling
    background_workers: int = 0  # 0: all workers but one (one when the pool has one)
    # After this many seconds without an interactive job, background jobs may hold every
    # worker (an interactive job then waits for one item at most); 0: never.
    background_takeover_s: float = 0.0

    @property
    def background_cap(self) -> int:
        return self.background_workers or max(1, self.size - 1)


class Lane(enum.IntEnum):
    INTERACTIVE = 0
    BACKGROUND = 1


class State(enum.Enum):
    BOOTING = "booting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"


# Why a worker ended (worker_exited's `reason`).
RECYCLED, MEMORY, CRASHED, TIMED_OUT, UNRESPONSIVE, BOOT_FAILURE, SHUTDOWN = (
    "recycled", "memory", "crashed", "timed_out", "unresponsive", "boot_failure", "shutdown")


# --- errors the pool raises (the server maps them to HTTP, server/errors.py) --------------------


class PoolError(Exception):
    code = "internal_error"

    @property
    def message(self) -> str:
        return str(self)


class PoolClosed(PoolError):
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("the server is shutting down")


class QueueFull(PoolError):
    code = "queue_full"

    def __init__(self, size: int) -> None:
        super().__init__(f"all workers are busy and {size} requests are already waiting; "
                         "retry later")


class Unavailable(PoolError):
    code = "unavailable"

    def __init__(self) -> None:
        super().__init__("no OCR worker is running right now; retry later")


class WorkerCrashed(PoolError):
    code = "worker_crashed"


class JobTimedOut(PoolError):
    code = "timeout"


class JobFailed(PoolError):
    """The handler raised inside the worker; `info` is what it sent."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info
        self.code = info.code


class PoolBootError(RuntimeError):
    """Workers cannot start; the message says why (it is shown to the operator)."""


# --- bookkeeping --------------------------------------------------------------------------------


@dataclass
class PoolJob:
    id: int
    payload: Any
    future: asyncio.Future
    lane: Lane
    request_id: str | None = None
    attempts: int = 0
    handovers: int = 0
    started: bool = False
    dispatched_at: float = 0.0
    timer: asyncio.TimerHandle | None = None
    handover_timer: asyncio.TimerHandle | None = None
    worker: Worker | None = None

    def cancel_timers(self) -> None:
        for timer in (self.timer, self.handover_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.handover_timer = None


@dataclass
class Worker:
    id: int
    process: multiprocessing.process.BaseProcess
    conn: Any
    channel: protocol.Channel
    task_limit: int
    pid: int
    state: State = State.BOOTING
    job: PoolJob | None = None
    tasks_done: int = 0
    rss_bytes: int = 0
    # Set when the pool itself ends the worker (recycled, timed out, shutting down): its exit is
    # expected and not logged as a death.
    ending: str | None = None
    recycle_reason: str | None = None
    replacement: Worker | None = None
    started_at: float = field(default_factory=time.monotonic)
    boot_timer: asyncio.TimerHandle | None = None
    ping_seq: int = 0
    ping_sent_at: float | None = None
    exited: bool = False  # its sentinel fired: never hand it another job

    @property
    def serving(self) -> bool:
        return self.state in (State.IDLE, State.BUSY)


class PoolObserver:
    """What the pool tells tests and metrics. Every method is a no-op here; override some."""

    def worker_started(self, worker: Worker) -> None: ...
    def worker_ready(self, worker: Worker) -> None: ...
    def job_dispatched(self, worker: Worker, job: PoolJob) -> None: ...
    def job_finished(self, worker: Worker, job: PoolJob, duration_s: float, ok: bool) -> None: ...
    def worker_exited(self, worker: Worker, reason: str, exitcode: int | None) -> None: ...
    def queue_refused(self, lane: Lane, code: str) -> None: ...
    def fatal(self, message: str) -> None: ...


class WorkerPool:
    """Runs `factory(spec)` in each worker and `handler(payload)` for each job.

    `factory` must be importable at module level (workers are started with 'spawn', which
    pickles it by reference). Results and errors come back as the futures of `submit`.
    """

    def __init__(self, factory: Callable[[Any], Callable[[Any], Any]], spec: Any,
                 config: PoolConfig, on_fatal: Callable[[str], None] | None = None,
                 start_method: str = "spawn",
                 observers: list[PoolObserver] | None = None, log_format: str = "text") -> None:
        self.factory = factory
        self.spec = spec
        self.config = config
        self.on_fatal = on_fatal
        self.observers: list[PoolObserver] = list(observers or [])
        self.log_format = log_format
        self._context = multiprocessing.get_context(start_method)
        self._workers: dict[int, Worker] = {}
        self._lanes: dict[Lane, collections.deque[PoolJob]] = {
            lane: collections.deque() for lane in Lane}
        self._ids = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._boot_deaths = 0
        self._closing = False
        self._fatal: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._spawn_backoff = 0.0
        self._spawn_retry: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._takeover_timer: asyncio.TimerHandle | None = None
        self._last_interactive = float("-inf")
        self._throttled = Throttled(log)

    # -- public ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts every worker and returns once all are ready; PoolBootError if they can't."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._reconcile()
        self._schedule_ping()
        while self.ready_count < self.config.size:
            if self._fatal:
                await self.close(timeout=0)
                raise PoolBootError(self._fatal)
            await self._wait_change()

    def submit(self, payload: Any, lane: Lane = Lane.INTERACTIVE,
               request_id: str | None = None) -> asyncio.Future:
        if self._closing:
            self._refused(lane, PoolClosed())
        if self.ready_count == 0:
            self._refused(lane, Unavailable())
        if len(self._lanes[lane]) >= self.config.queue_size:
            self._refused(lane, QueueFull(self.config.queue_size))
        job = PoolJob(next(self._job_ids), payload, self._loop.create_future(), lane, request_id)
        if lane is Lane.INTERACTIVE:
            self._interactive_seen()
        self._lanes[lane].append(job)
        self._reconcile()
        return job.future

    def promote(self, future: asyncio.Future) -> bool:
        """Moves the queued background job of `future` to the end of the interactive lane (an
        interactive request now waits for it). False when it is not waiting there any more."""
        background = self._lanes[Lane.BACKGROUND]
        for job in background:
            if job.future is future:
                background.remove(job)
                job.lane = Lane.INTERACTIVE
                self._interactive_seen()
                self._lanes[Lane.INTERACTIVE].append(job)
                self._reconcile()
                return True
        return False

    async def close(self, timeout: float = 30.0) -> None:
        """Stops taking jobs, lets queued and running jobs finish (up to `timeout` seconds),
        then stops every worker. Jobs still waiting after that fail with PoolClosed."""
        self._closing = True
        for timer in (self._spawn_retry, self._ping_timer, self._takeover_timer):
            if timer is not None:
                timer.cancel()
        deadline = time.monotonic() + timeout
        while (self.queued or self.busy_count) and time.monotonic() < deadline \
                and self.alive_count:
            await self._wait_change(deadline - time.monotonic())
        for lane in self._lanes.values():
            while lane:
                self._settle(lane.popleft(), error=PoolClosed())
        for worker in list(self._workers.values()):
            if worker.job is not None:
                # Still busy past the deadline: it would not read a stop message either.
                self._settle(worker.job, error=PoolClosed())
                self._kill(worker, SHUTDOWN)
            else:
                self._stop(worker, SHUTDOWN)
        stop_deadline = time.monotonic() + 10
        while self._workers and time.monotonic() < stop_deadline:
            await self._wait_change(stop_deadline - time.monotonic())
        for worker in list(self._workers.values()):
            self._kill(worker, SHUTDOWN)
            self._forget(worker)

    @property
    def ready_count(self) -> int:
        """Workers that are loaded and answering (a stopped one stops counting within
        `ping_interval`, and is replaced after `ping_timeout`)."""
        now = time.monotonic()
        return sum(w.serving and self._responsive(w, now) for w in self._workers.values())

    @property
    def alive_count(self) -> int:
        """Workers that can take or are taking jobs, plus those booting to join them."""
        return sum(w.state is not State.STOPPING for w in self._workers.values())

    @property
    def busy_count(self) -> int:
        return sum(w.job is not None for w in self._workers.values())

    @property
    def background_busy(self) -> int:
        """Workers holding a background (folder-job) job."""
        return sum(w.job is not None and w.job.lane is Lane.BACKGROUND
                   for w in self._workers.values())

    @property
    def queued(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def stats(self) -> dict:
        now = time.monotonic()
        return {"size": self.config.size, "ready": self.ready_count, "busy": self.busy_count,
                "queued": len(self._lanes[Lane.INTERACTIVE]),
                "queued_background": len(self._lanes[Lane.BACKGROUND]),
                "closing": self._closing,
                "workers": [{"id": w.id, "pid": w.pid, "state": w.state.value,
                             "tasks_done": w.tasks_done, "rss_mb": round(w.rss_bytes / 2**20),
                             "responsive": self._responsive(w, now)}
                            for w in self._workers.values()]}

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers.values() if w.pid is not None]

    def busy_pids(self) -> list[int]:
        return [w.pid for w in self._workers.values() if w.job is not None]

    # -- the one step after every event ---------------------------------------------------

    def _reconcile(self) -> None:
        if self._loop is None:
            return
        for worker in list(self._workers.values()):
            replacement = worker.replacement
            if replacement is not None and replacement.id not in self._workers:
                worker.replacement = None  # it died while booting: find another
            if worker.state is State.IDLE and worker.job is None and worker.replacement \
                    is not None and worker.replacement.serving:
                self._stop(worker, worker.recycle_reason or RECYCLED)
        if not self._closing and self._fatal is None:
            self._top_up()
        self._dispatch()
        if self._changed is not None:
            self._changed.set()

    def _top_up(self) -> None:
        if self._spawn_retry is not None and self._spawn_retry.when() > self._loop.time():
            return  # backing off after a failed spawn
        # A worker on its way out (recycled) no longer counts; its replacement does.
        counted = sum(w.state is not State.STOPPING and not w.recycle_reason
                      for w in self._workers.values())
        wanted: list[Worker | None] = [w for w in self._workers.values()
                                       if w.serving and w.recycle_reason and w.replacement is None]
        wanted += [None] * max(0, self.config.size - counted - len(wanted))
        for replaces in wanted:
            try:
                self._spawn(replaces)
            except OSError as exc:
                self._spawn_backoff = min(SPAWN_BACKOFF_MAX,
                                          max(SPAWN_BACKOFF_FIRST, self._spawn_backoff * 2))
                self._throttled.warning("spawn", "cannot start a worker (%s); retrying in "
                                        "%.1f s", exc, self._spawn_backoff)
                self._spawn_retry = self._loop.call_later(self._spawn_backoff, self._reconcile)
                return
            self._spawn_backoff = 0.0

    def _dispatch(self) -> None:
        for worker in list(self._workers.values()):
            if worker.state is not State.IDLE or worker.job is not None or worker.exited:
                continue
            if worker.replacement is not None and worker.replacement.serving:
                continue  # retiring
            job = self._next_job()
            if job is None:
                return
            self._hand_over(worker, job)

    def _next_job(self) -> PoolJob | None:
        interactive = self._lanes[Lane.INTERACTIVE]
        while interactive:
            job = interactive.popleft()
            if not job.future.done():
                return job
        background = self._lanes[Lane.BACKGROUND]
        while background and self.background_busy < self._background_limit():
            job = background.popleft()
            if not job.future.done():
                return job
        return None

    def _background_limit(self) -> int:
        """Workers the background lane may hold now: its cap while interactive traffic is
        recent, every worker once none came for `background_takeover_s`."""
        takeover = self.config.background_takeover_s
        if takeover > 0 and time.monotonic() - self._last_interactive >= takeover:
            return self.config.size
        return self.config.background_cap

    def _interactive_seen(self) -> None:
        self._last_interactive = time.monotonic()
        takeover = self.config.background_takeover_s
        if takeover > 0:  # when the quiet period ends, waiting background jobs may go out
            if self._takeover_timer is not None:
                self._takeover_timer.cancel()
            self._takeover_timer = self._loop.call_later(takeover, self._reconcile)

    def _hand_over(self, worker: Worker, job: PoolJob) -> None:
        worker.state, worker.job, job.worker = State.BUSY, job, worker
        job.started, job.dispatched_at = False, time.monotonic()
        job.timer = self._loop.call_later(self.config.task_timeout, self._on_job_timeout, job)
        job.handover_timer = self._loop.call_later(self.config.ping_timeout,
                                                   self._on_handover_timeout, job)
        worker.channel.send(protocol.Job(job.id, job.payload, job.request_id))
        for observer in self.observers:
            observer.job_dispatched(worker, job)

    # -- workers --------------------------------------------------------------------------

    def _spawn(self, replaces: Worker | None = None) -> Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        worker_id = next(self._ids)
        try:
            process = self._context.Process(
                target=run_worker, args=(child_conn, self.factory, self.spec, self.log_format),
                name=f"ppocr-worker-{worker_id}", daemon=True)
            process.start()
        except BaseException:
            parent_conn.close()
            child_conn.close()
            raise
        child_conn.close()
        jitter = random.randint(0, max(1, self.config.max_tasks // 10))
        worker = Worker(worker_id, process, parent_conn, None, self.config.max_tasks + jitter,
                        process.pid)
        worker.channel = protocol.Channel(parent_conn.fileno(), self._loop,
                                          lambda message: self._on_message(worker, message))
        self._workers[worker_id] = worker
        if replaces is not None:
            replaces.replacement = worker
        self._loop.add_reader(process.sentinel, self._on_exit, worker)
        worker.boot_timer = self._loop.call_later(self.config.boot_timeout, self._on_boot_timeout,
                                                  worker)
        log.info("worker %d started (pid %d)%s", worker_id, process.pid,
                 f" to replace worker {replaces.id}" if replaces else "")
        for observer in self.observers:
            observer.worker_started(worker)
        return worker

    def _on_message(self, worker: Worker, message: Any) -> None:
        worker.ping_sent_at = None  # any message proves it is alive
        if isinstance(message, protocol.Ready):
            self._on_ready(worker)
        elif isinstance(message, protocol.BootError):
            self._halt(f"worker {worker.id} failed to boot: {message.message}")
        elif isinstance(message, protocol.Started):
            job = worker.job
            if job is not None and job.id == message.job_id:
                job.started = True
                if job.handover_timer is not None:
                    job.handover_timer.cancel()
        elif isinstance(message, (protocol.Result, protocol.Failure)):
            self._on_job_end(worker, message)
        elif isinstance(message, protocol.Pong):
            pass
        else:
            log.warning("worker %d sent an unknown message: %r", worker.id, type(message))

    def _on_ready(self, worker: Worker) -> None:
        if worker.boot_timer:
            worker.boot_timer.cancel()
        self._boot_deaths = 0
        worker.state = State.IDLE
        log.info("worker %d ready (pid %d, %.1f s)", worker.id, worker.pid,
                 time.monotonic() - worker.started_at)
        for observer in self.observers:
            observer.worker_ready(worker)
        self._reconcile()

    def _on_job_end(self, worker: Worker, message: protocol.Result | protocol.Failure) -> None:
        job = worker.job
        if job is None or job.id != message.job_id:
            return  # a result for a job we already timed out and gave up on
        worker.job = None
        worker.state = State.IDLE
        worker.tasks_done += 1
        worker.rss_bytes = message.rss_bytes
        ok = isinstance(message, protocol.Result)
        if ok:
            self._settle(job, result=message.value)
        else:
            self._settle(job, error=JobFailed(message.error))
        for observer in self.observers:
            observer.job_finished(worker, job, time.monotonic() - job.dispatched_at, ok)
        if worker.recycle_reason is None and not self._closing:
            limit_mb = self.config.max_worker_rss_mb
            if limit_mb and message.rss_bytes > limit_mb * 2**20:
                worker.recycle_reason = MEMORY
                log.info("worker %d (pid %d) recycling: %d MB resident after a job (limit "
                         "%d MB)", worker.id, worker.pid, message.rss_bytes // 2**20, limit_mb)
            elif worker.tasks_done >= worker.task_limit:
                worker.recycle_reason = RECYCLED
                log.info("worker %d (pid %d) recycling after %d tasks", worker.id, worker.pid,
                         worker.tasks_done)
        self._reconcile()

    def _on_exit(self, worker: Worker) -> None:
        # A message sent just before the exit (a result, a boot error) may still be unread.
        worker.exited = True
        worker.channel.read_available()
        self._forget(worker)
        exitcode = worker.process.exitcode
        was_booting = worker.state is State.BOOTING
        reason = worker.ending or (BOOT_FAILURE if was_booting else CRASHED)
        if worker.ending is None and not self._closing:
            busy = f" during job {worker.job.id} (request {worker.job.request_id})" \
                if worker.job is not None else ""
            log.warning("worker %d (pid %d) died%s: %s", worker.id, worker.pid, busy,
                        _describe_exit(exitcode))
        job, worker.job = worker.job, None
        if job is not None:
            job.cancel_timers()
            job.attempts += 1
            if job.attempts <= self.config.retries and not self._closing:
                log.warning("retrying job %d (request %s) on another worker", job.id,
                            job.request_id)
                self._lanes[job.lane].appendleft(job)
            else:
                self._settle(job, error=WorkerCrashed(
                    f"the OCR worker died while reading this image ({_describe_exit(exitcode)}),"
                    f" {job.attempts} time(s)"))
        if was_booting and worker.ending is None:
            self._boot_deaths += 1
            if self._boot_deaths >= MAX_BOOT_DEATHS:
                self._halt(f"workers keep dying before they are ready "
                           f"(last: {_describe_exit(exitcode)})")
        for observer in self.observers:
            observer.worker_exited(worker, reason, exitcode)
        self._reconcile()

    def _on_boot_timeout(self, worker: Worker) -> None:
        if worker.state is State.BOOTING:
            self._halt(f"worker {worker.id} did not become ready within "
                       f"{self.config.boot_timeout:.0f} s")

    def _on_job_timeout(self, job: PoolJob) -> None:
        worker = job.worker
        if worker is None or worker.job is not job:
            return
        log.warning("job %d (request %s) timed out after %.0f s; killing worker %d (pid %d)",
                    job.id, job.request_id, self.config.task_timeout, worker.id, worker.pid)
        worker.job = None  # the job ends here: no retry, a hung image would hang again
        self._settle(job, error=JobTimedOut(
            f"reading the image took longer than {self.config.task_timeout:g} s"))
        self._kill(worker, TIMED_OUT)

    def _on_handover_timeout(self, job: PoolJob) -> None:
        worker = job.worker
        if worker is None or worker.job is not job or job.started:
            return
        log.warning("worker %d (pid %d) did not take job %d within %.0f s; killing it",
                    worker.id, worker.pid, job.id, self.config.ping_timeout)
        worker.job = None
        job.cancel_timers()
        job.handovers += 1
        if job.handovers > MAX_HANDOVERS:
            self._settle(job, error=Unavailable())
        else:
            self._lanes[job.lane].appendleft(job)  # it never ran: not one of its retries
        self._kill(worker, UNRESPONSIVE)
        self._reconcile()

    # -- liveness -------------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        period = min(self.config.ping_interval, self.config.ping_timeout) / 2
        self._ping_timer = self._loop.call_later(period, self._ping_tick)

    def _ping_tick(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.state is not State.IDLE or worker.job is not None:
                continue
            if worker.ping_sent_at is None:
                worker.ping_seq += 1
                worker.ping_sent_at = now
                worker.channel.send(protocol.Ping(worker.ping_seq))
            elif now - worker.ping_sent_at > self.config.ping_timeout:
                log.warning("worker %d (pid %d) did not answer a ping within %.0f s; "
                            "killing it", worker.id, worker.pid, self.config.ping_timeout)
                self._kill(worker, UNRESPONSIVE)
        if not self._closing:
            self._schedule_ping()
        self._reconcile()

    def _responsive(self, worker: Worker, now: float) -> bool:
        if worker.ping_sent_at is not None and now - worker.ping_sent_at > \
                self.config.ping_interval:
            return False
        job = worker.job
        return job is None or job.started or now - job.dispatched_at <= self.config.ping_interval

    # -- helpers --------------------------------------------------------------------------

    def _settle(self, job: PoolJob, result: Any = None, error: BaseException | None = None
                ) -> None:
        job.cancel_timers()
        if job.future.done():
            return
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)

    def _refused(self, lane: Lane, error: PoolError) -> None:
        for observer in self.observers:
            observer.queue_refused(lane, error.code)
        if isinstance(error, QueueFull):
            self._throttled.warning("queue_full", "queue full: refusing requests with 503")
        raise error

    def _stop(self, worker: Worker, reason: str) -> None:
        """Asks an idle worker to exit after it has finished what it is doing."""
        if worker.state is State.STOPPING:
            return
        worker.state, worker.ending = State.STOPPING, reason
        if reason != SHUTDOWN:
            log.info("worker %d (pid %d) retiring (%s)", worker.id, worker.pid, reason)
        worker.channel.send(protocol.Stop())

    def _kill(self, worker: Worker, reason: str) -> None:
        worker.state, worker.ending = State.STOPPING, reason
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _forget(self, worker: Worker) -> None:
        if self._workers.pop(worker.id, None) is None:
            return
        worker.channel.close()
        try:
            self._loop.remove_reader(worker.process.sentinel)
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
        for observer in self.observers:
            observer.fatal(message)
        if self._changed is not None:
            self._changed.set()
        if self.on_fatal is not None:
            self.on_fatal(message)

    async def _wait_change(self, timeout: float | None = None) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"
