"""Scale-out on Redis (service.redis_url): real redis-server, real nginx, real nodes.

Two layers:
- the parts, over a real redis-server (fast, no models): the link's outage and return, the
  shared cache and its L1, the task mirror and its lease, the claims (lead, follow, the
  completion message, shared and unshared errors, a dead lead taken over, Redis lost while
  following);
- two ppocr-server nodes (server.testing.ServerProcess, one worker each, real models) sharing
  one Redis behind nginx round robin: a result read through one node is a hit on the other, a
  task accepted by one is read on the other, 20 identical concurrent requests through nginx
  cost one engine run in all, Redis stopped mid-traffic costs no 5xx (and its return resumes
  the sharing), and a node killed (-9) while it holds a claim has its run taken over by the
  other node, whose waiting requests all complete.

Engine runs are read from each node's /ready (`engine_runs`: runs of that node's own pool).
Waits are bounded polls of observable state (a node's /ready, Redis keys), never sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from server.cluster import ClusterRuns
from server.config import load_config
from server.errors import ErrorInfo
from server.store import Outcome
from server.store.memory import MemoryTaskStore
from server.store.redis import RedisLink, RedisResultCache, RedisTaskMirror, redacted
from server.testing import LOOPBACK, ServerProcess, free_port, request, wait_for
from tests.app_testing import PINNED_BACKEND
from tests.redis_nginx import Nginx, RedisServer, nginx_conf, nginx_site, redis_conf

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "DEPLOY.md"
DEADLINE = 240.0  # seconds any wait may take; only a broken cluster reaches it
UNIT_DEADLINE = 30.0


# ================================================================ the parts, on a real Redis

@pytest.fixture
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


def run(coroutine: Awaitable) -> object:
    return asyncio.run(asyncio.wait_for(coroutine, UNIT_DEADLINE))


async def until(condition: Callable[[], bool], message: str) -> None:
    """A bounded poll of observable state, on the loop (the link's own loop keeps running)."""
    deadline = asyncio.get_running_loop().time() + UNIT_DEADLINE
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.02)


def fast_link(server: RedisServer, **kwargs) -> RedisLink:
    # A stopped Redis refuses connections at once; the timeout only guards against a machine
    # so loaded that a healthy round trip is slow (which would read as an outage).
    return RedisLink(server.url, timeout=2.0, check_interval=0.05, **kwargs)


@contextlib.asynccontextmanager
async def two_links(server: RedisServer) -> AsyncIterator[tuple[RedisLink, RedisLink]]:
    """Two nodes' links to `server`, started; closed after the block."""
    links = fast_link(server), fast_link(server)
    for link in links:
        await link.start()
    try:
        yield links
    finally:
        for link in links:
            await link.close()


@contextlib.asynccontextmanager
async def two_mirrors(links: tuple[RedisLink, RedisLink], lease: float = 30
                      ) -> AsyncIterator[tuple[RedisTaskMirror, RedisTaskMirror]]:
    """A task mirror per link, each over its node's own memory store; closed after."""
    mirrors = tuple(RedisTaskMirror(link, MemoryTaskStore(100, 60), ttl=60, lease=lease)
                    for link in links)
    try:
        yield mirrors
    finally:
        for mirror in mirrors:
            await mirror.close()


def test_redacted_hides_the_password():
    assert redacted("redis://:s3cret@db:6380/1") == "redis://:***@db:6380/1"
    assert redacted("rediss://user:s3cret@db/0") == "rediss://user:***@db/0"
    assert redacted("redis://db:6379/0") == "redis://db:6379/0"


