"""Documents and batches in POST /ocr_service, over real HTTP with real worker processes and
models: PDFs (made here with Pillow and fpdf2, tests/pdfs.py) read page by page, multi-page
TIFFs, page ranges, every upload mode, non-blocking progress, one cache entry per page, batches
of images and documents, and the hostile documents that must cost a clear 4xx and nothing else.

Nothing here asserts on time. Where a test needs a run to stay pending, it holds it at a gate
it opens itself (a page's submission, or a SIGSTOPped worker) and waits on observable state
with bounded polls.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import os
import signal
import uuid

import pytest
from PIL import Image
from tornado.httpclient import HTTPResponse

from server.app import make_app
from server.config import load_config
from server.errors import ApiError
from server.main import build_context, build_engine_spec, pool_config
from server.ocr_worker import boot
from server.pool import WorkerPool
from server.protocol import PageJob
from server.request import parse_pages, select_pages
from server.service import OcrService
from tests.app_testing import PINNED_BACKEND
from tests.pdfs import (
    huge_page_pdf,
    image_bomb_pdf,
    images_pdf,
    many_pages_pdf,
    multipart,
    nested_page_tree_pdf,
    pages_pdf,
    self_drawing_form_pdf,
    text_pdf,
    tiff_bytes,
)
from tests.pool_handlers import EventLog
from tests.test_server import FIRST_LINE, RECEIPT, ROOT, ServerTestCase

DEADLINE = 240.0
# Pillow writes each image as a page at this resolution; asking for the same dpi renders the
# page at the image's own pixel size.
PAGE_DPI = 100


def receipt_pages() -> list[Image.Image]:
    """Three different pages: the receipt, its top half, its bottom half."""
    receipt = Image.open(RECEIPT).convert("RGB")
    width, height = receipt.size
    return [receipt, receipt.crop((0, 0, width, height // 2)),
            receipt.crop((0, height // 2, width, height))]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class DocumentTestCase(ServerTestCase):
    """ServerTestCase with the documents' limits wired from the config (what main.py's
    build_context passes to RequestPolicy) and a gate on the submission of one page: while
    `held_page` is set, that page's run is submitted only once `release()` is called."""

    held_page: int | None = None

    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path):
        self.roots = tmp_path.resolve()

    def get_app(self):
        config = load_config(ROOT / "config.json", {
            "ocr.process.number": 2, "ocr.process.threads": 1,
            "service.filename_roots": [str(self.roots)], **PINNED_BACKEND, **self.overrides})
        self.config = config
        spec = build_engine_spec(config)
        self.pool = WorkerPool(boot, spec, pool_config(config))
        self.events = EventLog(self.pool)
        self.io_loop.run_sync(self.pool.start, timeout=DEADLINE)
        context = build_context(config, self.pool, spec)
        system, service = config.ocr.predict_system, config.service
        requests = dataclasses.replace(context.requests, default_dpi=system.dpi,
                                       max_pages=service.max_pages,
                                       max_batch=service.max_batch,
                                       max_pixels=system.max_pixels)
        self.gate = asyncio.Event()
        base = context.services.ocr
        ocr = OcrService(self._submit, base.cache, base.tasks)
        self.ctx = dataclasses.replace(context, requests=requests, services=dataclasses.replace(
            context.services, ocr=ocr))
        self.service = ocr
        return make_app(self.ctx)

    def _submit(self, job, request_id, lane) -> asyncio.Future:
        if isinstance(job, PageJob) and job.page == self.held_page and not self.gate.is_set():
            held = asyncio.get_running_loop().create_future()

            async def submit_when_released() -> None:
                await self.gate.wait()
                try:
                    run = self.pool.submit(job, lane, request_id)
                except Exception as exc:  # noqa: BLE001 - the run's error, as the pool's
                    held.set_exception(exc)
                    return
                run.add_done_callback(lambda done: held.set_exception(done.exception())
                                      if done.exception() is not None
                                      else held.set_result(done.result()))
            self._holder = asyncio.ensure_future(submit_when_released())
            return held
        return self.pool.submit(job, lane, request_id)

    def release(self) -> None:
        self.gate.set()

    # -- requests ------------------------------------------------------------------------

    def upload_files(self, files: list[bytes], **fields) -> HTTPResponse:
        body, content_type = multipart({k: str(v) for k, v in fields.items()}, files)
        return self.post(body, content_type)

    def upload_one(self, data: bytes, **fields) -> HTTPResponse:
        return self.upload_files([data], **fields)

    def ok(self, response: HTTPResponse, status: int = 200) -> dict:
        body = json.loads(response.body)
        assert response.code == status, (response.code, body)
        return body

    def poll(self, task_id: str) -> HTTPResponse:
        return self.fetch(f"/ocr_service/{task_id}", raise_error=False)

    def poll_until(self, task_id: str, predicate) -> HTTPResponse:
        """Polls the task over HTTP until `predicate(response)` holds (bounded)."""
        async def wait() -> HTTPResponse:
            while True:
                response = await self.http_client.fetch(
                    self.get_url(f"/ocr_service/{task_id}"), raise_error=False,
                    request_timeout=DEADLINE)
                if predicate(response):
                    return response
                await asyncio.sleep(0.02)  # a bounded poll of the task's state
        return self.io_loop.run_sync(wait, timeout=DEADLINE)

    def finished(self, task_id: str) -> HTTPResponse:
        return self.poll_until(task_id, lambda response: response.code != 202)


