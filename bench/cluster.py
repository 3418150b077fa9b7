"""Scale-out on Redis: what a shared cache hit costs, and what cross-node sharing saves.

1. Cache hits, side by side (one client, sequential requests on one keep-alive connection,
   the same upload every time, its result cached), in alternating rounds so a change in the
   machine's load hits every variant alike:
   - memory: a node without Redis (today's in-process TTLCache);
   - redis, L1 off (service.redis_l1_size 0): every hit is a GET round trip to Redis;
   - redis, L1 on (the default 100): a hot image costs no round trip.
   Per variant: latency p50 / p90, the node process's CPU per hit and redis-server's.
2. Duplicate suppression: N identical concurrent requests through nginx (round robin) to two
   nodes, a fresh key each trial (drop_score varies), with and without a shared Redis; the
   engine runs they cost across both nodes (each node's /ready engine_runs) and the wall time
   until the last answer. Trials alternate (shared, alone, shared, ...).

Every node has one worker with one thread; Redis and nginx are the test helpers' own
(tests/redis_nginx.py: the configs docs/DEPLOY.md shows), on free loopback ports.

    .venv/bin/python bench/cluster.py                       # 5 rounds of 200 hits, 3 trials of 20
    .venv/bin/python bench/cluster.py --rounds 7 --hits 300 --trials 4 --identical 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.testing import LOOPBACK, ServerProcess, cpu_seconds, multipart  # noqa: E402
from tests.redis_nginx import Nginx, RedisServer  # noqa: E402

IMAGE = ROOT / "docs" / "samples" / "english.jpg"
PAGE = ROOT / "docs" / "samples" / "receipt.jpg"
DEADLINE = 300.0


def node(workdir: Path, name: str, redis_url: str | None, **extra) -> ServerProcess:
    overrides = {"ocr.process.number": 1, "ocr.process.threads": 1,
                 "service.state_dir": str(workdir / f"state-{name}"),
                 "web_server.request_timeout": DEADLINE, **extra}
    if redis_url is not None:
        overrides["service.redis_url"] = redis_url
    return ServerProcess(workdir, overrides, name=name)


def start_all(servers: list[ServerProcess]) -> None:
    for server in servers:
        server.start(ready_timeout=None)
    for server in servers:
        server.wait_ready(DEADLINE)


def post(connection: http.client.HTTPConnection, body: bytes, content_type: str) -> dict:
    connection.request("POST", "/ocr_service", body, {"Content-Type": content_type})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {data[:300]!r}")
    return json.loads(data)


# ---------------------------------------------------------------- 1. cache hits

def redis_cpu_seconds(redis: RedisServer) -> float:
    """redis-server's own CPU (INFO cpu: microseconds, finer than /proc's 10 ms ticks)."""
    info = dict(line.split(":", 1) for line in redis.command("INFO", "cpu").decode().split()
                if ":" in line)
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def hit_round(server: ServerProcess, redis: RedisServer | None, hits: int) -> dict:
    body, content_type = multipart({"file_type": "file"}, IMAGE.read_bytes())
    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=60)
    try:
        post(connection, body, content_type)  # connection open, cache warm
        process = psutil.Process(server.pid)
        cpu0 = cpu_seconds([process])
        redis0 = redis_cpu_seconds(redis) if redis is not None else 0.0
        latencies = []
        for _ in range(hits):
            started = time.perf_counter()
            answer = post(connection, body, content_type)
            latencies.append((time.perf_counter() - started) * 1000)
            if answer.get("cached") is not True:
                raise RuntimeError(f"{server.name}: not a cache hit")
        cpu = cpu_seconds([process]) - cpu0
        redis_cpu = (redis_cpu_seconds(redis) - redis0) if redis is not None else 0.0
    finally:
        connection.close()
    latencies.sort()
    return {"p50_ms": statistics.median(latencies),
            "p90_ms": latencies[int(0.9 * (len(latencies) - 1))],
            "cpu_ms_per_hit": 1000 * cpu / hits, "redis_cpu_ms_per_hit": 1000 * redis_cpu / hits}


def cache_hits(workdir: Path, redis: RedisServer, rounds: int, hits: int) -> dict:
    variants = {"memory": node(workdir, "memory", None),
                "redis, L1 off": node(workdir, "redis-no-l1", redis.url,
                                      **{"service.redis_l1_size": 0}),
                "redis, L1 on": node(workdir, "redis-l1", redis.url)}
    start_all(list(variants.values()))
    results: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        names = list(variants)
        for number in range(rounds):
            order = names[number % len(names):] + names[:number % len(names)]
            for name in order:
                uses_redis = name != "memory"
                results[name].append(hit_round(variants[name], redis if uses_redis else None,
                                               hits))
            print(f"round {number + 1}/{rounds}: " + ", ".join(
                f"{name} {results[name][-1]['p50_ms']:.2f} ms" for name in names), flush=True)
    finally:
        for server in variants.values():
            server.stop()
    summary = {}
    for name, rows in results.items():
        summary[name] = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    return {"rounds": results, "median": summary}


# ---------------------------------------------------------------- 2. duplicate suppression

def identical_trial(nginx: Nginx, nodes: list[ServerProcess], count: int, trial: int) -> dict:
    image = PAGE.read_bytes()
    fields = {"file_type": "file", "drop_score": f"{0.3 + trial / 1000:.3f}"}
    body, content_type = multipart(fields, image)
    before = sum(server.get_json("/ready", timeout=30)[1]["engine_runs"] for server in nodes)

    def one(_: int) -> bool:
        connection = http.client.HTTPConnection(LOOPBACK, nginx.port, timeout=DEADLINE)
        try:
            return post(connection, body, content_type)["cached"]
        finally:
            connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as threads:
        cached = list(threads.map(one, range(count)))
    wall = time.perf_counter() - started
    after = sum(server.get_json("/ready", timeout=30)[1]["engine_runs"] for server in nodes)
    return {"engine_runs": after - before, "wall_s": wall, "cached": sum(cached)}


def duplicates(workdir: Path, redis: RedisServer, trials: int, count: int) -> dict:
    shared = [node(workdir, f"shared-{n}", redis.url) for n in "ab"]
    alone = [node(workdir, f"alone-{n}", None) for n in "ab"]
    start_all(shared + alone)
    setups = {"shared Redis": (shared, Nginx(workdir / "nginx-shared",
                                             [s.port for s in shared]).start()),
              "no Redis": (alone, Nginx(workdir / "nginx-alone", [s.port for s in alone]).start())}
    results: dict[str, list[dict]] = {name: [] for name in setups}
    trial = 0
    try:
        for number in range(trials):
            for name in (list(setups) if number % 2 == 0 else list(setups)[::-1]):
                trial += 1
                nodes, nginx = setups[name]
                results[name].append(identical_trial(nginx, nodes, count, trial))
                row = results[name][-1]
                print(f"trial {number + 1}/{trials} {name}: {row['engine_runs']} engine runs, "
                      f"{row['wall_s']:.2f} s", flush=True)
    finally:
        for nodes, nginx in setups.values():
            nginx.stop()
            for server in nodes:
                server.stop()
    summary = {name: {"engine_runs": [row["engine_runs"] for row in rows],
                      "wall_s_median": statistics.median(row["wall_s"] for row in rows)}
               for name, rows in results.items()}
    return {"trials": results, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hits", type=int, default=200)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--identical", type=int, default=20)
    parser.add_argument("--skip-hits", action="store_true")
    parser.add_argument("--skip-duplicates", action="store_true")
    args = parser.parse_args()
    load = psutil.getloadavg()
    report: dict = {"machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(),
                                "load_before": load}, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="ppocr-cluster-bench-") as folder:
        workdir = Path(folder)
        with RedisServer(workdir / "redis") as redis:
            if not args.skip_hits:
                report["cache_hits"] = cache_hits(workdir, redis, args.rounds, args.hits)
            if not args.skip_duplicates:
                report["duplicates"] = duplicates(workdir, redis, args.trials, args.identical)
    print()
    if "cache_hits" in report:
        medians = report["cache_hits"]["median"]
        base = medians["memory"]
        print(f"cache hits ({args.rounds} alternating rounds of {args.hits}; medians of rounds)")
        print("| variant | p50 ms | p90 ms | node CPU ms/hit | redis CPU ms/hit | p50 vs memory "
              "| node CPU vs memory |")
        print("|---|---|---|---|---|---|---|")
        for name, row in medians.items():
            print(f"| {name} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
                  f"{row['cpu_ms_per_hit']:.3f} | {row['redis_cpu_ms_per_hit']:.3f} | "
                  f"{row['p50_ms'] / base['p50_ms']:.2f}x | "
                  f"{row['cpu_ms_per_hit'] / base['cpu_ms_per_hit']:.2f}x |")
    if "duplicates" in report:
        summary = report["duplicates"]["summary"]
        print(f"\n{args.identical} identical concurrent requests through nginx to 2 nodes "
              f"({args.trials} alternating trials each)")
        print("| setup | engine runs per trial | wall s (median) |")
        print("|---|---|---|")
        for name, row in summary.items():
            print(f"| {name} | {', '.join(map(str, row['engine_runs']))} | "
                  f"{row['wall_s_median']:.2f} |")
    report["machine"]["load_after"] = psutil.getloadavg()
    out = ROOT / "bench" / "results" / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nload average before {load[0]:.2f}, after {report['machine']['load_after'][0]:.2f};"
          f" written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