def test_link_goes_down_once_and_comes_back_by_itself(redis_server, caplog):
    async def scenario() -> None:
        link = fast_link(redis_server)
        await link.start()
        assert link.available and link.stats() == {"redis": "ok"}
        assert await link.call(link.client.set(link.key("x"), b"1")) is True
        redis_server.stop()
        # Every call answers its fallback, none raises; only the first reaches the network.
        for _ in range(5):
            assert await link.call(link.client.get(link.key("x")), "fallback") == "fallback"
        assert not link.available and link.stats()["redis"] == "degraded"
        assert link.degraded  # why, for /ready
        await until(lambda: link.failures >= 5, "fallbacks not counted")
        redis_server.start()
        await until(lambda: link.available, "the link did not reconnect by itself")
        assert await link.call(link.client.get(link.key("x"))) is None  # persistence is off
        await link.close()

    with caplog.at_level(logging.INFO, logger="ppocr.redis"):
        run(scenario())
    down = [r for r in caplog.records if "is unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(down) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records]


def test_link_to_a_redis_that_is_not_there_degrades_without_raising():
    async def scenario() -> None:
        link = RedisLink(f"redis://{LOOPBACK}:{free_port()}/0", timeout=0.2,
                         check_interval=0.05)
        await link.start()
        assert not link.available and "Error" in link.degraded
        cache = RedisResultCache(link, ttl=60, l1_size=10)
        await cache.put("k", b"body")  # the node's own memory keeps it
        assert await cache.get("k") == b"body"
        await link.close()

    run(scenario())


def test_result_cache_is_shared_and_l1_answers_without_redis(redis_server):
    async def scenario() -> None:
        async with two_links(redis_server) as (link_a, link_b):
            node_a = RedisResultCache(link_a, ttl=60, l1_size=10)
            node_b = RedisResultCache(link_b, ttl=60, l1_size=10)
            no_l1 = RedisResultCache(link_b, ttl=60, l1_size=0)
            await node_a.put("key", b'{"text":"x"}')
            ttl_ms = int(redis_server.command("PTTL", "ppocr:r:key"))
            assert 0 < ttl_ms <= 60_000  # service.time is the expiry
            assert await node_b.get("key") == b'{"text":"x"}'
            assert node_b.shared_hits == 1  # a round trip
            assert await node_b.get("key") == b'{"text":"x"}'
            assert node_b.shared_hits == 1 and node_b.hits == 2  # L1
            assert await no_l1.get("key") == b'{"text":"x"}' and no_l1.shared_hits == 1
            redis_server.stop()
            assert await node_b.get("key") == b'{"text":"x"}'  # L1, Redis gone
            assert await no_l1.get("key") is None  # no L1: a miss, never an error
            assert await node_b.get("other") is None

    run(scenario())


def test_caching_off_writes_nothing(redis_server):
    async def scenario() -> None:
        link = fast_link(redis_server)
        await link.start()
        cache = RedisResultCache(link, ttl=0, l1_size=10)
        await cache.put("key", b"x")
        assert await cache.get("key") is None
        assert redis_server.command("EXISTS", "ppocr:r:key").strip() == b"0"
        await link.close()

    run(scenario())


def test_task_mirror_shows_every_state_on_another_node(redis_server):
    async def scenario() -> None:
        async with two_links(redis_server) as links, two_mirrors(links) as (node_a, node_b):
            await node_a.create("t1")
            assert (await node_b.get("t1")).pending
            await node_a.progress("t1", 2, 5)
            assert (await node_b.get("t1")).progress == {"done": 2, "total": 5}
            await node_a.finish("t1", Outcome(result={"text": "hi"}, body=b'{"text":"hi"}'))
            done = await node_b.get("t1")
            assert done.outcome.result == {"text": "hi"} and done.outcome.body == b'{"text":"hi"}'
            assert 0 < int(redis_server.command("PTTL", "ppocr:t:t1")) <= 60_000  # task_ttl
            await node_a.create("t2")
            await node_a.finish("t2", Outcome(error=ErrorInfo("invalid_image", "not an image",
                                                               "a traceback")))
            failed = (await node_b.get("t2")).outcome.error
            assert (failed.code, failed.message, failed.details) == ("invalid_image",
                                                                     "not an image", None)
            await node_a.create("t3", Outcome(result={"text": "cached"}))  # finished at once
            assert (await node_b.get("t3")).outcome.result == {"text": "cached"}
            await node_a.discard("t3")
            assert await node_b.get("t3") is None and await node_b.get("unknown") is None

    run(scenario())


def test_a_pending_task_of_a_node_that_stops_renewing_expires_elsewhere(redis_server):
    async def scenario() -> None:
        async with two_links(redis_server) as links, \
                two_mirrors(links, lease=0.6) as (node_a, node_b):
            await node_a.create("t")
            # Renewed every lease/3 while node A lives: it outlives its lease several times.
            await _outlive(redis_server, "ppocr:t:t", periods=3, ttl_ms=600)
            assert (await node_b.get("t")).pending
            await node_a.stop_renewing()  # as a node killed -9 stops
            await until(lambda: redis_server.command("EXISTS", "ppocr:t:t").strip() == b"0",
                        "the dead node's pending task did not expire")
            assert await node_b.get("t") is None
            assert (await node_a.get("t")).pending  # its own node still has it

    run(scenario())


def test_tasks_written_while_redis_was_down_reach_it_when_it_returns(redis_server):
    async def scenario() -> None:
        async with two_links(redis_server) as links, two_mirrors(links) as (node_a, node_b):
            redis_server.stop()
            await node_a.create("pending")
            await node_a.create("done")
            await node_a.finish("done", Outcome(result={"text": "ok"}))
            assert (await node_a.get("done")).outcome.result == {"text": "ok"}  # its own node
            redis_server.start()
            await until(lambda: all(link.available for link in links), "no reconnection")
            await until(lambda: redis_server.command("EXISTS", "ppocr:t:pending",
                                                     "ppocr:t:done").strip() == b"2",
                        "the tasks were not written when Redis returned")
            assert (await node_b.get("pending")).pending
            assert (await node_b.get("done")).outcome.result == {"text": "ok"}

    run(scenario())


def test_a_node_asks_all_its_own_stores_before_redis(redis_server):
    async def scenario() -> None:
        link = fast_link(redis_server)
        await link.start()
        node_stores: list = []
        images = RedisTaskMirror(link, MemoryTaskStore(100, 60), 60, node_stores=node_stores)
        documents = RedisTaskMirror(link, MemoryTaskStore(100, 60), 60,
                                    node_stores=node_stores)
        await documents.create("t")
        await documents.finish("t", Outcome(result={"text": "done here"}))
        # Redis still says pending (a finish it missed): this node knows better.
        redis_server.command("SET", "ppocr:t:t", "Pnull")
        state = await images.get("t")
        assert state.outcome.result == {"text": "done here"}
        await images.close()
        await documents.close()
        await link.close()

    run(scenario())


class Nodes:
    """Two or three 'nodes' (a link, a shared cache and the claims each) on one Redis."""

    def __init__(self, server: RedisServer, count: int, claim_ttl: float = 1.0,
                 poll: float = 3600.0) -> None:
        self.links = [fast_link(server) for _ in range(count)]
        self.caches = [RedisResultCache(link, ttl=60, l1_size=0) for link in self.links]
        self.runs = [ClusterRuns(link, claim_ttl=claim_ttl, poll_interval=poll,
                                 follow_limit=UNIT_DEADLINE) for link in self.links]

    async def start(self) -> None:
        for link, runs in zip(self.links, self.runs, strict=True):
            await link.start()
            runs.start()
        await until(lambda: all(runs.subscribed for runs in self.runs), "not subscribed")

    async def close(self) -> None:
        for link, runs in zip(self.links, self.runs, strict=True):
            await runs.close()
            await link.close()


def test_one_node_leads_the_others_follow_and_get_its_result(redis_server):
    async def scenario() -> None:
        # poll=3600: only the completion message can end the wait within the deadline.
        nodes = Nodes(redis_server, 3, claim_ttl=0.6)
        await nodes.start()
        lead, follow_b, follow_c = nodes.runs
        claim = await lead.claim("k")
        assert claim.lead
        assert not (await follow_b.claim("k")).lead and not (await follow_c.claim("k")).lead
        run_done = asyncio.get_running_loop().create_future()
        holding = asyncio.create_task(lead.hold(claim, run_done))
        waits = [asyncio.create_task(runs.follow("k")) for runs in (follow_b, follow_c)]
        # The claim outlives several claim TTLs while its run lasts (hold extends it).
        await _outlive(redis_server, "ppocr:c:k", periods=3, ttl_ms=600)
        assert not any(wait.done() for wait in waits)
        await nodes.caches[0].put("k", b'{"text":"shared"}')
        run_done.set_result(None)
        await lead.finish(claim, b'{"text":"shared"}', None)
        results = await asyncio.gather(*waits)
        assert [result.body for result in results] == [b'{"text":"shared"}'] * 2
        assert redis_server.command("EXISTS", "ppocr:c:k").strip() == b"0"
        # A fresh request now finds it cached while claiming (one round trip, no run).
        assert (await follow_b.claim("k")).body == b'{"text":"shared"}'
        await holding
        await nodes.close()

    run(scenario())


async def _outlive(server: RedisServer, key: str, periods: int, ttl_ms: int) -> None:
    """Waits until `key` has existed for `periods` times its TTL, checking it never lapses."""
    loop = asyncio.get_running_loop()
    end = loop.time() + periods * ttl_ms / 1000
    while loop.time() < end:
        # redis-cli in a thread: a slow start of it must not hold up the loop that renews.
        exists = await asyncio.to_thread(server.command, "EXISTS", key)
        assert exists.strip() == b"1", f"{key} lapsed"
        await asyncio.sleep(0.05)


def test_errors_of_the_image_are_shared_errors_of_the_node_are_not(redis_server):
    async def scenario() -> None:
        nodes = Nodes(redis_server, 2)
        await nodes.start()
        lead, follower = nodes.runs
        claim = await lead.claim("bad")
        wait = asyncio.create_task(follower.follow("bad"))
        await until(lambda: "bad" in follower._wakers, "not following")
        await lead.finish(claim, None, ErrorInfo("invalid_image", "not an image"))
        followed = await wait
        assert followed.error == ErrorInfo("invalid_image", "not an image")
        # A fresh request for it later is not answered by the record: it tries again.
        assert (await follower.claim("bad")).lead

        claim = await lead.claim("full")
        wait = asyncio.create_task(follower.follow("full"))
        await until(lambda: "full" in follower._wakers, "not following")
        await lead.finish(claim, None, ErrorInfo("queue_full", "every worker is busy"))
        followed = await wait
        assert followed.error is None and followed.claim is not None and followed.claim.lead
        assert follower.taken_over == 1
        await nodes.close()

    run(scenario())


def test_a_dead_leads_claim_expires_and_exactly_one_follower_takes_over(redis_server):
    async def scenario() -> None:
        nodes = Nodes(redis_server, 3, claim_ttl=0.5, poll=0.05)
        await nodes.start()
        dead, follow_b, follow_c = nodes.runs
        assert (await dead.claim("k")).lead  # and never held nor finished: killed -9
        waits = {runs: asyncio.create_task(runs.follow("k")) for runs in (follow_b, follow_c)}
        done, _ = await asyncio.wait(waits.values(), return_when=asyncio.FIRST_COMPLETED)
        first = done.pop().result()
        assert first.claim is not None and first.claim.lead
        winner = next(runs for runs, wait in waits.items() if wait.done())
        other = next(runs for runs in waits if runs is not winner)
        # The new lead holds its claim while it runs, as a node does (its TTL is short).
        run_done = asyncio.get_running_loop().create_future()
        holding = asyncio.create_task(winner.hold(first.claim, run_done))
        assert not waits[other].done()  # it follows the new lead
        await nodes.caches[0].put("k", b'{"text":"late"}')
        run_done.set_result(None)
        await holding
        await winner.finish(first.claim, b'{"text":"late"}', None)
        assert (await waits[other]).body == b'{"text":"late"}'
        assert winner.taken_over == 1 and other.taken_over == 0
        await nodes.close()

    run(scenario())


def test_a_follower_runs_it_itself_when_redis_goes_away(redis_server):
    async def scenario() -> None:
        nodes = Nodes(redis_server, 2, claim_ttl=30, poll=0.05)
        await nodes.start()
        lead, follower = nodes.runs
        assert (await lead.claim("k")).lead
        wait = asyncio.create_task(follower.follow("k"))
        await until(lambda: "k" in follower._wakers, "not following")
        redis_server.stop()
        followed = await wait
        assert followed.body is None and followed.error is None and followed.claim is None
        assert await follower.claim("k") is None  # degraded: the node computes alone
        await nodes.close()

    run(scenario())


def test_without_caching_the_result_reaches_followers_through_the_outcome_record(
        redis_server):
    async def scenario() -> None:
        async with two_links(redis_server) as (link_a, link_b):
            lead = ClusterRuns(link_a, claim_ttl=5, poll_interval=0.05, caching=False)
            follower = ClusterRuns(link_b, claim_ttl=5, poll_interval=0.05, caching=False)
            claim = await lead.claim("k")
            wait = asyncio.create_task(follower.follow("k"))
            await until(lambda: "k" in follower._wakers, "not following")
            await lead.finish(claim, b'{"text":"uncached"}', None)
            assert (await wait).body == b'{"text":"uncached"}'

    run(scenario())


# ================================================================ the deployment guide

def _fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_deploy_guide_shows_the_configs_the_tests_run():
    text = DEPLOY.read_text(encoding="utf-8")
    site = nginx_site("80", ["10.0.0.11:8888", "10.0.0.12:8888", "10.0.0.13:8888"])
    assert site in _fenced_blocks(text, "nginx"), "docs/DEPLOY.md's nginx block is not " \
        "tests/redis_nginx.nginx_site(...) for its three nodes"
    redis = redis_conf(6379, bind="10.0.0.10", maxmemory="2gb", requirepass="change-me")
    assert redis in _fenced_blocks(text, "conf"), "docs/DEPLOY.md's redis.conf block is " \
        "not tests/redis_nginx.redis_conf(...)"
    configs = [json.loads(block) for block in _fenced_blocks(text, "json")]
    assert configs, "no node config.json in docs/DEPLOY.md"
    for document in configs:  # each loads (unknown keys and bad values would fail)
        assert load_config(None, document).service.redis_url.startswith("redis://")


def test_generated_nginx_conf_is_valid_for_nginx(tmp_path):
    nginx = Nginx(tmp_path / "nginx", [free_port(), free_port()])
    check = psutil.Popen([nginx.binary, "-t", "-p", str(nginx.workdir), "-c",
                          str(nginx.conf_path)], stdout=-1, stderr=-2)
    output, _ = check.communicate(timeout=30)
    assert check.returncode == 0, output.decode(errors="replace")
    assert nginx.site in nginx_conf(nginx.workdir, nginx.site).replace("\n    ", "\n")


# ================================================================ two nodes behind nginx

WORD = "paddleocr/doc/imgs_words/ch/word_1.jpg"  # quick runs
PAGE = "paddleocr/doc/imgs/00057937.jpg"  # 1000x750 page: a run of a second or more


class Cluster:
    """Redis, nodes a and b (one worker each), nginx in front."""

    def __init__(self, workdir: Path, eval_dir: Path) -> None:
        self.workdir = workdir
        self.eval_dir = eval_dir
        self.redis = RedisServer(workdir / "redis")
        self.nodes: dict[str, ServerProcess] = {}
        self.nginx: Nginx | None = None
        self._fresh = 0
        self._lock = threading.Lock()

    def start(self) -> Cluster:
        self.redis.start()
        for name in ("a", "b"):
            self.nodes[name] = ServerProcess(self.workdir, {
                "ocr.process.number": 1, "ocr.process.threads": 1, **PINNED_BACKEND,
                # A stopped worker (the kill test) must not be replaced meanwhile, nor count
                # as not ready (its node's /ready would answer 503).
                "ocr.process.ping_interval": 600, "ocr.process.ping_timeout": 600,
                "service.state_dir": str(self.workdir / f"state-{name}"),
                "service.redis_url": self.redis.url, "service.redis_claim_ttl": 5.0,
                "service.redis_timeout": 2.0,  # (see fast_link)
                "service.redis_poll": 0.2, "service.redis_task_lease": 10.0,
                "web_server.request_timeout": DEADLINE}, name=name)
        for node in self.nodes.values():
            node.start(ready_timeout=None)
        for node in self.nodes.values():
            node.wait_ready(DEADLINE)
        self.nginx = Nginx(self.workdir / "nginx",
                           [node.port for node in self.nodes.values()]).start()
        return self

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                workers = node.workers()
                node.kill()
                for worker in workers:
                    with _gone():
                        worker.kill()
        self.redis.kill()

    def image(self, name: str) -> bytes:
        return (self.eval_dir / name).read_bytes()

    def fresh_options(self) -> dict:
        """Options no earlier request used: a key no cache holds (drop_score is in it)."""
        with self._lock:
            self._fresh += 1
            return {"drop_score": round(0.4 + self._fresh / 10_000, 4)}

    def post(self, port: int, image: bytes | list[bytes], **fields) -> tuple[int, dict]:
        img_src = [_b64(one) for one in image] if isinstance(image, list) else _b64(image)
        body = json.dumps({"file_type": "base64", "img_src": img_src, **fields}).encode()
        status, _, answer = request(port, "POST", "/ocr_service", body,
                                    {"Content-Type": "application/json"}, timeout=DEADLINE)
        return status, json.loads(answer)

    def ready(self, name: str) -> dict:
        status, body = self.nodes[name].get_json("/ready", timeout=30)
        assert status == 200, body  # degraded or not, a node with workers is ready
        return body

    def engine_runs(self) -> int:
        return sum(self.ready(name)["engine_runs"] for name in self.nodes)


class _gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, *rest) -> bool:
        return kind is not None and issubclass(kind, psutil.NoSuchProcess)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, eval_dir):
    nodes = Cluster(tmp_path_factory.mktemp("cluster"), eval_dir)
    try:
        yield nodes.start()
    finally:
        nodes.stop()


