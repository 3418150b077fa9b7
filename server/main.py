"""Start-up and shutdown: build the worker spec from the config, start the pool, open the job
store (service.state_dir) and start the job runner, which resumes unfinished jobs, open the
task store (non-blocking documents and batches) and redo the tasks it holds pending, then serve
HTTP. On SIGTERM the runner stops first (its items in flight finish and are committed), then
the pool (a task it cuts short stays pending, for the next start), then the task store once
the tasks' outcomes are written.

Signals only set an event (the handler does nothing else); the main coroutine then stops the
listener, refuses new requests, lets accepted ones finish, stops the workers and returns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from ocr_engine import ModelNotFoundError, PdfSandbox, custom_model_paths, resolve_model_set
from ocr_engine.autoselect import (
    AutoSelectError,
    BackendChoice,
    cpu_flags,
    resolve_precision,
    select_backend,
)
from ocr_engine.backends import StagePrecision

from .app import make_app
from .cluster import SharedState
from .config import Config
from .documents import resume_tasks, window_for
from .handlers.base import AppContext, HttpPolicy, Lifecycle, Services
from .http import GuardedHTTPServer, raise_fd_limit
from .jobs import JobLimits, JobRunner
from .logs import configure_logging
from .metrics import Metrics, build_metrics
from .ocr_worker import boot
from .pool import PoolBootError, PoolConfig, WorkerPool
from .protocol import EngineSpec
from .request import RequestPolicy, option_bases
from .service import OcrService
from .store import JobStore, LastingTaskStore, ResultCache, TaskStore
from .store.memory import MemoryResultCache, MemoryTaskStore
from .store.redis_jobs import RedisJobStore
from .store.sqlite import SqliteJobStore, SqliteTaskStore

log = logging.getLogger("ppocr")

EXIT_OK, EXIT_BOOT_FAILURE = 0, 3
JOBS_FILE = "jobs.sqlite3"  # in service.state_dir
TASKS_FILE = "tasks.sqlite3"  # in service.state_dir
# Pending tasks' spooled requests, in service.state_dir (not under the job runner's "spool",
# whose every entry that is not a job's is deleted at start).
TASK_SPOOL = "task-spool"
JOBS_REDIS_TIMEOUT_S = 10.0  # one job-store command to Redis (service.redis_url)


def build_engine_spec(config: Config) -> EngineSpec:
    """Resolves every model set now, so a missing model stops the server before any worker.

    With `backend: "auto"` this measures the candidates first (child processes, up to a
    minute) unless service.state_dir holds a choice for this machine: call it off the IOLoop.
    """
    system = config.ocr.predict_system
    models_dir = config.resolve(system.models_dir)
    choice = choose_backend(config)
    backend = choice.name
    models = {}
    if system.det_model_dir or system.rec_model_dir:
        if not (system.det_model_dir and system.rec_model_dir):
            raise ModelNotFoundError("custom models need both det_model_dir and rec_model_dir")
        paths = custom_model_paths(
            backend, str(config.resolve(system.det_model_dir)),
            str(config.resolve(system.rec_model_dir)),
            str(config.resolve(system.cls_model_dir)) if system.cls_model_dir else None,
            str(config.resolve(system.rec_char_dict_path)) if system.rec_char_dict_path else None,
            rec_image_shape=system.rec_shape())
        models[system.model] = paths
    else:
        models[system.model] = resolve_model_set(system.model, backend, models_dir)
    for name in system.models:
        models[name] = resolve_model_set(name, backend, models_dir)
    sandbox = PdfSandbox(system.pdf_memory_mb,
                         system.pdf_timeout_s(config.ocr.process.task_timeout))
    return EngineSpec(models=models, backend=backend, precision=choice.precision,
                      backend_choice=choice.to_dict(), threads=config.threads_per_worker,
                      max_pixels=system.max_pixels, rec_batch_size=system.rec_batch_num,
                      cls_batch_size=system.cls_batch_num, defaults=system.default_options(),
                      limits=system.engine_limits(), pdf_sandbox=sandbox)


def choose_backend(config: Config) -> BackendChoice:
    """The configured backend and precision ("auto" precision resolved for this CPU), or, for
    `backend: "auto"`, the measured choice (ocr_engine/autoselect.py), logged either way."""
    system = config.ocr.predict_system
    if system.backend != "auto":
        choice = BackendChoice(system.backend, resolve_precision(
            system.backend, system.precision, cpu_flags()), "config")
    elif system.det_model_dir or system.rec_model_dir:
        # Custom files are in one format: the backend that reads it, unmeasured.
        backend = "onnxruntime" if str(system.det_model_dir).endswith(".onnx") else "paddle"
        choice = BackendChoice(backend, StagePrecision(), "config",
                               {"reason": "custom model files: the backend of their format"})
    else:
        try:
            # Kept with the models it was measured on (keyed by CPU flags, package versions,
            # model files and threads): every server on this machine using them reuses it.
            models_dir = config.resolve(system.models_dir)
            choice = select_backend(system.precision, config.threads_per_worker, models_dir,
                                    system.model, models_dir)
        except AutoSelectError as exc:
            raise ModelNotFoundError(f"backend auto: {exc}") from None
    log.info("backend %s, precision %s (chosen by %s%s)", choice.name,
             choice.precision.describe(), choice.chosen_by,
             ", reused from the models folder" if choice.details.get("reused") else "")
    return choice


def pool_config(config: Config) -> PoolConfig:
    process = config.ocr.process
    return PoolConfig(size=process.number, max_tasks=process.max_task_number,
                      task_timeout=process.task_timeout, queue_size=process.queue_size,
                      boot_timeout=process.boot_timeout, ping_interval=process.ping_interval,
                      ping_timeout=process.ping_timeout,
                      max_worker_rss_mb=process.max_worker_rss_mb,
                      background_workers=config.jobs.max_workers,
                      background_takeover_s=config.jobs.idle_takeover)


def job_limits(config: Config) -> JobLimits:
    jobs = config.jobs
    pool = pool_config(config)
    # With the idle takeover the pool may give the job every worker: keep enough items queued.
    in_flight = max(pool.size, pool.background_cap) if pool.background_takeover_s > 0 \
        else pool.background_cap
    return JobLimits(max_in_flight=in_flight,
                     retention=jobs.retention, max_items=jobs.max_items,
                     max_zip_entries=jobs.max_zip_entries, max_zip_bytes=jobs.max_zip_bytes)


def build_job_store(config: Config) -> JobStore:
    """The job store: in Redis when service.redis_url is set (shared by the nodes, which
    take the items from its stream), else the SQLite file in service.state_dir."""
    service_config = config.service
    if not service_config.redis_url:
        return SqliteJobStore(config.resolve(service_config.state_dir) / JOBS_FILE)
    # Its own client: a stream read blocks for a second and a new job's script may run for
    # one, past service.redis_timeout (the cache's bound), so job traffic has its own. One
    # retry on a connection error: a pooled connection is stale after Redis restarted.
    client = aioredis.Redis.from_url(
        service_config.redis_url, socket_timeout=JOBS_REDIS_TIMEOUT_S,
        socket_connect_timeout=max(1.0, service_config.redis_timeout),
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        client_name="ppocr-jobs")
    consumer = config.jobs.redis_consumer or f"{socket.gethostname()}:{config.web_server.port}"
    return RedisJobStore(client, service_config.redis_prefix, consumer=consumer,
                         claim_idle=config.jobs.redis_claim_idle,
                         retention=config.jobs.retention, close_client=True)


def build_task_store(config: Config) -> SqliteTaskStore:
    """The lasting task store in service.state_dir (opened by the caller, once the folder
    exists). Expired tasks are swept every quarter of task_ttl (15 s to an hour)."""
    service_config = config.service
    state_dir = config.resolve(service_config.state_dir)
    return SqliteTaskStore(state_dir / TASKS_FILE, state_dir / TASK_SPOOL,
                           service_config.max_tasks, service_config.task_ttl,
                           sweep_interval=min(3600.0, max(15.0, service_config.task_ttl / 4)))


def build_context(config: Config, pool: WorkerPool, spec: EngineSpec,
                  metrics: Metrics | None = None, job_store: JobStore | None = None,
                  task_store: LastingTaskStore | None = None,
                  shared: SharedState | None = None) -> AppContext:
    """The handlers' context. With a `job_store`, folder jobs are on: the context's
    `services.jobs` runner must then be started (and closed) by the caller. With a
    `task_store` (opened and closed by the caller), non-blocking documents and batches are
    kept there; else in memory, with single images' tasks. With `shared` (service.redis_url,
    started by the caller) the result cache and the tasks are shared through Redis and
    identical runs across nodes (server/cluster.py); `task_store` is then the caller's
    `shared.tasks(...)` mirror."""
    service_config = config.service
    cache: ResultCache = MemoryResultCache(service_config.img_number, service_config.time)
    tasks: TaskStore = MemoryTaskStore(service_config.max_tasks, service_config.task_ttl)
    if shared is not None:  # every node's cache and tasks, this node's memory behind them
        cache, tasks = shared.cache, shared.tasks(tasks)
    ocr = OcrService(lambda job, request_id, lane: pool.submit(job, lane, request_id),
                     cache, tasks, promote=pool.promote, lasting_tasks=task_store,
                     cluster=shared.runs if shared is not None else None)
    web = config.web_server
    bases = option_bases({name: getattr(paths, "det_defaults", None) or {}
                          for name, paths in spec.models.items()},
                         config.ocr.predict_system.configured_options(),
                         config.ocr.predict_system.preset)
    requests = RequestPolicy(
        defaults=bases[config.ocr.predict_system.model, None],
        default_model=config.ocr.predict_system.model,
        models=tuple(spec.models),
        filename_roots=tuple(config.resolve(root) for root in service_config.filename_roots),
        max_body_size=web.max_body_size, default_dpi=config.ocr.predict_system.dpi,
        max_pages=service_config.max_pages, max_batch=service_config.max_batch,
        max_pixels=config.ocr.predict_system.max_pixels,
        response_format=service_config.response_format,
        bases=bases)
    jobs = None
    if job_store is not None:
        jobs = JobRunner(job_store, ocr, requests, job_limits(config),
                         config.resolve(service_config.state_dir),
                         on_item_finished=metrics.job_item_finished if metrics else None,
                         stream=job_store if isinstance(job_store, RedisJobStore) else None)
    if metrics is not None and shared is not None:
        metrics.watch_redis(shared.link, shared.runs)
    if metrics is not None:
        metrics.watch(pool, ocr, running_jobs=(lambda: jobs.running_jobs) if jobs else
                      (lambda: 0))
    return AppContext(http=HttpPolicy(api_token=web.api_token,
                                      cors_origins=tuple(web.cors_origins),
                                      request_timeout=web.request_timeout),
                      requests=requests, lifecycle=Lifecycle(),
                      services=Services(pool=pool, ocr=ocr, metrics=metrics, jobs=jobs))


def build_http_server(config: Config, context: AppContext) -> GuardedHTTPServer:
    web = config.web_server
    return GuardedHTTPServer(make_app(context), max_connections=raise_fd_limit(web.max_connections),
                             idle_connection_timeout=web.header_timeout,
                             body_timeout=web.body_timeout,
                             # Each handler enforces its own body limit (a JSON 413).
                             max_body_size=1 << 62)


async def serve(config: Config) -> int:
    # Off the IOLoop: backend "auto" may time the backends first (child processes).
    spec = await asyncio.to_thread(build_engine_spec, config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    exit_code = EXIT_OK

    def on_fatal(message: str) -> None:
        nonlocal exit_code
        exit_code = EXIT_BOOT_FAILURE
        loop.call_soon(stop.set)

    metrics = build_metrics(config)  # the pool reports to it; /metrics serves it
    pool = WorkerPool(boot, spec, pool_config(config), on_fatal=on_fatal,
                      observers=[metrics] if metrics is not None else None,
                      log_format=config.web_server.log_format)
    log.info("starting %d workers (%d threads each, backend %s, models %s)",
             config.ocr.process.number, spec.threads, spec.backend,
             ", ".join(spec.models))
    try:
        await pool.start()
    except PoolBootError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_BOOT_FAILURE
    state_dir = config.resolve(config.service.state_dir)
    task_store = build_task_store(config)
    shared = SharedState(config) if config.service.redis_url else None
    if shared is not None:
        await shared.start()  # never fails: a Redis down at start leaves the node degraded
        task_store = shared.tasks(task_store)  # kept here (restart-resume), readable anywhere
    context = build_context(config, pool, spec, metrics, build_job_store(config), task_store,
                            shared=shared)
    jobs, ocr = context.services.jobs, context.services.ocr
    try:
        await jobs.start()  # after the pool: resumed jobs read at once
    except Exception as exc:  # noqa: BLE001 - any failure to open the state must stop the start
        log.error("cannot start: the job store in %s: %s", state_dir, exc)
        await jobs.close()
        await pool.close(timeout=0)
        return EXIT_BOOT_FAILURE
    try:
        await task_store.open()  # the job runner has made the state folder
    except Exception as exc:  # noqa: BLE001 - the same
        log.error("cannot start: the task store in %s: %s", state_dir, exc)
        await task_store.close()
        await jobs.close()
        await pool.close(timeout=0)
        return EXIT_BOOT_FAILURE
    process = config.ocr.process
    await resume_tasks(ocr, task_store, context.requests,
                       window=window_for(process.number, process.queue_size))
    server = build_http_server(config, context)
    server.listen(config.web_server.port, config.web_server.address)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("ppocr-server listening on %s:%d", config.web_server.address or "*",
             config.web_server.port)
    await stop.wait()
    log.info("shutting down: no new requests; finishing the accepted ones")
    lifecycle = context.lifecycle
    lifecycle.draining = True
    server.stop()
    # Jobs first: no new item is dispatched, the ones in flight finish and are committed.
    await jobs.close()
    ocr.begin_shutdown()  # a task the closing pool refuses stays pending, redone next start
    await pool.close(timeout=config.ocr.process.task_timeout)
    if lifecycle.active_requests:
        # Let handlers whose results just arrived write their responses.
        try:
            await asyncio.wait_for(lifecycle.idle.wait(), timeout=5)
        except TimeoutError:
            pass
    await server.close_all_connections()
    await ocr.drain(timeout=10)  # tasks' outcomes written before their store closes
    await task_store.close()
    if shared is not None:
        await shared.close()
    log.info("stopped")
    return exit_code


def run(config: Config) -> int:
    configure_logging(config.web_server.log_format)
    try:
        loop_factory = event_loop_factory(config.web_server.event_loop)
    except ImportError:
        print("error: web_server.event_loop is uvloop, but the uvloop package is not installed",
              file=sys.stderr)
        return EXIT_BOOT_FAILURE
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(config))
    except ModelNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BOOT_FAILURE


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for "uvloop" (ImportError when it is missing) and for "auto" when it is
    installed; None (asyncio's own) otherwise. Tornado runs on either. Measured, uvloop did not
    pay (cache hits within 3% either way, docs/BENCHMARKS.md "Cache hits against the
    framework"), so it is not installed by default; requirements-bench.txt pins it."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


__all__ = ["run", "serve", "build_engine_spec", "build_context", "build_http_server",
           "build_task_store", "build_job_store", "job_limits", "pool_config"]
