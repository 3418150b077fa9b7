"""Folder and ZIP jobs over real HTTP (tornado.testing): the real app, real worker processes
with the real models, a real SQLite job store in a temporary state folder.

Nothing here waits on a clock: a job is waited for by polling its stored state under a
generous deadline, and where a test needs a worker held mid-item (cancel, a file swapped
between listing and reading, the priority rule) it stops that worker with SIGSTOP when the
pool dispatches the item and lets it go on with SIGCONT. Retention is tested by ticking the
runner's injected clock.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import sqlite3
import stat
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import tornado.testing
from PIL import Image
from tornado.httpclient import HTTPResponse

from server.app import make_app
from server.config import load_config
from server.handlers.jobs import CSV_COLUMNS
from server.jobs import JobRunner
from server.main import JOBS_FILE, build_context, build_engine_spec, job_limits, pool_config
from server.ocr_worker import boot
from server.pool import Lane, PoolObserver, WorkerPool
from server.store import ItemOutcome, ItemSpec, JobRecord
from server.store.sqlite import SqliteJobStore
from tests.app_testing import PINNED_BACKEND
from tests.test_server import FIRST_LINE, RECEIPT, ROOT, SAMPLES

DEADLINE = 240.0
RECEIPT_LINES = 16


def small_english() -> bytes:
    """docs/samples/english.jpg at half size, as PNG (cheaper to read, same text)."""
    image = Image.open(SAMPLES / "english.jpg").convert("RGB")
    out = io.BytesIO()
    image.resize((image.width // 2, image.height // 2)).save(out, "PNG")
    return out.getvalue()


def receipt_variant(index: int) -> bytes:
    """The receipt with one pixel changed: a new cache key, the same reading."""
    image = Image.open(RECEIPT).convert("RGB")
    image.putpixel((index, 0), (index % 256, 7, 7))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def two_page_pdf() -> bytes:
    """The receipt and the English sample as a 2-page PDF, at 100 dpi (read at dpi=100 each
    page renders at its image's own size)."""
    pages = [Image.open(RECEIPT).convert("RGB"), Image.open(io.BytesIO(small_english()))]
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=100)
    return out.getvalue()


def zip_bytes(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return out.getvalue()


def lying_zip(real: int = 200_000, declared: int = 1000) -> bytes:
    """One entry whose headers declare fewer bytes than it inflates to."""
    data = bytearray(zip_bytes([("big.png", b"A" * real)]))
    local = data.find(b"PK\x03\x04")
    data[local + 22:local + 26] = declared.to_bytes(4, "little")
    central = data.find(b"PK\x01\x02")
    data[central + 24:central + 28] = declared.to_bytes(4, "little")
    return bytes(data)


def multipart(fields: dict[str, str], upload: bytes | None = None,
              filename: str = "scans.zip") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             f"{value}\r\n".encode() for name, value in fields.items()]
    if upload is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{filename}"\r\nContent-Type: application/zip\r\n\r\n'
                     .encode() + upload + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Clock:
    """The runner's epoch clock; a test moves it with `tick` instead of waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


class Dispatches(PoolObserver):
    """The lane of every job the pool dispatches, in order; `hooks` run on each dispatch
    (on the IOLoop, before the worker can answer)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.lanes: list[Lane] = []
        self.hooks: list = []
        self.stopped: list[int] = []
        pool.observers.append(self)

    def job_dispatched(self, worker, job) -> None:
        self.lanes.append(job.lane)
        for hook in list(self.hooks):
            hook(worker, job)

    def stop_first_background(self) -> None:
        """SIGSTOPs the worker that takes the next job item, once."""
        def hook(worker, job) -> None:
            if job.lane is Lane.BACKGROUND and not self.stopped:
                os.kill(worker.pid, signal.SIGSTOP)
                self.stopped.append(worker.pid)
        self.hooks.append(hook)

    def resume(self) -> None:
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    @property
    def background(self) -> int:
        return self.lanes.count(Lane.BACKGROUND)