def test_a_result_read_through_one_node_is_a_hit_on_the_other(cluster):
    image, options = cluster.image(WORD), cluster.fresh_options()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    runs_b = cluster.ready("b")["engine_runs"]
    status, first = cluster.post(a.port, image, **options)
    assert status == 200 and first["cached"] is False, first
    status, second = cluster.post(b.port, image, **options)
    assert status == 200 and second["cached"] is True, second
    assert second["lines"] == first["lines"] and second["text"] == first["text"]
    after = cluster.ready("b")
    assert after["engine_runs"] == runs_b and after["cache_shared_hits"] >= 1
    assert after["redis"] == "ok"
    _check_documented(b, after)


def test_a_task_accepted_by_one_node_is_read_on_the_other(cluster):
    image, options = cluster.image(WORD), cluster.fresh_options()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    status, accepted = cluster.post(a.port, image, block_flag=False, **options)
    assert status == 202, accepted
    answer = _poll(b, accepted["id"])
    assert answer[0] == 200 and answer[1]["status"] == "done", answer
    status, direct = cluster.post(a.port, image, **options)
    assert answer[1]["lines"] == direct["lines"]
    # A batch (a lasting task: spooled in node a's SQLite, mirrored to Redis).
    status, accepted = cluster.post(a.port, [cluster.image(WORD), cluster.image(PAGE)],
                                    block_flag=False, **cluster.fresh_options())
    assert status == 202, accepted
    status, batch = _poll(b, accepted["id"])
    assert status == 200 and [item["status"] for item in batch["results"]] == ["done"] * 2
    assert b.get_json("/ocr_service/" + "0" * 64)[0] == 404


