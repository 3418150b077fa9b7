"""The real application over real HTTP (tornado.testing) with real worker processes and models."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal

from server.testing import multipart
from tests.app_testing import ROOT, AppTestCase

SAMPLES = ROOT / "docs" / "samples"
RECEIPT = SAMPLES / "receipt.jpg"
FIRST_LINE = "纯臻营养护发素"


class ServerTestCase(AppTestCase):
    """Boots a real pool of the real engine per test, on Tornado's plain listener;
    `overrides` tune the config for the test class."""

    real_models = True
    pool_size = 2
    hardened = False
    deadline = 240.0
    send_token = False  # test_hardening's token tests send theirs by hand

    @property
    def dispatched(self) -> int:
        return self.events.seen.count("dispatch")


class TestOcrService(ServerTestCase):
    def test_upload_filename_base64_json_and_form_read_the_same_text(self):
        image = RECEIPT.read_bytes()
        first = self.upload(image)
        assert first.code == 200
        body = json.loads(first.body)
        assert body["status"] == "done" and body["cached"] is False
        assert body["model"] == "ppocr-v4" and (body["width"], body["height"]) == (500, 500)
        assert body["lines"][0]["text"] == FIRST_LINE and len(body["lines"]) == 16
        assert body["text"].split("\n") == [line["text"] for line in body["lines"]]
        assert len(body["lines"][0]["box"]) == 4 and 0 < body["lines"][0]["confidence"] <= 1
        # Same bytes by every route: the same key, answered from the cache.
        encoded = base64.b64encode(image).decode()
        for response in (
            self.post_form(file_type="filename", filename="receipt.jpg"),
            self.post_json(file_type="filename", filename=str(RECEIPT)),
            self.post_json(file_type="base64", img_src=encoded),
            self.post_form(file_type="base64", img_src="data:image/jpeg;base64," + encoded),
        ):
            again = json.loads(response.body)
            assert response.code == 200, again
            # Cached, but a submission of its own: ids are random, never the content's key.
            assert again["cached"] is True and again["id"] != body["id"]
            assert again["lines"] == body["lines"]
        assert self.service.engine_runs == 1 and self.dispatched == 1
        # Different options are a different request: a fresh run, the choice respected.
        strict = json.loads(self.upload(image, drop_score="0.995").body)
        assert strict["cached"] is False and strict["id"] != body["id"]
        assert 0 < len(strict["lines"]) < 16
        assert all(line["confidence"] >= 0.995 for line in strict["lines"])

    def test_non_blocking_task_is_polled_to_done(self):
        # The workers are held (for well under ping_interval) until the task has been seen
        # pending, so it cannot be done first however the test process is scheduled.
        workers = self.pool.worker_pids()
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            response = self.upload(RECEIPT.read_bytes(), block_flag="false",
                                   det_db_box_thresh="0.61")
            assert response.code == 202
            body = json.loads(response.body)
            assert body["status"] == "pending"
            assert body["result_url"] == f"/ocr_service/{body['id']}"
            # Pending until the worker answers; wait on that run, not on a clock.
            assert json.loads(self.fetch(body["result_url"]).body)["status"] == "pending"
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        self.wait_task(body["id"])
        done = self.fetch(body["result_url"])
        result = json.loads(done.body)
        assert done.code == 200 and result["status"] == "done" and result["id"] == body["id"]
        assert result["lines"][0]["text"] == FIRST_LINE
        assert self.fetch("/ocr_service/" + "0" * 64, raise_error=False).code == 404
        self.assert_error(self.fetch("/ocr_service/nope", raise_error=False), 404, "not_found")

    def test_failed_task_answers_its_error(self):
        response = self.upload(b"this is not an image", block_flag="0")
        assert response.code == 202
        task = json.loads(response.body)
        task_url = task["result_url"]
        self.wait_task(task["id"])
        body = self.assert_error(self.fetch(task_url, raise_error=False), 415, "invalid_image")
        assert body["status"] == "failed"
        # The worker that read the bad bytes is still serving.
        assert self.upload(RECEIPT.read_bytes()).code == 200

    def test_twenty_identical_concurrent_requests_cost_one_engine_run(self):
        image = RECEIPT.read_bytes()
        body, content_type = multipart({"file_type": "file", "drop_score": "0.51"}, image)

        async def burst():
            return await _gather(*(self.http_client.fetch(
                self.get_url("/ocr_service"), method="POST", body=body, raise_error=False,
                headers={"Content-Type": content_type}, request_timeout=120) for _ in range(20)))

        responses = self.io_loop.run_sync(burst, timeout=180)
        bodies = [json.loads(r.body) for r in responses]
        assert [r.code for r in responses] == [200] * 20
        assert len({b["id"] for b in bodies}) == 20 and len({b["text"] for b in bodies}) == 1
        assert self.dispatched == 1 and self.service.engine_runs == 1

    def test_error_statuses(self):
        image = RECEIPT.read_bytes()
        self.assert_error(self.post_form(file_type="pdf"), 400, "invalid_field")
        self.assert_error(self.post_form(block_flag="true"), 400, "missing_field")
        self.assert_error(self.post_form(file_type="file"), 400, "missing_field")
        self.assert_error(self.upload(image, det_db_thresh="-1"), 400, "invalid_option")
        self.assert_error(self.upload(image, det_limit_side_len="100000"), 400, "invalid_option")
        self.assert_error(self.upload(image, colour="blue"), 400, "invalid_field")
        self.assert_error(self.upload(image, model="ppocr-v9"), 400, "unknown_model")
        self.assert_error(self.post("{not json", "application/json"), 400, "bad_request")
        self.assert_error(self.post_json(file_type="base64", img_src="@@@"), 400,
                          "invalid_field")
        self.assert_error(self.post_json(file_type="base64", img_src="data:text/plain;base64,"
                                         + base64.b64encode(image).decode()), 415,
                          "invalid_image")
        self.assert_error(self.post_form(file_type="filename", filename="../../config.json"),
                          403, "forbidden_path")
        self.assert_error(self.post_form(file_type="filename", filename="/etc/passwd"), 403,
                          "forbidden_path")
        self.assert_error(self.post_form(file_type="filename", filename="missing.jpg"), 404,
                          "file_not_found")
        self.assert_error(self.upload(b"<html>hello</html>"), 415, "invalid_image")
        self.assert_error(self.post(b"x", "text/plain"), 415, "unsupported_media_type")
        self.assert_error(self.fetch("/nowhere", raise_error=False), 404, "not_found")
        too_big = b"0" * (self.ctx.requests.max_body_size + 10)
        self.assert_error(self.post(too_big, "application/octet-stream"), 413, "too_large")
        assert json.loads(self.fetch("/health").body) == {"status": "ok"}
        ready = json.loads(self.fetch("/ready").body)
        assert ready["status"] == "ready" and ready["workers"] == 2


class TestFaults(ServerTestCase):
    overrides = {"ocr.process.task_timeout": 60.0}

    def test_killed_busy_worker_request_is_retried_and_pool_recovers(self):
        pool = self.pool
        killed = []

        def kill_on_dispatch(event, worker):
            if event == "dispatch" and not killed:
                killed.append(worker.pid)
                os.kill(worker.pid, signal.SIGKILL)

        self.events.hooks.append(kill_on_dispatch)
        response = self.upload(RECEIPT.read_bytes(), drop_score="0.52")
        assert response.code == 200, response.body
        assert json.loads(response.body)["lines"][0]["text"] == FIRST_LINE
        assert killed and killed[0] not in pool.worker_pids()
        self.io_loop.run_sync(lambda: self.events.wait_for(lambda: pool.ready_count == 2),
                              timeout=240)
        assert json.loads(self.fetch("/ready").body)["workers"] == 2

    def test_timeout_answers_504_and_replaces_the_worker(self):
        before = set(self.pool.worker_pids())
        # A timeout no real image can meet (the config's lower bound is 0.1 s).
        self.pool.config = dataclasses.replace(self.pool.config, task_timeout=0.001)
        self.assert_error(self.upload(RECEIPT.read_bytes(), drop_score="0.53"), 504, "timeout")
        self.io_loop.run_sync(lambda: self.events.wait_for(lambda: self.pool.ready_count == 2),
                              timeout=240)
        assert len(before - set(self.pool.worker_pids())) == 1


class TestQueue(ServerTestCase):
    overrides = {"ocr.process.number": 1, "ocr.process.queue_size": 1}

    def test_full_queue_answers_503_with_retry_after(self):
        image = RECEIPT.read_bytes()
        codes = []
        for i in range(4):  # one runs, one waits, the rest are refused
            response = self.upload(image, block_flag="false", drop_score=f"0.5{i + 1}")
            codes.append(response.code)
            if response.code == 503:
                assert response.headers["Retry-After"]
                assert json.loads(response.body)["error"]["code"] == "queue_full"
        assert codes[:2] == [202, 202] and 503 in codes[2:]


async def _gather(*coros):
    return await asyncio.gather(*coros)
