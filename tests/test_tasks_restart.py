"""Non-blocking documents and batches survive kill -9: the real server as a subprocess
(server/testing.py ServerProcess, one worker, real models), its task store and spooled requests
in a temporary state folder.

The one worker is SIGSTOPped first, so a 3-page PDF and a 2-image batch submitted then are
surely pending (their 202 came after their rows and spools were committed) when the server is
SIGKILLed. Started again on the same state folder, the server redoes both from their spools:
they reach done with the lines a fresh reading gives (the result cache is off, so every
reading afterwards really reads). A task whose spool was lost meanwhile finishes as
500 task_lost instead of staying pending. A task finished before the kill is still readable
after it, and the redone tasks still are after a graceful restart. Waits are bounded polls of
the server's answers, never sleeps.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import sqlite3
from pathlib import Path

import psutil
from PIL import Image

from server.main import TASK_SPOOL, TASKS_FILE
from server.testing import ServerProcess, request, wait_for
from tests.app_testing import PINNED_BACKEND
from tests.pdfs import images_pdf, multipart

ROOT = Path(__file__).resolve().parent.parent
RECEIPT = ROOT / "docs" / "samples" / "receipt.jpg"
DEADLINE = 240.0
PAGE_DPI = 100  # Pillow writes each image as a page at this resolution: pages render 1:1


def receipt_pages() -> list[Image.Image]:
    """Three different pages: the receipt, its top half, its bottom half."""
    receipt = Image.open(RECEIPT).convert("RGB")
    width, height = receipt.size
    return [receipt, receipt.crop((0, 0, width, height // 2)),
            receipt.crop((0, height // 2, width, height))]


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def post(server: ServerProcess, files: list[bytes], **fields) -> tuple[int, dict]:
    body, content_type = multipart({k: str(v) for k, v in fields.items()}, files)
    status, _, answer = request(server.port, "POST", "/ocr_service", body,
                                {"Content-Type": content_type}, timeout=DEADLINE)
    return status, json.loads(answer)


def poll(server: ServerProcess, task_id: str) -> tuple[int, dict]:
    """The task's answer once it is no longer pending."""
    answer: list = []

    def finished() -> bool:
        answer[:] = server.get_json(f"/ocr_service/{task_id}", timeout=30)
        return answer[0] != 202

    wait_for(finished, DEADLINE, f"task {task_id} stayed pending", interval=0.1)
    return answer[0], answer[1]


def kill(server: ServerProcess, workers: list[psutil.Process]) -> None:
    """SIGKILL, as a crash would; then the (stopped) worker, which cannot exit by itself."""
    server.kill()
    for worker in workers:
        try:
            worker.kill()
            worker.wait(60)
        except psutil.NoSuchProcess:
            pass


def pending_rows(state: Path) -> list[str]:
    with sqlite3.connect(state / TASKS_FILE) as db:
        return [row[0] for row in db.execute("SELECT id FROM tasks WHERE finished IS NULL")]


def reading(body: dict) -> list:
    """What must be equal between two readings: every page's (or item's) size, lines, text."""
    if "results" in body:
        return [(item["status"], item["width"], item["height"], item["lines"], item["text"])
                for item in body["results"]]
    return [body["page_count"], body["text"],
            [(page["page"], page["width"], page["height"], page["lines"], page["text"])
             for page in body["pages"]]]


