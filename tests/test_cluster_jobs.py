"""Folder and ZIP jobs across nodes: two real ppocr-servers (`python setup.py --config`, one
worker each, the repository's models) sharing one real redis-server (tests/redis_nginx.py),
each node taking the job's items from the shared stream.

- A folder job submitted to node A is read by both nodes (each node's own
  ppocr_job_items_total counts items it read); node A is then killed with SIGKILL while it
  holds an item (the stream's pending list says so), node B takes that item over once it has
  been idle for jobs.redis_claim_idle, and the job completes with every file exactly once,
  equal to a fresh reading of the same bytes. An identical re-submission to B answers with
  the same job, and a node started afterwards serves the same results.
- A ZIP job the same: its entries are stored in Redis at submission, so node B reads the
  items node A took, after A is killed.
- Redis down (stopped; its append-only file brings it back): a node starts without it; POST
  /jobs and GET /jobs/<id> answer a JSON 503 store_unavailable with Retry-After, the node's
  runner waits, and once Redis answers again the job completes with every item exactly once.

Waits are bounded polls of the servers' and Redis's observable state, never bare sleeps.
"""

from __future__ import annotations

import io
import json
import secrets
import zipfile
from pathlib import Path

import pytest

from server.testing import ServerProcess, multipart, request, wait_for
from tests.app_testing import PINNED_BACKEND
from tests.pdfs import images_pdf, pixel_variant
from tests.redis_nginx import RedisServer, redis_conf

ROOT = Path(__file__).resolve().parent.parent
RECEIPT = ROOT / "docs" / "samples" / "receipt.jpg"
ENGLISH = ROOT / "docs" / "samples" / "english.jpg"
DEADLINE = 300.0
CLAIM_IDLE = 2.0  # jobs.redis_claim_idle: how long a dead node's item waits to be taken over
GROUP = "runners"


def images(count: int, offset: int = 0) -> dict[str, bytes]:
    made = {f"{index:02d}.png": pixel_variant(RECEIPT if index % 2 else ENGLISH, offset + index)
            for index in range(count)}
    assert len(set(made.values())) == count
    return made


@pytest.fixture
def redis_server(tmp_path) -> RedisServer:
    """A redis-server with its append-only file on (fsync always), so a stop and a start is
    an outage, not a loss of the jobs."""
    server = RedisServer(tmp_path / "redis")
    server.conf_path.write_text(redis_conf(server.port).replace(
        "appendonly no", "appendonly yes\nappendfsync always"))
    with server:
        yield server


def node(tmp_path: Path, name: str, redis: RedisServer, prefix: str, root: Path
         ) -> ServerProcess:
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    return ServerProcess(workdir, {
        "ocr.process.number": 1, "ocr.process.threads": 1,
        **PINNED_BACKEND,
        "service.img_number": 0, "service.time": 0,  # no cache: every item really read
        "service.filename_roots": [str(root)], "service.state_dir": str(workdir / "state"),
        "service.redis_url": redis.url, "service.redis_prefix": prefix,
        "jobs.redis_claim_idle": CLAIM_IDLE, "jobs.redis_consumer": name,
    }, name=name)


def start_nodes(*nodes: ServerProcess) -> None:
    for server in nodes:  # launched together: they load their models side by side
        server.start(ready_timeout=None)
    for server in nodes:
        server.wait_ready(DEADLINE)


def call(server: ServerProcess, method: str, path: str, fields: dict | None = None
         ) -> tuple[int, dict, dict]:
    body = json.dumps(fields).encode() if fields is not None else None
    status, headers, data = request(server.port, method, path, body,
                                    {"Content-Type": "application/json"} if body else {},
                                    timeout=60)
    return status, dict(headers), json.loads(data or b"{}")


def items_read(server: ServerProcess) -> int:
    """Job items this node read (its ppocr_job_items_total, every outcome)."""
    status, _, body = request(server.port, "GET", "/metrics", timeout=10)
    assert status == 200
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                   if line.startswith("ppocr_job_items_total{")))


def job_state(server: ServerProcess, job_id: str) -> dict:
    status, _, job = call(server, "GET", f"/jobs/{job_id}")
    assert status == 200, job
    return job


def wait_done(server: ServerProcess, job_id: str) -> dict:
    wait_for(lambda: job_state(server, job_id)["status"] == "done", DEADLINE,
             f"job {job_id} never finished on {server.name}: {server.log_tail()}")
    return job_state(server, job_id)