def _poll(node: ServerProcess, task_id: str) -> tuple[int, dict]:
    answer: list = []

    def finished() -> bool:
        answer[:] = node.get_json(f"/ocr_service/{task_id}", timeout=30)
        assert answer[0] in (200, 202), answer
        return answer[0] != 202

    wait_for(finished, DEADLINE, f"task {task_id} stayed pending", interval=0.1)
    return answer[0], answer[1]


def test_identical_requests_through_nginx_cost_one_engine_run(cluster):
    image, options = cluster.image(PAGE), cluster.fresh_options()
    before = {name: cluster.ready(name) for name in cluster.nodes}
    with ThreadPoolExecutor(20) as threads:
        answers = list(threads.map(lambda _: cluster.post(cluster.nginx.port, image, **options),
                                   range(20)))
    assert [status for status, _ in answers] == [200] * 20, answers
    assert len({json.dumps(body["lines"]) for _, body in answers}) == 1
    after = {name: cluster.ready(name) for name in cluster.nodes}
    runs = sum(after[name]["engine_runs"] - before[name]["engine_runs"] for name in after)
    assert runs == 1
    for name in after:  # nginx sent requests to both nodes
        asked = (after[name]["cache_hits"] + after[name]["cache_misses"]
                 - before[name]["cache_hits"] - before[name]["cache_misses"])
        assert asked > 0, (name, before[name], after[name])


