"""Prometheus metrics, parent side only: one registry the front-end process owns and serves at
GET /metrics (handlers/metrics.py).

Why no multiprocess directory (prometheus_client's PROMETHEUS_MULTIPROC_DIR): workers keep no
metrics of their own. Each result a worker sends back carries its stage timings
(`timings_ms`: decode, det, cls, rec, total), and everything else (queue, workers, restarts,
cache, requests) is bookkeeping the parent already does on its IOLoop thread. So every metric is
updated here, in one process, on one thread, and a worker that is killed or recycled takes
nothing with it.

Two kinds of metric:
- events are counted as they happen: HTTP requests (`request_finished`, from BaseHandler's
  on_finish), finished engine runs, worker restarts and queue refusals (this class is a
  PoolObserver, so the pool calls it);
- state is read at scrape time by `_StateCollector` (queue depth, workers by state, cache
  entries, the cache's and the in-flight table's own counters), so nothing is updated on every
  event only to mirror a number someone else already keeps, and a scrape never disagrees with
  /ready.

Labels are bounded: routes are the app's route patterns (an unknown path is "unmatched"),
methods Tornado's own, models and stages those the engine reports.

Folder jobs: `ppocr_job_items_total{outcome}` counts finished items (done, cached, failed)
as the job runner reports them through `job_item_finished`; `ppocr_jobs_running` is read from
the runner at scrape time (`watch(..., running_jobs=...)`).

Scale-out (service.redis_url): `watch_redis` adds `ppocr_redis_up` (1 while Redis answers, 0
while the node serves on its own), the outages and the calls that fell back, and the
cross-node sharing counters (claims won, keys followed, follows taken over, follows answered
by another node's run), read from the link and the claims at scrape time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from .pool import (
    BOOT_FAILURE,
    CRASHED,
    MEMORY,
    RECYCLED,
    SHUTDOWN,
    TIMED_OUT,
    UNRESPONSIVE,
    Lane,
    PoolJob,
    PoolObserver,
    State,
    Worker,
)

if TYPE_CHECKING:
    import tornado.web

    from .cluster import ClusterRuns
    from .config import Config
    from .pool import WorkerPool
    from .service import OcrService
    from .store.redis import RedisLink

# A cached answer takes about a millisecond, a big page tens of seconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)
# Decoding a small image takes a millisecond or two; detection on a large page, seconds.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0, 60.0)
STAGES = ("decode", "det", "cls", "rec", "total")
RESTART_REASONS = (RECYCLED, MEMORY, CRASHED, TIMED_OUT, UNRESPONSIVE, BOOT_FAILURE)
JOB_ITEM_OUTCOMES = ("done", "cached", "failed")
_METHODS = frozenset(("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"))
UNMATCHED_ROUTE = "unmatched"
_GROUP = re.compile(r"\((?:\?P<(\w+)>)?[^)]*\)")


def build_metrics(config: Config) -> Metrics | None:
    """The server's metrics, or None when `web_server.metrics` is false (/metrics is 404)."""
    web = config.web_server
    if not web.metrics:
        return None
    return Metrics(CollectorRegistry(), public=web.metrics_public)