def test_pending_documents_and_batches_are_redone_after_kill_9(tmp_path):
    state = tmp_path / "state"
    overrides = {"ocr.process.number": 1, "ocr.process.threads": 1, "service.img_number": 0,
                 "service.state_dir": str(state), **PINNED_BACKEND,
                 # The worker is held (SIGSTOP) while three tasks are posted: a held worker
                 # counts as not ready after ping_interval, and the server would answer 503.
                 "ocr.process.ping_interval": 120, "ocr.process.ping_timeout": 120}
    pdf = images_pdf(receipt_pages(), dpi=PAGE_DPI)
    receipt, half = png(receipt_pages()[0]), png(receipt_pages()[2])
    lost_pdf = images_pdf(receipt_pages()[1:2], dpi=PAGE_DPI)

    first = ServerProcess(tmp_path, overrides, name="first")
    with first.start(ready_timeout=DEADLINE):
        # A task that finishes before the kill.
        status, accepted = post(first, [half, half], block_flag="false")
        assert status == 202, accepted
        kept_id = accepted["id"]
        status, kept = poll(first, kept_id)
        assert status == 200 and [item["status"] for item in kept["results"]] == ["done"] * 2

        # Hold the only worker: what is submitted now stays pending.
        workers = first.workers()
        assert len(workers) == 1
        workers[0].send_signal(signal.SIGSTOP)
        status, document = post(first, [pdf], dpi=PAGE_DPI, block_flag="false")
        assert status == 202, document
        status, batch = post(first, [receipt, half], block_flag="false")
        assert status == 202, batch
        status, lost = post(first, [lost_pdf], dpi=PAGE_DPI, block_flag="false")
        assert status == 202, lost
        for task in (document, batch, lost):
            assert first.get_json(f"/ocr_service/{task['id']}")[0] == 202
        kill(first, workers)

    # What the crash left: three pending rows, each with its spooled request.
    accepted_ids = {document["id"], batch["id"], lost["id"]}
    assert set(pending_rows(state)) == accepted_ids
    spool = state / TASK_SPOOL
    assert {path.name for path in spool.iterdir()} == accepted_ids
    shutil.rmtree(spool / lost["id"])  # this one's request is gone for good

    second = ServerProcess(tmp_path, overrides, name="second")
    with second.start(ready_timeout=DEADLINE):
        status, redone_document = poll(second, document["id"])
        assert status == 200, redone_document
        assert redone_document["kind"] == "pdf" and redone_document["page_count"] == 3
        status, redone_batch = poll(second, batch["id"])
        assert status == 200, redone_batch
        status, failed = poll(second, lost["id"])
        assert status == 500 and failed["error"]["code"] == "task_lost", failed
        assert "send the request again" in failed["error"]["message"]
        log = second.log_path.read_text()
        assert "redoing 3 pending task(s)" in log

        # The finished task read before the kill is still readable, the same.
        status, kept_after = second.get_json(f"/ocr_service/{kept_id}")
        assert status == 200 and kept_after == kept

        # Equal to a fresh reading of the same bytes (no result cache: each one is read).
        status, fresh_document = post(second, [pdf], dpi=PAGE_DPI)
        assert status == 200 and fresh_document["cached"] is False, fresh_document
        assert reading(redone_document) == reading(fresh_document)
        assert any(page["lines"] for page in redone_document["pages"])
        status, fresh_batch = post(second, [receipt, half])
        assert status == 200, fresh_batch
        assert reading(redone_batch) == reading(fresh_batch)
        assert [item["status"] for item in redone_batch["results"]] == ["done", "done"]

        assert pending_rows(state) == []
        assert list(spool.iterdir()) == []  # each spool deleted as its task finished
        assert second.stop() == 0  # SIGTERM: the task store closes cleanly
    assert "stopped" in second.log_path.read_text()

    # Finished, then a restart: still readable, the same answers.
    third = ServerProcess(tmp_path, overrides, name="third")
    with third.start(ready_timeout=DEADLINE):
        assert third.get_json(f"/ocr_service/{document['id']}") == (200, redone_document)
        assert third.get_json(f"/ocr_service/{batch['id']}") == (200, redone_batch)
        assert third.get_json(f"/ocr_service/{kept_id}") == (200, kept)
        status, failed_again = third.get_json(f"/ocr_service/{lost['id']}")
        assert status == 500 and failed_again["error"]["code"] == "task_lost"
        assert failed_again["error"]["message"] == failed["error"]["message"]
        assert "redoing" not in third.log_path.read_text()
        assert third.stop() == 0