def test_redis_stopped_mid_traffic_costs_no_5xx_and_sharing_resumes(cluster):
    image = cluster.image(WORD)
    statuses: list[int] = []
    stop = threading.Event()
    marks = {name: node.log_path.stat().st_size for name, node in cluster.nodes.items()}

    def traffic() -> None:
        while not stop.is_set():
            options = cluster.fresh_options() if len(statuses) % 2 else {}
            statuses.append(cluster.post(cluster.nginx.port, image, **options)[0])

    with ThreadPoolExecutor(2) as threads:
        senders = [threads.submit(traffic) for _ in range(2)]
        wait_for(lambda: len(statuses) >= 4, DEADLINE, "no traffic")
        cluster.redis.stop()
        wait_for(lambda: all(cluster.ready(name)["redis"] == "degraded"
                             for name in cluster.nodes), DEADLINE, "/ready never degraded")
        assert all(_metric(node, "ppocr_redis_up") == 0 for node in cluster.nodes.values())
        _check_documented(cluster.nodes["a"], cluster.ready("a"))
        served = len(statuses)
        wait_for(lambda: len(statuses) >= served + 4, DEADLINE, "no traffic while degraded")
        # A task accepted while degraded lives in that node's memory, readable there.
        a = cluster.nodes["a"]
        status, accepted = cluster.post(a.port, image, block_flag=False,
                                        **cluster.fresh_options())
        assert status == 202, accepted
        assert _poll(a, accepted["id"])[0] == 200
        cluster.redis.start()
        wait_for(lambda: all(cluster.ready(name)["redis"] == "ok" for name in cluster.nodes),
                 DEADLINE, "the nodes did not reconnect")
        assert all(_metric(node, "ppocr_redis_up") == 1 for node in cluster.nodes.values())
        served = len(statuses)
        wait_for(lambda: len(statuses) >= served + 4, DEADLINE, "no traffic after the return")
        stop.set()
        for sender in senders:
            sender.result()
    assert statuses and all(status == 200 for status in statuses), statuses
    for name, node in cluster.nodes.items():
        log = node.log_path.read_text(errors="replace")[marks[name]:]
        lines = [line for line in log.splitlines() if " ppocr.redis: " in line]
        assert sum("is unavailable" in line for line in lines) == 1, lines
        assert sum("answers again" in line for line in lines) == 1, lines
    # Sharing resumed: a fresh result read on a is a hit on b.
    options = cluster.fresh_options()
    assert cluster.post(cluster.nodes["a"].port, image, **options)[1]["cached"] is False
    assert cluster.post(cluster.nodes["b"].port, image, **options)[1]["cached"] is True