class JobsTestCase(tornado.testing.AsyncHTTPTestCase):
    """A real pool, a real job store under a fresh state folder and a root folder
    (service.filename_roots) per test."""

    workers = 2
    overrides: dict = {}

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ppocr-jobs-"))
        self.root = self.tmp / "root"
        self.root.mkdir()
        self.state = self.tmp / "state"
        self.clock = Clock()
        super().setUp()

    def get_app(self):
        self.config = load_config(ROOT / "config.json", {
            "ocr.process.number": self.workers, "ocr.process.threads": 1,
            "service.filename_roots": [str(self.root)], "service.state_dir": str(self.state),
            **PINNED_BACKEND, **self.overrides})
        spec = build_engine_spec(self.config)
        self.pool = WorkerPool(boot, spec, pool_config(self.config))
        self.dispatches = Dispatches(self.pool)
        self.io_loop.run_sync(self.pool.start, timeout=DEADLINE)
        context = build_context(self.config, self.pool, spec)
        self.ocr = context.services.ocr
        self.store = SqliteJobStore(self.state / JOBS_FILE)
        self.outcomes: list[str] = []  # what the metrics are told, item by item
        self.runner = JobRunner(self.store, self.ocr, context.requests,
                                job_limits(self.config),
                                self.config.resolve(self.config.service.state_dir),
                                clock=self.clock, on_item_finished=self.outcomes.append)
        self.ctx = dataclasses.replace(
            context, services=dataclasses.replace(context.services, jobs=self.runner))
        self.io_loop.run_sync(self.runner.start, timeout=DEADLINE)
        return make_app(self.ctx)

    def tearDown(self) -> None:
        self.dispatches.resume()  # never leave a stopped worker behind a failed test
        self.io_loop.run_sync(self.runner.close, timeout=DEADLINE)
        self.io_loop.run_sync(lambda: self.pool.close(timeout=30), timeout=DEADLINE)
        super().tearDown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------

    def request(self, path: str, method: str = "GET", body: bytes | str | None = None,
                headers: dict | None = None) -> HTTPResponse:
        if body is None and method == "POST":
            body = b""
        return self.fetch(path, method=method, body=body, headers=headers or {},
                          raise_error=False, request_timeout=DEADLINE,
                          allow_nonstandard_methods=True)

    def post_job(self, **fields) -> HTTPResponse:
        return self.request("/jobs", "POST", json.dumps(fields),
                            {"Content-Type": "application/json"})

    def post_zip(self, archive: bytes, **fields) -> HTTPResponse:
        body, content_type = multipart(fields, archive)
        return self.request("/jobs", "POST", body, {"Content-Type": content_type})

    def created(self, response: HTTPResponse, status: int = 201) -> dict:
        body = json.loads(response.body)
        assert response.code == status, (response.code, body)
        assert body["result_url"] == f"/jobs/{body['id']}/results"
        assert response.headers["Location"] == f"/jobs/{body['id']}"
        return body

    def job(self, job_id: str) -> dict:
        response = self.request(f"/jobs/{job_id}")
        body = json.loads(response.body)
        assert response.code == 200, body
        return body

    def wait_job(self, job_id: str, statuses: tuple[str, ...] = ("done",)) -> dict:
        """Polls the stored job (bounded) until its status is one of `statuses` and it is no
        longer being run (its items in flight finished and were written)."""
        async def finished() -> None:
            while True:
                job = await self.store.get(job_id)
                if job.status in statuses and job_id not in self.runner.running:
                    return
                await asyncio.sleep(0.02)
        self.io_loop.run_sync(finished, timeout=DEADLINE)
        return self.job(job_id)

    def wait_for(self, condition) -> None:
        async def poll() -> None:
            while not condition():
                await asyncio.sleep(0.01)
        self.io_loop.run_sync(poll, timeout=DEADLINE)

    def results(self, job_id: str, fmt: str) -> HTTPResponse:
        response = self.request(f"/jobs/{job_id}/results?format={fmt}")
        assert response.code == 200, response.body[:300]
        return response

    def assert_error(self, response: HTTPResponse, status: int, code: str) -> dict:
        body = json.loads(response.body)
        assert (response.code, body["error"]["code"]) == (status, code), body
        assert response.headers["Content-Type"].startswith("application/json")
        return body

    def rows(self, sql: str, *args) -> list[tuple]:
        """What the SQLite file itself holds (a second connection, as another process)."""
        with sqlite3.connect(self.state / JOBS_FILE) as db:
            return db.execute(sql, args).fetchall()

    def spooled(self) -> list[str]:
        return sorted(os.listdir(self.state / "spool"))


