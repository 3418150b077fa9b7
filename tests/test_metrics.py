"""GET /metrics over real HTTP: the real app and listener, real worker processes, scraped with
prometheus_client's own text parser, and every counter checked to move by exactly the traffic
sent.

One class runs the real models (stage timings come from the engine); the others use the
model-free echo worker (tests/echo_worker.py), which boots in a blink, for what needs no OCR:
restarts, queue refusals, in-flight sharing and the token rules. Waits are bounded polls of
observable state (pool events, the stores' counters) under generous deadlines, never sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import RESTART_REASONS, STAGES, Metrics
from tests.app_testing import ROOT, AppTestCase

RECEIPT = ROOT / "docs" / "samples" / "receipt.jpg"
MODEL = "ppocr-v4"
# Generous: a deadline only a broken server reaches, never a measure of speed.
DEADLINE = 240.0
TOKEN = "metrics-test-token"


class Scrape:
    """One /metrics answer, parsed: sample (name, labels) -> value."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when absent (a labelled series appears at its first event)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


class MetricsTestCase(AppTestCase):
    """The real app behind the real listener, wired as server.main.serve wires it (AppTestCase),
    with scrapes and waits on pool events."""

    deadline = DEADLINE

    def scrape(self, headers: dict | None = None) -> Scrape:
        response = self.request("/metrics", headers={**self.auth, **(headers or {})})
        assert response.code == 200, response.body
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(response.body.decode())

    def wait_for(self, predicate) -> None:
        """Waits until `predicate()` holds, re-checked after every pool event (and often)."""
        self.io_loop.run_sync(lambda: self.events.wait_for(predicate, poll=0.05),
                              timeout=DEADLINE)


class TestTrafficWithRealModels(MetricsTestCase):
    """3 uncached + 2 cached requests, then a failed one: every counter moves by exactly that."""

    real_models = True
    pool_size = 2
    overrides = {"service.img_number": 2}  # the third result pushes the first out

    def test_counters_move_by_exactly_the_traffic_sent(self):
        image = RECEIPT.read_bytes()
        before = self.scrape()
        # Different options, different keys: three engine runs.
        fresh = [self.upload(image, drop_score=score) for score in ("0.5", "0.6", "0.7")]
        assert [r.code for r in fresh] == [200] * 3, [r.body for r in fresh]
        fresh_bodies = [json.loads(r.body) for r in fresh]
        assert not any(body["cached"] for body in fresh_bodies)
        # The last two are still cached (the first was evicted: the cache holds two).
        again = [self.upload(image, drop_score=score) for score in ("0.6", "0.7")]
        assert [json.loads(r.body)["cached"] for r in again] == [True, True]
        after = self.scrape()

        def delta(name: str, **labels: str) -> float:
            return after.value(name, **labels) - before.value(name, **labels)

        ocr = {"route": "/ocr_service"}
        assert delta("ppocr_http_requests_total", **ocr, method="POST", status="200") == 5
        assert delta("ppocr_http_request_duration_seconds_count", **ocr, cached="true") == 2
        assert delta("ppocr_http_request_duration_seconds_count", **ocr, cached="false") == 3
        # The scrape before this one was counted once it was answered.
        assert delta("ppocr_http_requests_total", route="/metrics", method="GET",
                     status="200") == 1
        for stage in STAGES:
            assert delta("ppocr_engine_stage_seconds_count", model=MODEL, stage=stage) == 3, \
                stage
        # The stage histogram holds exactly the timings the worker sent back.
        total_s = sum(body["timings_ms"]["total"] for body in fresh_bodies) / 1000
        assert delta("ppocr_engine_stage_seconds_sum", model=MODEL, stage="total") == \
            pytest.approx(total_s, abs=1e-6)
        assert delta("ppocr_engine_stage_seconds_bucket", model=MODEL, stage="total",
                     le="+Inf") == 3
        assert delta("ppocr_images_read_total", model=MODEL) == 3
        assert delta("ppocr_text_lines_read_total", model=MODEL) == \
            sum(len(body["lines"]) for body in fresh_bodies)
        assert delta("ppocr_cache_hits_total") == 2
        assert delta("ppocr_cache_misses_total") == 3
        assert delta("ppocr_cache_evictions_total") == 1
        assert after.value("ppocr_cache_entries") == 2
        assert delta("ppocr_engine_runs_total") == 3
        assert delta("ppocr_inflight_shared_total") == 0
        # State, read at scrape time.
        assert after.value("ppocr_workers", state="idle") == 2
        assert after.value("ppocr_workers", state="busy") == 0
        assert after.value("ppocr_workers_ready") == 2
        assert after.value("ppocr_workers_configured") == 2
        for lane in ("interactive", "background"):
            assert after.value("ppocr_queue_depth", lane=lane) == 0
        for reason in RESTART_REASONS:
            assert after.value("ppocr_worker_restarts_total", reason=reason) == 0
        assert after.value("ppocr_jobs_running") == 0
        assert after.value("ppocr_job_items_total", outcome="done") == 0
        assert "process_resident_memory_bytes" in after.names()

        # A failed request is counted under its status, and reads no image.
        self.assert_error(self.upload(b"this is not an image"), 415, "invalid_image")
        self.assert_error(self.request("/no/such/path"), 404, "not_found")
        failed = self.scrape()
        assert failed.value("ppocr_http_requests_total", **ocr, method="POST",
                            status="415") == 1
        assert failed.value("ppocr_http_requests_total", route="unmatched", method="GET",
                            status="404") == 1
        assert failed.value("ppocr_http_request_duration_seconds_count", **ocr,
                            cached="false") == after.value(
            "ppocr_http_request_duration_seconds_count", **ocr, cached="false") + 1
        assert failed.value("ppocr_cache_misses_total") == after.value(
            "ppocr_cache_misses_total") + 1
        assert failed.value("ppocr_images_read_total", model=MODEL) == after.value(
            "ppocr_images_read_total", model=MODEL)
        assert failed.value("ppocr_engine_stage_seconds_count", model=MODEL,
                            stage="total") == after.value(
            "ppocr_engine_stage_seconds_count", model=MODEL, stage="total")


