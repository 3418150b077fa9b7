"""Soak: 5,000 mixed requests at 32 clients against a real server, one worker killed every 500.

Mix (seeded): cache hits, uncached reads, non-blocking submits polled to their end, and invalid
requests (garbage bytes, bad options, paths outside the roots, bad base64). Every 500 finished
requests one worker is SIGKILLed. Checked at the end:
- no unexpected 5xx (valid requests must answer 200, invalid ones their 4xx);
- no hung request (every request ends within its client timeout);
- every accepted non-blocking task is accounted for (polled to done or failed);
- RSS of the server process and of the workers after warm-up versus at the end. The server's
  bounded stores are set small here (200 cached results, 200 finished tasks) so they are full
  by the end of the warm-up (the first 20% of requests): after that, growth would be a leak.

    .venv/bin/python bench/soak.py [--requests 5000] [--clients 32] [--kill-every 500]

Then bursts (3 by default), one after the other, of 10x what the server holds (workers + queue)
at once: the excess must get 503 with Retry-After, the rest 200, and the server's RSS after each
burst shows whether memory is bounded (levels off) or follows the load (grows burst by burst).

Then the attacks phase (bench/soak_attacks.py; --no-attacks skips it, --attacks-only runs it
alone): on a server of its own, one attack class at a time while normal clients keep sending
requests, each bounded in count and time; a per-attack table.

Writes bench/results/soak-<timestamp>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import resource
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root first, for server.testing

import soak_attacks  # noqa: E402

from server.testing import RssSampler, ServerProcess, multipart  # noqa: E402

SAMPLES = ROOT / "docs" / "samples"
RESULTS = ROOT / "bench" / "results"
KINDS = ("cached", "uncached", "nonblocking", "invalid")
WEIGHTS = (45, 12, 8, 35)


def plan(index: int, rng: random.Random, image: bytes) -> tuple[str, bytes, str, set[int]]:
    """(kind, body, content type, acceptable statuses) of request number `index`."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    if kind == "cached":
        body, ctype = multipart({"file_type": "file"}, image)
        return kind, body, ctype, {200}
    if kind in ("uncached", "nonblocking"):
        fields = {"file_type": "file", "drop_score": f"{0.5 + index * 1e-9:.12f}"}
        if kind == "nonblocking":
            fields["block_flag"] = "false"
        body, ctype = multipart(fields, image)
        return kind, body, ctype, {202} if kind == "nonblocking" else {200}
    variant = rng.randrange(5)
    if variant == 0:
        body, ctype = multipart({"file_type": "file"}, os.urandom(rng.randrange(1, 5000)))
        return "invalid", body, ctype, {415}
    if variant == 1:
        body, ctype = multipart({"file_type": "file", "det_db_thresh": "-3"}, image)
        return "invalid", body, ctype, {400}
    if variant == 2:
        body = json.dumps({"file_type": "filename", "filename": "../../../etc/passwd"}).encode()
        return "invalid", body, "application/json", {403}
    if variant == 3:
        body = json.dumps({"file_type": "base64", "img_src": "not base64 !!"}).encode()
        return "invalid", body, "application/json", {400}
    return "invalid", b'{"file_type": ', "application/json", {400}