class Metrics(PoolObserver):
    """Every metric the server exposes, in `registry` (passed in: never the global one).

    `public`: /metrics needs no API token. `process_metrics`: also export the front-end
    process's own process_* metrics (CPU, memory, open files). Every caller is on the IOLoop
    thread."""

    def __init__(self, registry: CollectorRegistry, public: bool = False,
                 process_metrics: bool = True) -> None:
        self.registry = registry
        self.public = public
        self._routes: dict[type, str] = {}
        self.requests = Counter(
            "ppocr_http_requests", "HTTP requests answered, by route pattern, method and status",
            ["route", "method", "status"], registry=registry)
        self.request_seconds = Histogram(
            "ppocr_http_request_duration_seconds", "time from request received to response "
            "written, by route pattern and whether the result came from the cache",
            ["route", "cached"], buckets=REQUEST_BUCKETS, registry=registry)
        self.stage_seconds = Histogram(
            "ppocr_engine_stage_seconds", "engine time per stage (decode, det, cls, rec, total) "
            "of each finished run, by model; measured in the worker", ["model", "stage"],
            buckets=STAGE_BUCKETS, registry=registry)
        self.images = Counter("ppocr_images_read", "images the engine read successfully",
                              ["model"], registry=registry)
        self.lines = Counter("ppocr_text_lines_read", "text lines in the engine's results",
                             ["model"], registry=registry)
        self.restarts = Counter(
            "ppocr_worker_restarts", "workers replaced, by reason: recycled (max_task_number), "
            "memory (max_worker_rss_mb), crashed, timed_out (task_timeout), unresponsive "
            "(ping_timeout), boot_failure", ["reason"], registry=registry)
        self.refused = Counter(
            "ppocr_queue_refused", "jobs the pool refused (503), by lane and reason: queue_full,"
            " unavailable (no worker), shutting_down", ["lane", "reason"], registry=registry)
        self.job_items = Counter(
            "ppocr_job_items", "folder-job items finished, by outcome (done, cached, failed)",
            ["outcome"], registry=registry)
        for reason in RESTART_REASONS:
            self.restarts.labels(reason)
        for lane in Lane:
            self.refused.labels(lane.name.lower(), "queue_full")
        for outcome in JOB_ITEM_OUTCOMES:
            self.job_items.labels(outcome)
        if process_metrics:  # the front-end process's own CPU, memory and open files
            ProcessCollector(registry=registry)
        self._state: _StateCollector | None = None

    def watch(self, pool: WorkerPool, service: OcrService,
              running_jobs: Callable[[], int] = lambda: 0) -> None:
        """Reads the state gauges from `pool` and `service` at every scrape (once only)."""
        if self._state is not None:
            raise RuntimeError("Metrics.watch was already called")
        self._state = _StateCollector(pool, service, running_jobs)
        self.registry.register(self._state)

    def watch_redis(self, link: RedisLink, runs: ClusterRuns) -> None:
        """Reads the Redis link's state and the cross-node counters at every scrape."""
        self.registry.register(_RedisCollector(link, runs))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry rendered for a scrape: (body, content type). The classic Prometheus
        text format unless `accept` asks for OpenMetrics."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # -- HTTP -----------------------------------------------------------------------------

    def request_finished(self, handler: tornado.web.RequestHandler, cached: bool) -> None:
        route = self._route(handler)
        method = handler.request.method if handler.request.method in _METHODS else "other"
        self.requests.labels(route, method, str(handler.get_status())).inc()
        self.request_seconds.labels(route, "true" if cached else "false").observe(
            handler.request.request_time())

    def _route(self, handler: tornado.web.RequestHandler) -> str:
        kind = type(handler)
        route = self._routes.get(kind)
        if route is None:
            route = UNMATCHED_ROUTE
            for rule in handler.application.wildcard_router.rules:
                regex = getattr(rule.matcher, "regex", None)
                if rule.target is kind and regex is not None:
                    route = route_label(regex.pattern)
                    break
            self._routes[kind] = route
        return route

    # -- folder jobs ------------------------------------------------------------------------

    def job_item_finished(self, outcome: str) -> None:
        self.job_items.labels(outcome).inc()

    # -- PoolObserver ---------------------------------------------------------------------

    def job_finished(self, worker: Worker, job: PoolJob, duration_s: float, ok: bool) -> None:
        future = job.future
        if not ok or not future.done() or future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if not isinstance(result, dict):
            return
        model = str(result.get("model") or getattr(job.payload, "model", None) or "unknown")
        for stage, milliseconds in (result.get("timings_ms") or {}).items():
            if stage in STAGES:
                self.stage_seconds.labels(model, stage).observe(milliseconds / 1000)
        self.images.labels(model).inc()
        self.lines.labels(model).inc(len(result.get("lines") or ()))

    def worker_exited(self, worker: Worker, reason: str, exitcode: int | None) -> None:
        if reason != SHUTDOWN:  # stopping the server replaces nothing
            self.restarts.labels(reason).inc()

    def queue_refused(self, lane: Lane, code: str) -> None:
        self.refused.labels(lane.name.lower(), code).inc()


def route_label(pattern: str) -> str:
    """A route's regex as a readable label: r"/ocr_service/([^/]+)$" ->
    "/ocr_service/<param>" (a named group keeps its name), r"/ocr_service/?$" -> "/ocr_service".
    """
    label = _GROUP.sub(lambda match: f"<{match.group(1) or 'param'}>", pattern)
    label = label.removeprefix("^").removesuffix("$").removesuffix("/?")
    return label.replace("\\", "") or "/"