def results(server: ServerProcess, job_id: str) -> list[dict]:
    status, _, body = request(server.port, "GET", f"/jobs/{job_id}/results?format=jsonl",
                              timeout=60)
    assert status == 200, body[:300]
    return [json.loads(line) for line in body.decode().splitlines()]


def fresh_reading(server: ServerProcess, image: bytes) -> dict:
    body, content_type = multipart({}, image, "x.png")
    status, _, answer = request(server.port, "POST", "/ocr_service", body,
                                {"Content-Type": content_type}, timeout=120)
    assert status == 200, answer[:300]
    return json.loads(answer)


def waits(server: ServerProcess) -> int:
    """How often the node's job runner logged that it waits for the job store."""
    return server.log_path.read_text(errors="replace").count("job items wait")


def held_by(redis: RedisServer, prefix: str, consumer: str) -> int:
    """Stream entries `consumer` took and has not acknowledged (XPENDING)."""
    rows = redis.command("XPENDING", f"{prefix}jobs:stream", GROUP, "-", "+", "100",
                         consumer).split()
    return len(rows) // 4  # id, consumer, idle, deliveries per entry


def kill_while_holding(victim: ServerProcess, other: ServerProcess, redis: RedisServer,
                       prefix: str) -> None:
    """SIGKILL `victim` once both nodes have read an item and `victim` holds one now."""
    wait_for(lambda: items_read(victim) >= 1 and items_read(other) >= 1
             and held_by(redis, prefix, victim.name) >= 1, DEADLINE,
             "the two nodes never both read items")
    victim.kill()
    # The dead node's taken item is still in the stream, taken by nobody alive.
    assert held_by(redis, prefix, victim.name) >= 1


def check_every_item_once(server: ServerProcess, job_id: str, made: dict[str, bytes],
                          documents: dict[str, int] | None = None) -> None:
    """The job done with each image (and each page of `documents`: name -> pages) exactly
    once, every image's result equal to a fresh reading of its bytes."""
    documents = documents or {}
    expected = sorted([(name, 1) for name in made] + [
        (name, page) for name, pages in documents.items() for page in range(1, pages + 1)])
    job = wait_done(server, job_id)
    assert (job["total"], job["done"], job["failed"]) == (len(expected), len(expected), 0), job
    everything = results(server, job_id)
    assert [(item["file"], item["page"]) for item in everything] == expected  # each once
    assert all(item["status"] == "done" and item["lines"] for item in everything)
    items = [item for item in everything if item["file"] in made]
    # Equal to a fresh reading (no cache: each one is read), checked for the first variant of
    # each of the two source images (the others differ from them by one pixel).
    for item in items[:2]:
        again = fresh_reading(server, made[item["file"]])
        assert again["cached"] is False
        assert (item["lines"], item["text"], item["width"]) == (again["lines"], again["text"],
                                                                 again["width"]), item["file"]
    assert any(item["lines"] for item in items)


def test_a_folder_job_is_read_by_both_nodes_and_survives_a_killed_one(tmp_path, redis_server):
    root = tmp_path / "shared"  # in a cluster: a shared file system, the same path on each
    (root / "batch").mkdir(parents=True)
    made = images(10)
    for name, data in made.items():
        (root / "batch" / name).write_bytes(data)
    # A document: its pages 2 and 3 become stream entries once a node has counted them.
    (root / "batch" / "doc.pdf").write_bytes(images_pdf([RECEIPT, ENGLISH, RECEIPT]))
    submission = {"directory": "batch", "dpi": 100}
    prefix = f"c{secrets.token_hex(3)}:"
    node_a = node(tmp_path, "node-a", redis_server, prefix, root)
    node_b = node(tmp_path, "node-b", redis_server, prefix, root)
    try:
        start_nodes(node_a, node_b)
        status, _, accepted = call(node_a, "POST", "/jobs", submission)
        assert status == 201 and accepted["total"] == len(made) + 1, accepted
        job_id = accepted["id"]
        assert job_state(node_b, job_id)["name"] == "batch"  # B answers for A's job
        kill_while_holding(node_a, node_b, redis_server, prefix)

        check_every_item_once(node_b, job_id, made, {"doc.pdf": 3})
        assert held_by(redis_server, prefix, "node-a") == 0
        assert "took over 1 job item(s) another node left idle" in node_b.log_path.read_text()
        # An identical re-submission, to the other node, is the same job.
        status, _, again = call(node_b, "POST", "/jobs", submission)
        assert (status, again["id"]) == (200, job_id)
        # A node started now serves the same results.
        node_c = node(tmp_path, "node-c", redis_server, prefix, root)
        with node_c:
            assert results(node_c, job_id) == results(node_b, job_id)
            status, _, listed = call(node_c, "GET", "/jobs")
            assert status == 200 and [job["id"] for job in listed["jobs"]] == [job_id]
        assert node_b.stop() == 0
    finally:
        for server in (node_a, node_b):
            if server.proc is not None and server.proc.poll() is None:
                server.kill()