class Soak:
    def __init__(self, server: ServerProcess, args) -> None:
        self.port, self.server, self.args = server.port, server, args
        self.image = (SAMPLES / "receipt.jpg").read_bytes()
        self.lock = threading.Lock()
        self.next_index = 0
        self.done = 0
        self.outcomes: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []
        self.tasks: dict[str, str] = {}
        self.latencies: list[float] = []
        self.kills = 0

    def claim(self) -> int | None:
        with self.lock:
            if self.next_index >= self.args.requests:
                return None
            self.next_index += 1
            return self.next_index - 1

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.args.timeout)
        while (index := self.claim()) is not None:
            kind, body, ctype, ok = plan(index, rng, self.image)
            started = time.perf_counter()
            try:
                status, payload = self.request(conn, "POST", "/ocr_service", body, ctype)
                if kind == "nonblocking" and status == 202:
                    status = self.poll(conn, json.loads(payload))
                    ok = {200}
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                  timeout=self.args.timeout)
                status = f"{type(exc).__name__}"
            elapsed = time.perf_counter() - started
            with self.lock:
                self.outcomes[f"{kind}:{status}"] += 1
                self.latencies.append(elapsed)
                if status not in ok:
                    self.unexpected.append(f"#{index} {kind}: got {status}, expected {ok}")
                self.done += 1
                kill = self.done % self.args.kill_every == 0
                if self.done % 500 == 0:
                    print(f"{self.done} requests, {len(self.unexpected)} unexpected",
                          file=sys.stderr, flush=True)
            if kill:
                self.kill_one_worker()
        conn.close()

    def request(self, conn, method: str, path: str, body=None, ctype=None) -> tuple[int, bytes]:
        headers = {"Content-Type": ctype} if ctype else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()

    def poll(self, conn, submitted: dict) -> int:
        deadline = time.monotonic() + self.args.timeout
        with self.lock:
            self.tasks[submitted["id"]] = "pending"
        while time.monotonic() < deadline:
            status, payload = self.request(conn, "GET", submitted["result_url"])
            if status != 202:
                with self.lock:
                    self.tasks[submitted["id"]] = "done" if status == 200 else f"failed {status}"
                return status
            time.sleep(0.05)  # a client's poll interval
        return "hung"

    def kill_one_worker(self) -> None:
        workers = self.server.workers()
        if workers:
            victim = random.choice(workers)
            try:
                victim.send_signal(signal.SIGKILL)
                with self.lock:
                    self.kills += 1
            except psutil.NoSuchProcess:
                pass


def rss_mb(sample: dict) -> dict:
    """An RssSampler sample as the soak records it: requests done, server and workers in MiB."""
    roles = sample["rss"].values()
    return {"done": sample["done"],
            "parent_mb": next((rss for role, rss in roles if role == "server"), 0) / 2**20,
            "workers_mb": [rss / 2**20 for role, rss in roles if role == "worker"]}