class _RedisCollector:
    """The Redis link and cross-node sharing, read at scrape time."""

    def __init__(self, link: RedisLink, runs: ClusterRuns) -> None:
        self._link = link
        self._runs = runs

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._link))

    def _families(self, link: RedisLink | None) -> list[Metric]:
        runs = self._runs

        def value(read: Callable[[], float]) -> float | None:
            return read() if link is not None else None

        return [
            GaugeMetricFamily("ppocr_redis_up", "1 while the shared Redis answers; 0 while "
                              "this node serves on its own (degraded)",
                              value=value(lambda: 1 if link.available else 0)),
            CounterMetricFamily("ppocr_redis_outages", "times the link to Redis went down",
                                value=value(lambda: link.outages)),
            CounterMetricFamily("ppocr_redis_fallbacks", "Redis calls answered from this "
                                "node's memory instead (Redis down or too slow)",
                                value=value(lambda: link.failures)),
            CounterMetricFamily("ppocr_cluster_claims_won", "runs this node claimed across "
                                "nodes (and so ran)", value=value(lambda: runs.led)),
            CounterMetricFamily("ppocr_cluster_followed", "runs this node waited for on "
                                "another node instead of running them",
                                value=value(lambda: runs.followed)),
            CounterMetricFamily("ppocr_cluster_taken_over", "followed runs this node took "
                                "over (the claiming node died or gave up)",
                                value=value(lambda: runs.taken_over)),
            CounterMetricFamily("ppocr_cluster_shared_results", "followed runs answered by "
                                "another node's result", value=value(lambda: runs.shared_results)),
        ]


class _StateCollector:
    """Gauges (and counters kept by the stores) read from the live objects at scrape time."""

    def __init__(self, pool: WorkerPool, service: OcrService,
                 running_jobs: Callable[[], int]) -> None:
        self._pool = pool
        self._service = service
        self._running_jobs = running_jobs

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        pool, service = self._pool.stats(), self._service.stats()
        states = {state.value: 0 for state in State}
        for worker in pool["workers"]:
            states[worker["state"]] = states.get(worker["state"], 0) + 1
        entries = service.get("cache_entries", 0)
        # A store that counts its evictions says so; for the others, every result stored
        # that the cache no longer holds was evicted (LRU room or TTL expiry).
        evictions = service.get("cache_evictions",
                                max(0, self._service.results_stored - entries))
        return iter(self._families(
            queue={"interactive": pool["queued"], "background": pool["queued_background"]},
            states=states, ready=pool["ready"], size=pool["size"], entries=entries,
            hits=service.get("cache_hits", 0), misses=service.get("cache_misses", 0),
            evictions=evictions, inflight=service.get("inflight", 0),
            shared=service.get("shared_runs", 0), runs=service.get("engine_runs", 0),
            pending_tasks=service.get("pending_tasks", 0), running_jobs=self._running_jobs()))

    @staticmethod
    def _families(queue: dict[str, int] | None = None, states: dict[str, int] | None = None,
                  **values: Any) -> list[Metric]:
        def gauge(name: str, doc: str, key: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=values[key] if values else None)

        def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=values[key] if values else None)

        depth = GaugeMetricFamily("ppocr_queue_depth", "jobs waiting for a worker, by lane "
                                  "(interactive requests; background folder-job items)",
                                  labels=["lane"])
        for lane, count in (queue or {}).items():
            depth.add_metric([lane], count)
        workers = GaugeMetricFamily("ppocr_workers", "worker processes by state (booting, idle,"
                                    " busy, stopping)", labels=["state"])
        for state, count in (states or {}).items():
            workers.add_metric([state], count)
        return [
            depth, workers,
            gauge("ppocr_workers_ready", "workers loaded and answering pings", "ready"),
            gauge("ppocr_workers_configured", "workers the pool keeps (ocr.process.number)",
                  "size"),
            gauge("ppocr_cache_entries", "results held in the cache (an expired one until the "
                  "next store)", "entries"),
            counter("ppocr_cache_hits", "requests answered from the result cache", "hits"),
            counter("ppocr_cache_misses", "requests the cache could not answer", "misses"),
            counter("ppocr_cache_evictions", "results that left the cache for room or by TTL "
                    "(with caching off, every result)", "evictions"),
            gauge("ppocr_inflight_runs", "engine runs in flight", "inflight"),
            counter("ppocr_inflight_shared", "requests that joined an identical run already in "
                    "flight instead of starting one", "shared"),
            counter("ppocr_engine_runs", "runs sent to the pool (cache misses not shared)",
                    "runs"),
            gauge("ppocr_tasks_pending", "non-blocking tasks not finished yet", "pending_tasks"),
            gauge("ppocr_jobs_running", "folder jobs running",
                  "running_jobs"),
        ]