def page_texts(body: dict) -> list[str]:
    return [page["text"] for page in body["pages"]]


class TestPdf(DocumentTestCase):
    def test_a_pdf_is_read_page_by_page_in_every_upload_mode(self):
        pdf = images_pdf(receipt_pages(), dpi=PAGE_DPI)
        first = self.ok(self.upload_one(pdf, dpi=PAGE_DPI))
        assert (first["status"], first["cached"], first["model"]) == ("done", False, "ppocr-v4")
        assert (first["kind"], first["page_count"]) == ("pdf", 3)
        pages = first["pages"]
        assert [page["page"] for page in pages] == [1, 2, 3]
        assert [(page["width"], page["height"]) for page in pages] == \
            [(500, 500), (500, 250), (500, 250)]
        assert all(page["source"] == "ocr" for page in pages)
        assert pages[0]["lines"][0]["text"] == FIRST_LINE and FIRST_LINE in pages[1]["text"]
        assert FIRST_LINE not in pages[2]["text"] and pages[2]["lines"]
        assert first["text"] == "\n\n".join(page_texts(first))
        for page in pages:
            assert page["text"] == "\n".join(line["text"] for line in page["lines"])
        # One run per page, spread over both workers.
        assert self.service.engine_runs == 3 and self.dispatched == 4  # and the probe

        # The same bytes by every other route: every page from the cache.
        (self.roots / "scan.pdf").write_bytes(pdf)
        for response in (
            self.post_json(file_type="base64", img_src=b64(pdf), dpi=PAGE_DPI),
            self.post_form(file_type="base64", img_src="data:application/pdf;base64," + b64(pdf),
                           dpi=str(PAGE_DPI)),
            self.post_form(file_type="filename", filename="scan.pdf", dpi=str(PAGE_DPI)),
        ):
            again = self.ok(response)
            assert again["cached"] is True and again["pages"] == pages, again
            assert again["id"] != first["id"]
        assert self.service.engine_runs == 3

        # Page ranges: a selection, in the document's order, each page once.
        chosen = self.ok(self.upload_one(pdf, dpi=PAGE_DPI, pages="3, 1-1,3"))
        assert [page["page"] for page in chosen["pages"]] == [1, 3]
        assert chosen["pages"] == [pages[0], pages[2]] and chosen["cached"] is True
        tail = self.ok(self.upload_one(pdf, dpi=PAGE_DPI, pages="2-"))
        assert [page["page"] for page in tail["pages"]] == [2, 3]
        assert tail["text"] == "\n\n".join(page_texts(first)[1:])
        assert self.service.engine_runs == 3

        # The default dpi (ocr.predict_system.dpi, 200) renders twice as many pixels: a page of
        # its own in the cache.
        sharp = self.ok(self.upload_one(pdf, pages="1"))
        assert (sharp["cached"], sharp["pages"][0]["width"], sharp["pages"][0]["height"]) == \
            (False, 1000, 1000)
        assert FIRST_LINE in sharp["pages"][0]["text"]
        assert self.service.engine_runs == 4

        # Bad selections and options name what is wrong; nothing is read.
        for fields, words in (({"pages": "1-3,7"}, ("pages", "7", "3 pages")),
                              ({"pages": "4-"}, ("pages", "4-")),
                              ({"pages": "2-1"}, ("pages", "2-1")),
                              ({"pages": "0"}, ("pages",)),
                              ({"pages": "one"}, ("pages", "one")),
                              ({"dpi": "10"}, ("dpi",)),
                              ({"dpi": "2.5"}, ("dpi",)),
                              ({"pdf_text": "maybe"}, ("pdf_text",))):
            body = self.assert_error(self.upload_one(pdf, **fields), 400, "invalid_field")
            assert all(word in body["error"]["message"] for word in words), (fields, body)
        assert self.service.engine_runs == 4

    def test_a_non_blocking_pdf_reports_its_progress_while_pending(self):
        self.held_page = 3
        pdf = images_pdf(receipt_pages(), dpi=PAGE_DPI)
        accepted = self.ok(self.upload_one(pdf, dpi=PAGE_DPI, block_flag="false"), 202)
        assert accepted["status"] == "pending"
        assert accepted["result_url"] == f"/ocr_service/{accepted['id']}"
        # Pages 1 and 2 run; page 3 waits at the gate, so the task stays pending at 2 of 3.
        pending = self.poll_until(accepted["id"], lambda response: json.loads(
            response.body).get("progress", {}).get("done") == 2)
        body = self.ok(pending, 202)
        assert body == {"id": accepted["id"], "status": "pending",
                        "result_url": accepted["result_url"],
                        "progress": {"done": 2, "total": 3}}
        assert self.dispatched == 3  # the probe and two pages; page 3 is held
        self.release()
        done = self.ok(self.finished(accepted["id"]))
        assert (done["id"], done["status"], done["cached"]) == (accepted["id"], "done", False)
        assert [page["page"] for page in done["pages"]] == [1, 2, 3]
        assert done["pages"][0]["lines"][0]["text"] == FIRST_LINE
        assert done["text"] == "\n\n".join(page_texts(done))
        # Submitted again, every page is cached: the task is done as soon as it is polled.
        again = self.ok(self.upload_one(pdf, dpi=PAGE_DPI, block_flag="false"), 202)
        repeat = self.ok(self.finished(again["id"]))
        assert repeat["cached"] is True and repeat["pages"] == done["pages"]
        assert self.service.engine_runs == 3

    def test_a_resent_pdf_with_one_changed_page_costs_one_run(self):
        pages = receipt_pages()
        original = self.ok(self.upload_one(images_pdf(pages, dpi=PAGE_DPI), dpi=PAGE_DPI))
        assert self.service.engine_runs == 3 and original["cached"] is False
        changed = pages[:2] + [pages[2].transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        resent = self.ok(self.upload_one(images_pdf(changed, dpi=PAGE_DPI), dpi=PAGE_DPI))
        assert self.service.engine_runs == 4
        assert resent["cached"] is False  # one page was not
        assert resent["pages"][:2] == original["pages"][:2]
        assert resent["pages"][2]["text"] != original["pages"][2]["text"]


class TestTiff(DocumentTestCase):
    def test_every_frame_of_a_tiff_is_a_page_and_one_frame_is_an_image(self):
        frames = receipt_pages()
        tiff = tiff_bytes(frames)
        body = self.ok(self.post_json(file_type="base64", img_src=b64(tiff)))
        assert (body["kind"], body["page_count"], body["cached"]) == ("tiff", 3, False)
        assert [(page["page"], page["width"], page["height"]) for page in body["pages"]] == \
            [(1, 500, 500), (2, 500, 250), (3, 500, 250)]
        assert body["pages"][0]["lines"][0]["text"] == FIRST_LINE
        assert body["text"] == "\n\n".join(page_texts(body))
        assert self.service.engine_runs == 3
        # dpi and pdf_text do not apply to TIFF frames: the same cache entries.
        same = self.ok(self.upload_one(tiff, dpi=300, pdf_text="auto", pages="2"))
        assert same["cached"] is True and same["pages"] == [body["pages"][1]]
        # A TIFF of one frame is an image, answered as one.
        single = self.ok(self.upload_one(tiff_bytes(frames[:1])))
        assert "pages" not in single and (single["width"], single["height"]) == (500, 500)
        assert single["lines"][0]["text"] == FIRST_LINE
        self.assert_error(self.upload_one(tiff, pages="4"), 400, "invalid_field")


class TestBatches(DocumentTestCase):
    overrides = {"service.max_batch": 5}

    def test_a_batch_answers_each_item_in_order_and_one_bad_item_fails_alone(self):
        receipt = RECEIPT.read_bytes()
        top, bottom = (_jpeg(page) for page in receipt_pages()[1:])
        response = self.upload_files([receipt, top, b"this is not an image", receipt, bottom])
        body = self.ok(response)
        assert body["status"] == "done" and len(body["results"]) == 5
        good = [body["results"][i] for i in (0, 1, 3, 4)]
        assert all(item["status"] == "done" and item["model"] == "ppocr-v4" for item in good)
        assert body["results"][0]["lines"][0]["text"] == FIRST_LINE
        assert body["results"][0]["lines"] == body["results"][3]["lines"]
        assert FIRST_LINE in body["results"][1]["text"]
        assert FIRST_LINE not in body["results"][4]["text"]
        bad = body["results"][2]
        assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_image"
        assert set(bad) == {"status", "error"}
        # The duplicate shared its twin's run: 4 runs for 5 items (the bad one ran too).
        assert self.service.engine_runs == 4
        # Too many items, in either form: refused whole, nothing read.
        self.assert_error(self.upload_files([receipt] * 6), 413, "batch_too_large")
        self.assert_error(self.post_json(file_type="base64", img_src=[b64(receipt)] * 6), 413,
                          "batch_too_large")
        self.assert_error(self.post_json(file_type="base64", img_src=[]), 400,
                          "invalid_field")
        self.assert_error(self.post_json(file_type="base64", img_src=[b64(receipt), 7]), 400,
                          "invalid_field")
        assert self.service.engine_runs == 4
        # Any other field repeated is still refused.
        doubled, content_type = _with_field_twice("model", "ppocr-v4")
        repeated = self.assert_error(self.post(doubled, content_type), 400, "invalid_field")
        assert "more than once" in repeated["error"]["message"]

    def test_a_batch_in_img_src_mixes_images_and_documents_blocking_or_not(self):
        receipt = RECEIPT.read_bytes()
        pdf = images_pdf(receipt_pages()[1:], dpi=PAGE_DPI)
        (self.roots / "receipt.jpg").write_bytes(receipt)
        items = [b64(receipt), "@@@ not base64", "data:application/pdf;base64," + b64(pdf), ""]
        body = self.ok(self.post_json(file_type="base64", img_src=items, dpi=PAGE_DPI))
        first, broken, document, empty = body["results"]
        assert first["status"] == "done" and first["lines"][0]["text"] == FIRST_LINE
        assert broken == {"status": "failed", "error": broken["error"]}
        assert broken["error"]["code"] == "invalid_field"
        assert empty["status"] == "failed" and empty["error"]["code"] == "missing_field"
        assert (document["status"], document["kind"], document["page_count"]) == \
            ("done", "pdf", 2)
        assert [page["page"] for page in document["pages"]] == [1, 2]
        assert FIRST_LINE in document["pages"][0]["text"]
        assert self.service.engine_runs == 3

        # Non-blocking: one task for the batch; filename mode takes a list of paths too.
        accepted = self.ok(self.post_json(file_type="filename", img_src=[
            "receipt.jpg", "missing.jpg", "../../config.json"], block_flag=False), 202)
        done = self.ok(self.finished(accepted["id"]))
        assert done["id"] == accepted["id"] and done["status"] == "done"
        cached, missing, outside = done["results"]
        assert cached["cached"] is True and cached["lines"] == first["lines"]
        assert missing["error"]["code"] == "file_not_found"
        assert outside["error"]["code"] == "forbidden_path"
        assert self.service.engine_runs == 3
        # A pending batch counts its items.
        self.held_page = 2
        pending = self.ok(self.post_json(file_type="base64", img_src=[b64(receipt), b64(
            images_pdf(receipt_pages(), dpi=PAGE_DPI))], dpi=PAGE_DPI, block_flag=False), 202)
        held = self.ok(self.poll_until(pending["id"], lambda response: json.loads(
            response.body).get("progress", {}).get("done") == 1), 202)
        assert held["progress"] == {"done": 1, "total": 2}
        self.release()
        finished = self.ok(self.finished(pending["id"]))
        assert [item["status"] for item in finished["results"]] == ["done", "done"]
        assert finished["results"][1]["page_count"] == 3


class TestHostileDocuments(DocumentTestCase):
    # A letter page is 2550x3300 pixels at 300 dpi (8.4 Mpx) and 1275x1650 at 150 dpi.
    overrides = {"ocr.predict_system.max_pixels": 4_000_000, "service.max_pages": 20}

    def test_bad_documents_get_a_clear_4xx_and_cost_nothing_else(self):
        pids = set(self.pool.worker_pids())
        secret = text_pdf([["The quick brown fox", "jumps over the lazy dog"]],
                          font_size=24, owner_password="owner", user_password="user")
        self.assert_error(self.upload_one(secret), 400, "password_required")
        self.assert_error(self.upload_one(secret, password="guess"), 400, "wrong_password")
        opened = self.ok(self.upload_one(secret, password="user", dpi=150))
        assert "quick brown fox" in opened["text"].lower(), opened["text"]
        # The cached pages of an encrypted PDF are not served to a client without its password.
        self.assert_error(self.upload_one(secret, dpi=150), 400, "password_required")
        runs = self.service.engine_runs

        pdf = images_pdf(receipt_pages(), dpi=PAGE_DPI)
        self.assert_error(self.upload_one(pdf[: len(pdf) // 2]), 415, "invalid_document")
        self.assert_error(self.upload_one(b"%PDF-1.7\n" + os.urandom(2000)), 415,
                          "invalid_document")
        too_many = self.assert_error(self.upload_one(many_pages_pdf(25)), 413, "too_many_pages")
        assert "25" in too_many["error"]["message"] and "20" in too_many["error"]["message"]
        self.assert_error(self.upload_one(many_pages_pdf(2000)), 413, "too_many_pages")
        # Whatever 'pages' selects: counting through the pages is already the work refused.
        self.assert_error(self.upload_one(many_pages_pdf(25), pages="1-2"), 413,
                          "too_many_pages")
        letter = pages_pdf(2, content=b"BT /F1 24 Tf 72 700 Td (page) Tj ET")
        large = self.assert_error(self.upload_one(letter, dpi=300), 413, "image_too_large")
        assert "300 dpi" in large["error"]["message"]
        self.assert_error(self.upload_one(huge_page_pdf()), 413, "image_too_large")
        self.assert_error(self.upload_one(self_drawing_form_pdf()), 422,
                          "document_too_complex")
        self.assert_error(self.upload_one(nested_page_tree_pdf()), 415, "invalid_document")
        assert self.service.engine_runs == runs  # not one page was read
        # Pages that all draw one image declared 60,000 px square: rendered within the
        # sandbox's budget (nothing to read on them), never decoded at the declared size.
        bomb = self.ok(self.upload_one(image_bomb_pdf(pages=3), pages="2", dpi=150))
        assert bomb["pages"] == [{"page": 2, "width": 1275, "height": 1650, "lines": [],
                                  "text": "", "source": "ocr"}]
        # Non-blocking, the task fails with the same error.
        accepted = self.ok(self.upload_one(secret, block_flag="false"), 202)
        failed = self.assert_error(self.finished(accepted["id"]), 400, "password_required")
        assert failed["status"] == "failed" and failed["id"] == accepted["id"]
        # The same workers, still serving; a selection of the long document is read.
        assert set(self.pool.worker_pids()) == pids and self.pool.ready_count == 2
        some = self.ok(self.upload_one(many_pages_pdf(20), pages="1-2", dpi=150))
        assert [page["page"] for page in some["pages"]] == [1, 2]
        assert self.upload(RECEIPT.read_bytes()).code == 200


class TestQueueFullMidDocument(DocumentTestCase):
    # One worker, two places in the queue; no pings or hand-over deadlines while it is stopped.
    overrides = {"ocr.process.number": 1, "ocr.process.queue_size": 2,
                 "ocr.process.ping_interval": 3600, "ocr.process.ping_timeout": 3600,
                 "ocr.process.task_timeout": 3600}

    def test_a_refused_page_fails_the_document_and_its_submitted_pages_fill_the_cache(self):
        pdf = images_pdf(receipt_pages(), dpi=PAGE_DPI)
        self.ok(self.upload_one(pdf, dpi=PAGE_DPI, pages="3"))  # caches the probe and page 3
        runs = self.service.engine_runs
        worker, = self.pool.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        try:
            # The stopped worker takes one image, the queue holds another and the document's
            # page 1; page 2 is refused.
            for drop_score in ("0.51", "0.52"):
                self.ok(self.upload(RECEIPT.read_bytes(), block_flag="false",
                                    drop_score=drop_score), 202)
            refused = self.assert_error(self.upload_one(pdf, dpi=PAGE_DPI, pages="1-2"), 503,
                                        "queue_full")
            assert refused["error"]["message"].startswith("page 2: ")
            assert refused and self.pool.queued == 2
        finally:
            os.kill(worker, signal.SIGCONT)
        self.io_loop.run_sync(lambda: self.events.wait_for(
            lambda: self.pool.queued == 0 and self.pool.busy_count == 0), timeout=DEADLINE)
        assert self.service.engine_runs == runs + 3
        # Page 1 ran although its request had gone: it is cached.
        again = self.ok(self.upload_one(pdf, dpi=PAGE_DPI, pages="1"))
        assert again["cached"] is True and again["pages"][0]["lines"][0]["text"] == FIRST_LINE
        assert self.service.engine_runs == runs + 3


def test_page_selections_are_checked_against_the_document_before_they_are_expanded():
    assert parse_pages(" 3, 1-2 ,2-, 7") == ((3, 3), (1, 2), (2, None), (7, 7))
    assert select_pages(None, 3, 3) == [1, 2, 3]
    assert select_pages(parse_pages("3,1-2,2-"), 3, 3) == [1, 2, 3]
    assert select_pages(parse_pages("2,1"), 2_000_000_000, 5) == [1, 2]
    for spec, count, limit, code, words in (
            ("1-999999999", 10**9, 200, "too_many_pages", "999999999 pages"),
            ("1-3,7", 3, 200, "invalid_field", "7 is past the end"),
            ("4-", 3, 200, "invalid_field", "4- is past the end"),
            (None, 201, 200, "too_many_pages", "201 pages")):
        with pytest.raises(ApiError) as refused:
            select_pages(None if spec is None else parse_pages(spec), count, limit)
        assert refused.value.code == code and words in refused.value.message
    for spec in ("", "1,,2", "-3", "1-2-3", "a", "0", "3-2", "1" * 10, "1," * 600):
        with pytest.raises(ApiError) as refused:
            parse_pages(spec)
        assert refused.value.code == "invalid_field" and "pages" in refused.value.message


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def _with_field_twice(name: str, value: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n").encode()
    return part * 2 + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