def overload_burst(server: ServerProcess, args) -> dict:
    """10x what the server can hold (workers + queue) at once, all uncached: the excess must be
    refused with 503 + Retry-After, everything accepted must be answered, and the server's
    memory must not follow the load."""
    capacity = args.workers + args.queue_size
    total = 10 * capacity
    image = (SAMPLES / "receipt.jpg").read_bytes()
    parent = psutil.Process(server.pid)
    rss_before = parent.memory_info().rss
    statuses: collections.Counter = collections.Counter()
    retry_after_missing = 0
    lock = threading.Lock()
    barrier = threading.Barrier(total)

    def one(index: int) -> None:
        nonlocal retry_after_missing
        body, ctype = multipart({"file_type": "file",
                                 "drop_score": f"{0.6 + index * 1e-9:.12f}"}, image)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=args.timeout)
        barrier.wait()
        try:
            conn.request("POST", "/ocr_service", body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
            response.read()
            status = response.status
            missing = status == 503 and not response.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as exc:
            status, missing = type(exc).__name__, False
        finally:
            conn.close()
        with lock:
            statuses[status] += 1
            retry_after_missing += missing

    threads = [threading.Thread(target=one, args=(i,)) for i in range(total)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"requests": total, "capacity": capacity, "statuses": dict(statuses),
            "retry_after_missing": retry_after_missing,
            "wall_s": round(time.monotonic() - started, 1),
            "parent_rss_before_mb": round(rss_before / 2**20, 1),
            "parent_rss_after_mb": round(parent.memory_info().rss / 2**20, 1)}


def run_soak(args, workdir: Path) -> dict:
    """The mixed requests with workers killed on the way, then the overload bursts."""
    server = ServerProcess(workdir, {
        "ocr.process.number": args.workers, "ocr.process.threads": 1,
        "ocr.process.queue_size": args.queue_size, "service.filename_roots": [str(SAMPLES)],
        "service.img_number": args.cache_size, "service.max_tasks": args.cache_size},
        name="soak")
    with server.start():
        soak = Soak(server, args)
        sampler = RssSampler(server.pid, 1.0, lambda: {"done": soak.done}).start()
        started = time.monotonic()
        clients = [threading.Thread(target=soak.client, args=(seed,))
                   for seed in range(args.clients)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        wall = time.monotonic() - started
        sampler.stop()  # the soak's RSS series ends here; the bursts report their own
        overload = [overload_burst(server, args) for _ in range(args.bursts)]
        exit_code = server.stop()
    rss = [rss_mb(sample) for sample in sampler.samples]
    warm = [s for s in rss if s["done"] >= args.requests * 0.2]
    first, last = (warm[0], warm[-1]) if warm else ({}, {})
    series, mark = [], 0
    for sample in rss:  # one sample per 250 requests, for the record
        if sample["done"] >= mark:
            series.append({"done": sample["done"], "parent_mb": round(sample["parent_mb"], 1),
                           "workers_mb": [round(w, 1) for w in sample["workers_mb"]]})
            mark = sample["done"] + 250
    return {
        "requests": args.requests, "clients": args.clients, "workers": args.workers,
        "kill_every": args.kill_every, "workers_killed": soak.kills, "wall_s": round(wall, 1),
        "outcomes": dict(sorted(soak.outcomes.items())), "unexpected": soak.unexpected[:50],
        "unexpected_count": len(soak.unexpected),
        "hung": sum(v for k, v in soak.outcomes.items() if "hung" in k or "timeout" in k),
        "tasks": dict(collections.Counter(soak.tasks.values())),
        "max_latency_s": round(max(soak.latencies), 2), "server_exit_code": exit_code,
        "cache_size": args.cache_size, "rss_after_warmup": first, "rss_end": last,
        "rss_series": series,
        "parent_rss_growth": (round(last["parent_mb"] / first["parent_mb"] - 1, 4)
                              if warm else None),
        "max_worker_mb": round(max((max(s["workers_mb"], default=0) for s in rss),
                                   default=0), 1),
        "load_avg_end": os.getloadavg(),
        "overload": overload,
    }


def soak_ok(result: dict) -> bool:
    overload_ok = all(set(burst["statuses"]) <= {200, 503} and not burst["retry_after_missing"]
                      for burst in result["overload"])
    return not result["unexpected_count"] and result["server_exit_code"] == 0 and overload_ok


def raise_fd_limit(needed: int) -> int:
    """Raises this process's soft RLIMIT_NOFILE to `needed` if it is lower (up to the hard
    limit; servers started afterwards inherit it); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return needed
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--kill-every", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--cache-size", type=int, default=200,
                        help="service.img_number and service.max_tasks: small, so they fill "
                             "during the warm-up")
    parser.add_argument("--bursts", type=int, default=3,
                        help="10x overload bursts after the soak (0: none)")
    parser.add_argument("--attacks", action=argparse.BooleanOptionalAction, default=True,
                        help="the attacks phase after the soak (default: on)")
    parser.add_argument("--attacks-only", action="store_true",
                        help="only the attacks phase: no mixed requests, no bursts")
    parser.add_argument("--only", metavar="CLASSES",
                        help="attack classes to run, comma-separated (default: all of "
                             f"{', '.join(soak_attacks.ATTACKS)})")
    soak_attacks.add_arguments(parser)
    args = parser.parse_args(argv)
    args.attacks = args.attacks or args.attacks_only
    args.attack_list = soak_attacks.parse_classes(parser, args.only)
    if args.attacks:
        # Each slow-client socket costs this process one descriptor and the server another.
        args.fd_limit = raise_fd_limit(args.slow_sockets + 1024)
    result: dict = {}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        if not args.attacks_only:
            result = run_soak(args, Path(tmp))
            ok = soak_ok(result)
        if args.attacks:
            result["attacks"] = soak_attacks.run_attacks(args, Path(tmp))
            ok = ok and all(row["met"] for row in result["attacks"]["classes"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    hidden = ("rss_after_warmup", "rss_end", "rss_series", "attacks")
    if not args.attacks_only:
        print(json.dumps({k: v for k, v in result.items() if k not in hidden}, indent=1))
    if args.attacks:
        print(result["attacks"]["table"])
    print(f"results: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