class TestFolderJobs(JobsTestCase):
    # One item at a time: the cap (all workers but one) with no idle takeover. With the
    # takeover two items may be in flight, and the receipt's second file could then join its
    # twin's run instead of finding its result cached (what the first test counts).
    overrides = {"jobs.idle_takeover": 0}

    def build_scans(self) -> Path:
        scans = self.root / "scans"
        (scans / "sub").mkdir(parents=True)
        shutil.copy(RECEIPT, scans / "receipt.jpg")
        (scans / "sub" / "english.png").write_bytes(small_english())
        (scans / "doc.pdf").write_bytes(two_page_pdf())
        (scans / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg after all" * 20)
        (scans / "notes.txt").write_text("not matched by the patterns")
        outside = self.tmp / "outside.jpg"
        shutil.copy(RECEIPT, outside)
        os.symlink(outside, scans / "escape.jpg")  # leads outside the roots: skipped
        os.symlink(scans / "receipt.jpg", scans / "copy.jpg")  # inside: read
        return scans

    def test_folder_job_to_done_with_every_export_format(self):
        scans = self.build_scans()
        accepted = self.created(self.post_job(directory="scans", recursive=True, dpi=100))
        assert (accepted["status"], accepted["total"], accepted["skipped_symlinks"]) == \
            ("queued", 5, 1)
        job = self.wait_job(accepted["id"])
        # The PDF's second page became an item once a worker had counted its pages.
        assert (job["total"], job["done"], job["failed"], job["cached"]) == (6, 5, 1, 1)
        assert sorted(self.outcomes) == ["cached", "done", "done", "done", "done", "failed"]
        assert job["skipped_symlinks"] == 1 and job["source"] == "folder"
        assert job["started_at"] and job["finished_at"] and job["eta_s"] is None
        assert len(job["recent"]) == 5 and job["options"]["drop_score"] == 0.5

        items = json.loads(self.results(job["id"], "json").body)
        assert [(item["file"], item["page"], item["status"]) for item in items] == [
            ("copy.jpg", 1, "done"), ("corrupt.jpg", 1, "failed"), ("doc.pdf", 1, "done"),
            ("doc.pdf", 2, "done"), ("receipt.jpg", 1, "done"), ("sub/english.png", 1, "done")]
        by_name = {(item["file"], item["page"]): item for item in items}
        receipt = by_name["receipt.jpg", 1]
        assert receipt["lines"][0]["text"] == FIRST_LINE and len(receipt["lines"]) == 16
        # Run in order, one at a time: the second file with the receipt's bytes is a hit.
        assert by_name["copy.jpg", 1]["cached"] is False and receipt["cached"] is True
        assert by_name["copy.jpg", 1]["lines"] == receipt["lines"]
        assert by_name["corrupt.jpg", 1]["error"]["code"] == "invalid_image"
        assert by_name["doc.pdf", 1]["lines"][0]["text"] == FIRST_LINE
        english = by_name["sub/english.png", 1]["lines"][0]["text"]
        assert english == "ACKNOWLEDGEMENTS"
        assert by_name["doc.pdf", 2]["lines"][0]["text"] == english  # the page, rendered
        assert not any("escape" in item["file"] or "notes" in item["file"] for item in items)

        jsonl = self.results(job["id"], "jsonl")
        assert jsonl.headers["Content-Type"].startswith("application/x-ndjson")
        assert [json.loads(line) for line in jsonl.body.decode().splitlines()] == items

        table = self.results(job["id"], "csv")
        assert table.headers["Content-Type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(table.body.decode())))
        assert tuple(rows[0]) == CSV_COLUMNS
        expected = [[item["file"], str(item["page"]), str(number), line["text"],
                     repr(line["confidence"]), *(str(c) for point in line["box"] for c in point)]
                    for item in items if item["status"] == "done"
                    for number, line in enumerate(item["lines"], start=1)]
        assert rows[1:] == expected and len(expected) > 2 * RECEIPT_LINES

        text = self.results(job["id"], "txt").body.decode()
        for item in items:
            body = item["text"] if item["status"] == "done" else \
                f"[failed: invalid_image: {item['error']['message']}]"
            assert f"==> {item['file']} (page {item['page']}) <==\n{body}\n\n" in text

        # The same listing, sizes, mtimes and options: the existing job answers.
        again = self.created(self.post_job(directory="scans", recursive=True, dpi=100), 200)
        assert (again["id"], again["status"]) == (job["id"], "done")
        # A file touched: a new job, every item the cache holds answered from it.
        stat_before = (scans / "receipt.jpg").stat()
        os.utime(scans / "receipt.jpg", ns=(stat_before.st_atime_ns,
                                            stat_before.st_mtime_ns + 10**9))
        runs, dispatched = self.ocr.engine_runs, self.dispatches.background
        self.clock.tick(1)
        second = self.created(self.post_job(directory="scans", recursive=True, dpi=100))
        assert second["id"] != job["id"]
        second = self.wait_job(second["id"])
        assert (second["total"], second["done"], second["failed"], second["cached"]) == \
            (6, 5, 1, 5)
        # Only the corrupt file (a failure is never cached) went to a worker again.
        assert self.ocr.engine_runs - runs == 1 and self.dispatches.background - dispatched == 1

        listing = json.loads(self.request("/jobs?limit=1").body)
        assert [entry["id"] for entry in listing["jobs"]] == [second["id"]]
        assert listing["total"] == 2 and listing["next"] == "/jobs?limit=1&offset=1"
        older = json.loads(self.request(listing["next"]).body)
        assert [entry["id"] for entry in older["jobs"]] == [job["id"]] and older["next"] is None

        assert self.request(f"/jobs/{second['id']}", "DELETE").code == 204
        self.assert_error(self.request(f"/jobs/{second['id']}"), 404, "not_found")
        self.assert_error(self.request(f"/jobs/{second['id']}/results"), 404, "not_found")
        assert self.rows("SELECT COUNT(*) FROM items WHERE job_id = ?", second["id"]) == [(0,)]
        assert json.loads(self.request("/jobs").body)["total"] == 1
        self.assert_error(self.request(f"/jobs/{job['id']}/cancel", "POST"), 409,
                          "job_finished")

    def test_bad_requests_and_sandbox_escapes_are_refused(self):
        scans = self.root / "scans"
        scans.mkdir()
        shutil.copy(RECEIPT, scans / "a.jpg")
        (scans / "b.png").write_bytes(receipt_variant(1))
        shutil.copy(RECEIPT, self.root / "file.jpg")
        os.symlink(self.tmp, self.root / "out")  # a folder leading outside the roots
        for fields, status, code, named in [
            ({"directory": "../"}, 403, "forbidden_path", "../"),
            ({"directory": "/etc"}, 403, "forbidden_path", "/etc"),
            ({"directory": "out"}, 403, "forbidden_path", "out"),
            ({"directory": "missing"}, 404, "file_not_found", "missing"),
            ({"directory": "file.jpg"}, 400, "invalid_field", "file.jpg"),
            ({"directory": 5}, 400, "invalid_field", "directory"),
            ({}, 400, "missing_field", "directory"),
            ({"directory": "scans", "colour": "red"}, 400, "invalid_field", "colour"),
            ({"directory": "scans", "drop_score": 2}, 400, "invalid_option", "drop_score"),
            ({"directory": "scans", "det_limit_type": "x"}, 400, "invalid_option",
             "det_limit_type"),
            ({"directory": "scans", "model": "ppocr-v9"}, 400, "unknown_model", "ppocr-v9"),
            ({"directory": "scans", "patterns": "a/b.jpg"}, 400, "invalid_field", "pattern"),
            ({"directory": "scans", "patterns": []}, 400, "invalid_field", "patterns"),
            ({"directory": "scans", "patterns": [3]}, 400, "invalid_field", "pattern"),
            ({"directory": "scans", "recursive": "maybe"}, 400, "invalid_field", "recursive"),
            ({"directory": "scans", "dpi": 5}, 400, "invalid_field", "dpi"),
            ({"directory": "scans", "pdf_text": "never"}, 400, "invalid_field", "pdf_text"),
        ]:
            body = self.assert_error(self.post_job(**fields), status, code)
            assert named in body["error"]["message"], (fields, body)
            assert str(self.tmp) not in body["error"]["message"]
        self.assert_error(self.request("/jobs", "POST", "{nope",
                                       {"Content-Type": "application/json"}), 400,
                          "bad_request")
        self.assert_error(self.request("/jobs", "POST", "x", {"Content-Type": "text/plain"}),
                          415, "unsupported_media_type")
        self.assert_error(self.post_zip(zip_bytes([("a.jpg", b"x")]), directory="scans"),
                          400, "invalid_field")
        self.runner.limits = dataclasses.replace(self.runner.limits, max_items=1)
        self.assert_error(self.post_job(directory="scans"), 413, "too_many_items")
        self.runner.limits = dataclasses.replace(self.runner.limits, max_items=100)
        for path, status, code in [
            ("/jobs/nope", 404, "not_found"), ("/jobs/" + "0" * 32, 404, "not_found"),
            ("/jobs/" + "0" * 32 + "/results", 404, "not_found"),
            ("/jobs?limit=0", 400, "invalid_field"), ("/jobs?page=2", 400, "invalid_field"),
        ]:
            self.assert_error(self.request(path), status, code)
        self.assert_error(self.request("/jobs/" + "0" * 32 + "/cancel", "POST"), 404,
                          "not_found")
        self.assert_error(self.request("/jobs/" + "0" * 32, "DELETE"), 404, "not_found")
        # Nothing was recorded, nothing reached a worker.
        assert json.loads(self.request("/jobs").body)["total"] == 0
        assert self.dispatches.lanes == []

        # Links inside a walked folder: only one leading to a file inside the roots is read.
        links = self.root / "links"
        links.mkdir()
        outside = self.tmp / "secret.jpg"
        outside.write_bytes(receipt_variant(2))
        os.symlink(outside, links / "secret.jpg")
        os.symlink(self.tmp, links / "outdir")
        os.symlink(self.root / "nowhere.jpg", links / "dangling.jpg")
        os.symlink(scans / "b.png", links / "inside.png")
        (links / "deeper").mkdir()
        os.symlink(outside, links / "deeper" / "also-secret.png")
        accepted = self.created(self.post_job(directory="links", recursive=True))
        assert (accepted["total"], accepted["skipped_symlinks"]) == (1, 4)
        job = self.wait_job(accepted["id"])
        items = json.loads(self.results(job["id"], "json").body)
        assert [(item["file"], item["status"]) for item in items] == [("inside.png", "done")]
        assert items[0]["lines"][0]["text"] == FIRST_LINE

        # An absolute folder inside the roots names the same folder: the same job.
        again = self.created(self.post_job(directory=str(self.root / "links"),
                                           recursive=True), 200)
        assert again["id"] == job["id"]


class TestHeldWorker(JobsTestCase):
    """Tests that hold the worker reading a job's first item (SIGSTOP) to act meanwhile.
    The cap of one item in flight must hold: no idle takeover of the second worker."""

    overrides = {"ocr.process.ping_interval": 600.0, "ocr.process.ping_timeout": 600.0,
                 "jobs.idle_takeover": 0}

    def build(self, count: int) -> None:
        batch = self.root / "batch"
        batch.mkdir()
        for index in range(count):
            (batch / f"page{index}.png").write_bytes(receipt_variant(index))

    def test_cancel_stops_dispatching_and_delete_removes_everything(self):
        self.build(3)
        self.dispatches.stop_first_background()
        accepted = self.created(self.post_job(directory="batch"))
        self.wait_for(lambda: self.dispatches.stopped)
        cancelled = json.loads(self.request(f"/jobs/{accepted['id']}/cancel", "POST").body)
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
        self.dispatches.resume()
        job = self.wait_job(accepted["id"], ("cancelled",))
        # The item in flight finished and was kept; no other was dispatched.
        assert self.dispatches.background == 1
        assert (job["status"], job["total"], job["done"], job["failed"]) == \
            ("cancelled", 3, 1, 0)
        items = json.loads(self.results(job["id"], "json").body)
        assert [item["file"] for item in items] == ["page0.png"]
        assert items[0]["lines"][0]["text"] == FIRST_LINE
        again = json.loads(self.request(f"/jobs/{job['id']}/cancel", "POST").body)
        assert again["status"] == "cancelled"  # cancelling twice is no error

        assert self.request(f"/jobs/{job['id']}", "DELETE").code == 204
        self.assert_error(self.request(f"/jobs/{job['id']}"), 404, "not_found")
        assert self.rows("SELECT COUNT(*) FROM jobs") == [(0,)]
        assert self.rows("SELECT COUNT(*) FROM items") == [(0,)]

    def test_a_file_swapped_for_a_link_after_listing_fails_its_item_only(self):
        self.build(3)
        self.dispatches.stop_first_background()
        accepted = self.created(self.post_job(directory="batch"))
        self.wait_for(lambda: self.dispatches.stopped)
        # One item in flight at a time: page1.png is opened only after page0.png is read.
        outside = self.tmp / "secret.png"
        outside.write_bytes(receipt_variant(9))
        (self.root / "batch" / "page1.png").unlink()
        os.symlink(outside, self.root / "batch" / "page1.png")
        self.dispatches.resume()
        job = self.wait_job(accepted["id"])
        assert (job["done"], job["failed"]) == (2, 1)
        lines = self.results(job["id"], "jsonl").body.decode().splitlines()
        items = {item["file"]: item for item in map(json.loads, lines)}
        failed = items["page1.png"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "forbidden_path"
        assert "'page1.png'" in failed["error"]["message"]
        assert str(self.tmp) not in failed["error"]["message"]
        assert items["page2.png"]["lines"][0]["text"] == FIRST_LINE


class TestPriority(JobsTestCase):
    """One worker; the runner may keep two items in flight, so one waits in the pool's
    background lane while the other runs: an interactive request must overtake it."""

    workers = 1
    overrides = {"jobs.max_workers": 2, "ocr.process.ping_interval": 600.0,
                 "ocr.process.ping_timeout": 600.0}

    def test_an_interactive_request_is_dispatched_before_any_further_job_item(self):
        batch = self.root / "batch"
        batch.mkdir()
        for index in range(3):
            (batch / f"page{index}.png").write_bytes(receipt_variant(index))
        self.dispatches.stop_first_background()
        accepted = self.created(self.post_job(directory="batch"))
        self.wait_for(lambda: self.dispatches.stopped)
        self.wait_for(lambda: self.pool.stats()["queued_background"] == 1)
        body, content_type = multipart({"file_type": "file"}, receipt_variant(100), "r.png")

        async def interactive() -> HTTPResponse:
            pending = asyncio.ensure_future(self.http_client.fetch(
                self.get_url("/ocr_service"), method="POST", body=body, raise_error=False,
                headers={"Content-Type": content_type},
                request_timeout=DEADLINE))
            while self.pool.stats()["queued"] != 1:
                await asyncio.sleep(0.01)  # until it waits in the interactive lane
            self.dispatches.resume()
            return await pending

        response = self.io_loop.run_sync(interactive, timeout=DEADLINE)
        assert response.code == 200 and json.loads(response.body)["cached"] is False
        job = self.wait_job(accepted["id"])
        assert job["done"] == 3
        assert self.dispatches.lanes == [Lane.BACKGROUND, Lane.INTERACTIVE, Lane.BACKGROUND,
                                         Lane.BACKGROUND]


class TestZipJobs(JobsTestCase):
    def test_zip_job_hostile_archives_and_retention(self):
        archive = zip_bytes([("scans/receipt.jpg", RECEIPT.read_bytes()),
                             ("english.png", small_english()), ("readme.txt", b"skipped"),
                             (zipfile.ZipInfo("empty/"), b"")])
        accepted = self.created(self.post_zip(archive, drop_score="0.5"))
        assert accepted["total"] == 2
        assert self.spooled() == [accepted["id"]]
        assert sorted(os.listdir(self.state / "spool" / accepted["id"])) == ["0", "1"]
        job = self.wait_job(accepted["id"])
        assert (job["source"], job["name"], job["done"], job["failed"]) == \
            ("zip", "scans.zip", 2, 0)
        items = [json.loads(line) for line in
                 self.results(job["id"], "jsonl").body.decode().splitlines()]
        assert [item["file"] for item in items] == ["scans/receipt.jpg", "english.png"]
        receipt = next(item for item in items if item["file"] == "scans/receipt.jpg")
        assert receipt["lines"][0]["text"] == FIRST_LINE
        again = self.created(self.post_zip(archive, drop_score="0.5"), 200)
        assert again["id"] == job["id"] and self.spooled() == [job["id"]]

        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        self.runner.limits = dataclasses.replace(self.runner.limits, max_zip_entries=3,
                                                 max_zip_bytes=1 << 20)
        for name, data, status, code in [
            ("traversal", zip_bytes([("../evil.jpg", b"x")]), 400, "invalid_archive"),
            ("nested traversal", zip_bytes([("a/../../evil.jpg", b"x")]), 400,
             "invalid_archive"),
            ("absolute", zip_bytes([("/etc/evil.jpg", b"x")]), 400, "invalid_archive"),
            ("backslashes", zip_bytes([("..\\evil.jpg", b"x")]), 400, "invalid_archive"),
            ("link", zip_bytes([(link, b"/etc/passwd")]), 400, "invalid_archive"),
            ("nested zip", zip_bytes([("inner.zip", archive)]), 400, "invalid_archive"),
            ("zip disguised as an image", zip_bytes([("photo.jpg", archive)]), 400,
             "invalid_archive"),
            ("lying sizes", lying_zip(), 400, "invalid_archive"),
            ("not a zip", b"this is no archive", 400, "invalid_archive"),
            ("too many entries", zip_bytes([(f"{i}.png", b"x") for i in range(4)]), 413,
             "too_many_items"),
            ("a bomb by declared size", zip_bytes([("bomb.png", bytes(8 << 20))]), 413,
             "archive_too_large"),
        ]:
            body = self.assert_error(self.post_zip(data), status, code)
            assert len(body["error"]["message"]) < 300, name
        # Refused uploads leave nothing behind: no row, no spooled file.
        assert self.spooled() == [job["id"]]
        assert self.rows("SELECT COUNT(*) FROM jobs") == [(1,)]

        # Retention: the finished job goes, with its rows and spooled entries.
        self.clock.tick(self.config.jobs.retention - 10)
        assert self.io_loop.run_sync(self.runner.expire_finished) == 0
        self.clock.tick(20)
        assert self.io_loop.run_sync(self.runner.expire_finished) == 1
        self.assert_error(self.request(f"/jobs/{job['id']}"), 404, "not_found")
        assert self.spooled() == []
        assert self.rows("SELECT COUNT(*) FROM items") == [(0,)]


# ---------------------------------------------------------------- the store's own contract

def test_store_writes_are_idempotent_and_pages_are_added_once(tmp_path):
    async def scenario() -> None:
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        await store.open()
        job = JobRecord(id="a" * 32, fingerprint="f", source="folder", name="scans",
                        location="/x", options="{}", model="m", status="queued", total=0,
                        created_at=1.0)
        stored = await store.create(job, [ItemSpec("a.pdf"), ItemSpec("b.jpg")])
        assert stored.total == 2
        duplicate = dataclasses.replace(job, id="b" * 32)
        assert (await store.create(duplicate, [ItemSpec("c.jpg")])).id == job.id
        assert await store.add_pages(job.id, 0, 3, max_total=10) == 2
        assert await store.add_pages(job.id, 0, 3, max_total=10) == 0  # again: nothing new
        assert await store.add_pages(job.id, 1, 20, max_total=10) is None
        assert (await store.get(job.id)).total == 4
        pending = await store.pending(job.id, (-1, -1), 10)
        assert [(item.file, item.page) for item in pending] == [
            ("a.pdf", 1), ("a.pdf", 2), ("a.pdf", 3), ("b.jpg", 1)]
        outcome = ItemOutcome(0, 2, result={"text": "page two"}, cached=True, finished_at=2.0)
        for _ in range(2):  # a resumed job may write an outcome twice: it counts once
            await store.record([(job.id, 0, 2)], [(job.id, outcome)])
        stored = await store.get(job.id)
        assert (stored.done, stored.cached, stored.failed) == (1, 1, 0)
        [item] = await store.items(job.id, (-1, -1), 10)
        assert (item.seq, item.page, item.result, item.attempts) == (0, 2, {"text": "page two"},
                                                                    1)
        assert [(i.seq, i.page) for i in await store.pending(job.id, (0, 1), 10)] == [
            (0, 3), (1, 1)]
        assert await store.set_status(job.id, "running", 3.0)
        assert await store.set_status(job.id, "done", 4.0)
        assert not await store.set_status(job.id, "cancelled", 5.0)  # finished stays finished
        assert [j.id for j in await store.expired(4.5)] == [job.id]
        assert await store.delete(job.id)
        await store.record([], [(job.id, outcome)])  # a late write for a deleted job: nothing
        assert await store.get(job.id) is None and await store.items(job.id, (-1, -1), 9) == []
        await store.close()
        # The file is a WAL database another connection reads.
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("SELECT COUNT(*) FROM items").fetchone() == (0,)

    asyncio.run(asyncio.wait_for(scenario(), 60))