def test_a_node_killed_while_holding_a_claim_has_its_run_taken_over(cluster):
    """Last: it kills node a. Its worker is stopped (SIGSTOP) first, so its run cannot end
    before the kill, whatever the machine's speed."""
    image, options = cluster.image(PAGE), cluster.fresh_options()
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    before_a, before_b = cluster.ready("a"), cluster.ready("b")
    workers = a.workers()
    for worker in workers:
        worker.suspend()
    lost = threading.Thread(target=lambda: _swallow(lambda: cluster.post(a.port, image,
                                                                         **options)))
    lost.start()  # its client loses the request with node a: nobody can answer it
    wait_for(lambda: cluster.ready("a")["cluster_led"] == before_a["cluster_led"] + 1
             and cluster.ready("a")["inflight"] == 1, DEADLINE, "node a did not claim the run")
    with ThreadPoolExecutor(3) as threads:
        waiting = [threads.submit(cluster.post, b.port, image, **options) for _ in range(3)]
        wait_for(lambda: cluster.ready("b")["cluster_followed"]
                 == before_b["cluster_followed"] + 1, DEADLINE, "node b is not following")
        assert not any(wait.done() for wait in waiting)
        a.kill()
        for worker in workers:
            with _gone():
                worker.kill()
        answers = [wait.result(timeout=DEADLINE) for wait in waiting]
    lost.join(DEADLINE)
    assert [status for status, _ in answers] == [200] * 3, answers
    assert all(body["lines"] for _, body in answers)
    assert len({json.dumps(body["lines"]) for _, body in answers}) == 1
    after_b = cluster.ready("b")
    assert after_b["engine_runs"] == before_b["engine_runs"] + 1
    assert after_b["cluster_taken_over"] == before_b["cluster_taken_over"] + 1


def _check_documented(node: ServerProcess, ready: dict) -> None:
    """/ready's Redis fields are the ones /openapi.json declares, with declared values."""
    status, document = node.get_json("/openapi.json", timeout=30)
    assert status == 200
    properties = document["components"]["schemas"]["Ready"]["properties"]
    assert ready["redis"] in properties["redis"]["enum"]
    assert isinstance(ready.get("redis_degraded", ""), str) and "redis_degraded" in properties


def _metric(node: ServerProcess, name: str) -> float:
    status, _, body = request(node.port, "GET", "/metrics", timeout=30)
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _swallow(call: Callable[[], object]) -> None:
    try:
        call()
    except OSError:
        pass  # the connection died with the node