class TestWorkerRestarts(MetricsTestCase):
    pool_size = 2

    def test_a_killed_worker_is_counted_as_crashed(self):
        assert self.scrape().value("ppocr_worker_restarts_total", reason="crashed") == 0
        victim = self.pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        self.wait_for(lambda: any(pid == victim for pid, _ in self.events.exits)
                      and self.pool.ready_count == self.pool_size)
        scrape = self.scrape()
        assert scrape.value("ppocr_worker_restarts_total", reason="crashed") == 1
        for reason in set(RESTART_REASONS) - {"crashed"}:
            assert scrape.value("ppocr_worker_restarts_total", reason=reason) == 0
        assert scrape.value("ppocr_workers", state="idle") == self.pool_size
        assert scrape.value("ppocr_workers_ready") == self.pool_size


class TestQueueAndSharing(MetricsTestCase):
    """One worker held busy by a gated job, a queue of one: what waits, what is refused, what
    joins the run in flight, all visible in a scrape taken while it lasts."""

    pool_size = 1
    overrides = {"ocr.process.queue_size": 1}

    def test_queue_depth_refusals_and_shared_runs(self):
        gate = self.tmp_path / "release"
        held = b"WAIT:" + str(gate).encode()
        submit = {"block_flag": "false"}
        running = self.read(held, **submit)  # taken by the only worker
        queued = self.read(held, drop_score="0.6", **submit)  # another key: waits
        assert (running.code, queued.code) == (202, 202), (running.body, queued.body)
        self.assert_error(self.read(held, drop_score="0.7", **submit), 503, "queue_full")
        joined = self.read(held, **submit)  # the first one's key: joins its run
        assert joined.code == 202
        during = self.scrape()
        assert during.value("ppocr_queue_depth", lane="interactive") == 1
        assert during.value("ppocr_queue_depth", lane="background") == 0
        assert during.value("ppocr_workers", state="busy") == 1
        assert during.value("ppocr_queue_refused_total", lane="interactive",
                            reason="queue_full") == 1
        assert during.value("ppocr_inflight_runs") == 2
        assert during.value("ppocr_inflight_shared_total") == 1
        assert during.value("ppocr_engine_runs_total") == 2
        assert during.value("ppocr_tasks_pending") == 3
        route = {"route": "/ocr_service", "method": "POST"}
        assert during.value("ppocr_http_requests_total", **route, status="202") == 3
        assert during.value("ppocr_http_requests_total", **route, status="503") == 1
        assert during.value("ppocr_images_read_total", model=MODEL) == 0

        gate.touch()
        self.wait_for(lambda: self.service.stats()["pending_tasks"] == 0)
        done = self.scrape()
        assert done.value("ppocr_images_read_total", model=MODEL) == 2
        assert done.value("ppocr_text_lines_read_total", model=MODEL) == 2  # one line each
        # The echo worker reports only a total time; absent stages are not invented.
        assert done.value("ppocr_engine_stage_seconds_count", model=MODEL, stage="total") == 2
        assert done.value("ppocr_engine_stage_seconds_count", model=MODEL, stage="det") == 0
        assert done.value("ppocr_queue_depth", lane="interactive") == 0
        assert done.value("ppocr_inflight_runs") == 0
        assert done.value("ppocr_workers", state="idle") == 1

    def test_openmetrics_when_the_scraper_asks_for_it(self):
        response = self.request("/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
        assert response.code == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.body.endswith(b"# EOF\n")
        assert b"ppocr_cache_hits_total 0.0" in response.body


class TestTokenRequired(MetricsTestCase):
    overrides = {"web_server.api_token": TOKEN}

    def test_metrics_need_the_token(self):
        self.assert_error(self.request("/metrics"), 401, "unauthorized")
        self.assert_error(self.request("/metrics", headers={"Authorization": "Bearer wrong"}),
                          401, "unauthorized")
        scrape = self.scrape()  # with the token
        assert scrape.value("ppocr_http_requests_total", route="/metrics", method="GET",
                            status="401") == 2


class TestPublicMetrics(MetricsTestCase):
    overrides = {"web_server.api_token": TOKEN, "web_server.metrics_public": True}

    def test_metrics_are_open_but_the_api_is_not(self):
        response = self.request("/metrics")
        assert response.code == 200
        assert Scrape(response.body.decode()).value("ppocr_workers_ready") == 1
        self.assert_error(self.request("/ready"), 401, "unauthorized")
        response = self.request("/ocr_service", "POST", json.dumps(
            {"file_type": "base64", "img_src": base64.b64encode(b"x").decode()}),
            {"Content-Type": "application/json"})
        self.assert_error(response, 401, "unauthorized")


class TestMetricsOff(MetricsTestCase):
    overrides = {"web_server.metrics": False}

    def test_metrics_route_is_404_and_nothing_is_recorded(self):
        assert self.metrics is None and self.ctx.services.metrics is None
        assert not any(isinstance(o, Metrics) for o in self.pool.observers)
        self.assert_error(self.request("/metrics"), 404, "not_found")
        response = self.read(b"still served")
        assert response.code == 200, response.body
