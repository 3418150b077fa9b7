"""A folder job survives kill -9: the real server as a subprocess (`python setup.py --config`),
real workers and models, the job store's SQLite file in a temporary state folder.

The server is killed (SIGKILL, no chance to clean up) once some but not all of a 30-image job's
items are done; started again on the same state folder it resumes the job, and every item is
in the results exactly once, equal to a fresh reading of the same file (the result cache is
off, so each /ocr_service request afterwards really reads). A job that finished before the
kill keeps its results. Waits are bounded polls of the server's answers or the SQLite file.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil

from server.main import JOBS_FILE
from tests.app_testing import PINNED_BACKEND
from tests.pdfs import pixel_variant

ROOT = Path(__file__).resolve().parent.parent
RECEIPT = ROOT / "docs" / "samples" / "receipt.jpg"
DEADLINE = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One run of `python setup.py --config <config>`, its log in a file (a pipe nobody
    reads could fill and block the server)."""

    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.port = port
        self.log = log
        self.process = subprocess.Popen([sys.executable, "setup.py", "--config", str(config)],
                                        cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=log.open("w"))
        self.wait_ready()
        self.workers = [child for child in psutil.Process(self.process.pid).children()
                        if "resource_tracker" not in " ".join(child.cmdline())]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self) -> None:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url("/ready"), timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)  # polling a server that is still booting, under a deadline
        raise AssertionError("the server never became ready")

    def call(self, path: str, body: bytes | None = None, content_type: str | None = None,
             method: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url(path), data=body, method=method,
                                         headers={"Content-Type": content_type}
                                         if content_type else {})
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def json(self, path: str, **fields) -> tuple[int, dict]:
        if fields:
            status, body = self.call(path, json.dumps(fields).encode(), "application/json")
        else:
            status, body = self.call(path)
        return status, json.loads(body)

    def poll_job(self, job_id: str, until) -> dict:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            status, job = self.json(f"/jobs/{job_id}")
            assert status == 200, job
            if until(job):
                return job
            time.sleep(0.05)  # polling the job's observable state, under a deadline
        raise AssertionError(f"job {job_id} never got there: {job}")

    def results(self, job_id: str) -> list[dict]:
        status, body = self.call(f"/jobs/{job_id}/results?format=jsonl")
        assert status == 200, body[:300]
        return [json.loads(line) for line in body.decode().splitlines()]

    def read(self, image: bytes) -> dict:
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="x.png"\r\n\r\n').encode() + image + f"\r\n--{boundary}--\r\n".encode()
        status, answer = self.call("/ocr_service", body,
                                   f"multipart/form-data; boundary={boundary}")
        assert status == 200, answer[:300]
        return json.loads(answer)

    def kill(self) -> None:
        """SIGKILL, as a crash would; then the orphaned workers (they would exit at their
        next write to the dead parent) are ended too, so they cost no CPU."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)
        for worker in self.workers:
            try:
                worker.kill()
                worker.wait(60)
            except psutil.NoSuchProcess:
                pass

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def test_a_job_killed_mid_way_resumes_with_every_item_exactly_once(tmp_path, eval_dir):
    root = tmp_path / "root"
    batch, small = root / "batch", root / "small"
    batch.mkdir(parents=True)
    small.mkdir()
    plates = sorted((eval_dir / "plates" / "images").glob("*.jpg"))[:20]
    images: dict[str, bytes] = {}
    for index in range(30):  # receipts (slower) spread among the plates
        source = RECEIPT if index % 3 == 0 else plates[index - index // 3 - 1]
        images[f"{index:02d}.png"] = pixel_variant(source, index)
    assert len(set(images.values())) == 30
    for name, data in images.items():
        (batch / name).write_bytes(data)
    for index in range(2):
        (small / f"s{index}.png").write_bytes(pixel_variant(RECEIPT, 100 + index))
    state = tmp_path / "state"
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "web_server": {"port": port},
        "ocr": {"process": {"number": 2, "threads": 1},
                "predict_system": {"models_dir": str(ROOT / "models"),
                                   "backend": PINNED_BACKEND["ocr.predict_system.backend"]}},
        "service": {"img_number": 0, "filename_roots": [str(root)], "state_dir": str(state)},
    }))

    server = Server(config, tmp_path / "first.log", port)
    try:
        status, finished = server.json("/jobs", directory="small")
        assert status == 201, finished
        server.poll_job(finished["id"], lambda job: job["status"] == "done")
        kept = server.results(finished["id"])
        assert len(kept) == 2 and all(item["status"] == "done" for item in kept)

        status, accepted = server.json("/jobs", directory="batch")
        assert status == 201 and accepted["total"] == 30, accepted
        job_id = accepted["id"]
        server.poll_job(job_id, lambda job: job["done"] + job["failed"] >= 5)
        server.kill()
    finally:
        if server.process.poll() is None:
            server.kill()

    # What survived the crash, straight from the file: the job mid-way, still running.
    with sqlite3.connect(state / JOBS_FILE) as db:
        status_at_kill, = db.execute("SELECT status FROM jobs WHERE id = ?",
                                     (job_id,)).fetchone()
        finished_at_kill, = db.execute("SELECT COUNT(*) FROM items WHERE job_id = ? AND "
                                       "state != 'queued'", (job_id,)).fetchone()
    assert status_at_kill == "running"
    assert 5 <= finished_at_kill < 30, finished_at_kill

    server = Server(config, tmp_path / "second.log", port)
    try:
        job = server.poll_job(job_id, lambda job: job["status"] == "done")
        assert (job["total"], job["done"], job["failed"]) == (30, 30, 0)
        assert f"resuming 1 unfinished job(s): {job_id}" in server.log.read_text()
        items = server.results(job_id)
        assert [item["file"] for item in items] == sorted(images)  # each exactly once
        assert all(item["page"] == 1 and item["status"] == "done" for item in items)
        assert server.results(finished["id"]) == kept  # a finished job's results stayed

        # Equal to a fresh reading of the same bytes (no result cache: each one is read).
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            fresh = dict(zip(images, pool.map(server.read, images.values()), strict=True))
        for item in items:
            again = fresh[item["file"]]
            assert again["cached"] is False
            assert item["lines"] == again["lines"], item["file"]
            assert (item["width"], item["height"], item["text"]) == \
                (again["width"], again["height"], again["text"])
        assert any(item["lines"] for item in items)
        assert server.stop() == 0  # SIGTERM: the runner and the pool close cleanly
        assert "stopped" in server.log.read_text()
    finally:
        if server.process.poll() is None:
            server.kill()
    assert os.path.isfile(state / JOBS_FILE)