def test_a_zip_job_is_read_by_both_nodes_and_survives_a_killed_one(tmp_path, redis_server):
    made = images(8, offset=50)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writer:
        for name, data in made.items():
            writer.writestr(f"scans/{name}", data)
    made = {f"scans/{name}": data for name, data in made.items()}
    root = tmp_path / "roots"
    root.mkdir()
    prefix = f"z{secrets.token_hex(3)}:"
    node_a = node(tmp_path, "node-a", redis_server, prefix, root)
    node_b = node(tmp_path, "node-b", redis_server, prefix, root)
    try:
        start_nodes(node_a, node_b)
        body, content_type = multipart({}, archive.getvalue(), "batch.zip")
        status, _, answer = request(node_a.port, "POST", "/jobs", body,
                                    {"Content-Type": content_type}, timeout=60)
        accepted = json.loads(answer)
        assert status == 201 and accepted["total"] == len(made), accepted
        job_id = accepted["id"]
        # The entries are in Redis, not in node A's state folder.
        assert not any((tmp_path / "node-a" / "state" / "spool").iterdir())
        assert redis_server.command("HLEN", f"{prefix}j:{job_id}:zip").strip() == b"8"
        kill_while_holding(node_a, node_b, redis_server, prefix)

        check_every_item_once(node_b, job_id, made)
        status, _, answer = request(node_b.port, "POST", "/jobs", body,
                                    {"Content-Type": content_type}, timeout=60)
        assert (status, json.loads(answer)["id"]) == (200, job_id)
        # Finished: its entries expire with the job's retention.
        assert int(redis_server.command("TTL", f"{prefix}j:{job_id}:zip")) > 0
        status, _, _ = call(node_b, "DELETE", f"/jobs/{job_id}")
        assert status == 204
        assert redis_server.command("EXISTS", f"{prefix}j:{job_id}:zip").strip() == b"0"
    finally:
        for server in (node_a, node_b):
            if server.proc is not None and server.proc.poll() is None:
                server.kill()


def test_redis_down_is_a_503_and_the_job_goes_on_when_it_is_back(tmp_path, redis_server):
    root = tmp_path / "shared"
    (root / "batch").mkdir(parents=True)
    (root / "other").mkdir()
    made = images(6, offset=100)
    for name, data in made.items():
        (root / "batch" / name).write_bytes(data)
    (root / "other" / "x.png").write_bytes(pixel_variant(RECEIPT, 200))
    prefix = f"d{secrets.token_hex(3)}:"
    server = node(tmp_path, "node-a", redis_server, prefix, root)
    redis_server.stop()  # a node started while Redis is down starts, and waits for it
    with server:
        server.wait_ready(DEADLINE)
        assert call(server, "GET", "/jobs")[0] == 503
        redis_server.start()
        status, _, accepted = call(server, "POST", "/jobs", {"directory": "batch"})
        assert status == 201, accepted
        job_id = accepted["id"]
        wait_for(lambda: job_state(server, job_id)["done"] >= 2, DEADLINE,
                 "the job never got going")
        waits_before = waits(server)  # the start without Redis logged one already
        redis_server.stop()
        for method, path, fields in (("POST", "/jobs", {"directory": "other"}),
                                     ("GET", f"/jobs/{job_id}", None),
                                     ("GET", "/jobs", None)):
            status, headers, body = call(server, method, path, fields)
            assert status == 503, (method, path, body)
            assert body["error"]["code"] == "store_unavailable", body
            assert int(headers["Retry-After"]) >= 1
        # The runner meets the outage (its item read meanwhile cannot be recorded, or it
        # cannot take the next) and waits; Redis stays down until it has.
        wait_for(lambda: waits(server) > waits_before, 120,
                 "the runner never noticed the outage")
        redis_server.start()
        check_every_item_once(server, job_id, made)
        assert server.stop() == 0
