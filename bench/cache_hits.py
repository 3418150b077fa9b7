"""Cache hits against the framework's own ceiling.

Two servers on this machine answer the same upload with the same bytes:

- ours: `python setup.py` (one worker, idle after the first request), its result cache warm;
- ceiling: the smallest Tornado app that does what any cache must (bench/minimal_tornado.py):
  parse the multipart body, hash the upload, look the hash up in a dict, write the stored
  bytes; nothing else.

Both are driven by the same client (multirequest.py --scenario cached --mode upload, one
connection per client thread) at 1 and 50 clients, in alternating rounds (ours, ceiling, ours,
...), so a change in the machine's load hits both alike. Per round: hits/s and the server
process's CPU seconds per hit. Ours runs once per event loop (`web_server.event_loop` asyncio
and uvloop) when uvloop is installed. The client shares the machine's cores with the server,
so absolute rates are the client's as much as the server's: the ratio is the figure.

    .venv/bin/python bench/cache_hits.py                    # 3 rounds of 8 s per setting
    .venv/bin/python bench/cache_hits.py --rounds 5 --duration 10 --clients 1,50
    .venv/bin/python bench/cache_hits.py --profile          # cProfile of our front end
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.testing import LOOPBACK, ServerProcess, cpu_seconds, free_port, multipart  # noqa: E402

IMAGE = ROOT / "docs" / "samples" / "english.jpg"


def our_body(server: ServerProcess) -> bytes:
    """The bytes our server answers the image with (what the ceiling server will send)."""
    import http.client

    body, content_type = multipart({"file_type": "file"}, IMAGE.read_bytes())
    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=120)
    connection.request("POST", "/ocr_service", body, {"Content-Type": content_type})
    response = connection.getresponse()
    data = response.read()
    assert response.status == 200, data[:300]
    return data


def start_ceiling(body_file: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "minimal_tornado.py"),
                             "--port", str(port), "--image", str(IMAGE), "--body", str(body_file)],
                            cwd=ROOT)
    deadline = time.monotonic() + 30
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the ceiling server did not start")


def drive(port: int, clients: int, duration: float) -> dict:
    command = [sys.executable, str(ROOT / "multirequest.py"), "--url",
               f"http://{LOOPBACK}:{port}/ocr_service", "--images", str(IMAGE), "--scenario",
               "cached", "--mode", "upload", "--concurrency", str(clients), "--duration",
               str(duration), "--json", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"multirequest failed: {done.stderr[-500:]}")
    return json.loads(done.stdout)


def measure(port: int, pid: int, clients: int, duration: float) -> dict:
    process = psutil.Process(pid)
    cpu0 = cpu_seconds([process])
    summary = drive(port, clients, duration)
    cpu = cpu_seconds([process]) - cpu0
    ok = summary["ok"]
    return {"hits_per_s": ok / summary["wall_s"], "cpu_ms_per_hit": 1000 * cpu / max(ok, 1),
            "p50_ms": summary["latency_ms"]["p50"], "errors": summary["errors"],
            "cached": summary["cached"], "ok": ok}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(f for f in wanted if f in flags)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--clients", default="1,50")
    parser.add_argument("--profile", action="store_true",
                        help="run our front end under cProfile for one 50-client round and "
                             "print its top functions")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    try:
        import uvloop  # noqa: F401
        loops = ["asyncio", "uvloop"]
    except ImportError:
        loops = ["asyncio"]
    work = Path(tempfile.mkdtemp(prefix="bench-cache-hits-"))
    servers = {}
    for loop in loops:
        servers[f"ours-{loop}"] = ServerProcess(
            work, {"ocr.process.number": 1, "ocr.process.threads": 1,
                   "web_server.event_loop": loop, "web_server.log_format": "text",
                   "service.img_number": 1000},
            name=f"ours-{loop}")
    if args.profile:  # the front end under cProfile, written when it exits (SIGTERM)
        profiled = servers[f"ours-{loops[-1]}"]
        profiled.argv = [sys.executable, "-m", "cProfile", "-o", str(work / "profile.out"),
                         *profiled.argv[1:]]
    for server in servers.values():
        server.start()
    body_file = work / "body.json"
    body_file.write_bytes(our_body(next(iter(servers.values()))))
    ceiling_port = free_port()
    ceiling = start_ceiling(body_file, ceiling_port)
    targets = {name: (server.port, server.pid) for name, server in servers.items()}
    targets["ceiling"] = (ceiling_port, ceiling.pid)
    results: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in clients}
                                                 for name in targets}
    try:
        for count in clients:
            for _ in range(args.rounds):
                for name, (port, pid) in targets.items():
                    results[name][count].append(measure(port, pid, count, args.duration))
    finally:
        ceiling.terminate()
        for server in servers.values():
            server.stop()
    print(f"\nCPU: {cpu_flags()}; Python {platform.python_version()}; "
          f"{args.rounds} rounds x {args.duration:g} s per setting, alternating\n")
    print("| server | clients | hits/s (median) | vs ceiling | CPU ms per hit | p50 ms |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for count in clients:
        ceiling_rate = statistics.median(r["hits_per_s"] for r in results["ceiling"][count])
        for name in targets:
            runs = results[name][count]
            rate = statistics.median(r["hits_per_s"] for r in runs)
            cpu = statistics.median(r["cpu_ms_per_hit"] for r in runs)
            p50 = statistics.median(r["p50_ms"] for r in runs)
            errors = sum(sum(r["errors"].values()) for r in runs)
            summary[f"{name}@{count}"] = {"hits_per_s": rate, "ratio": rate / ceiling_rate,
                                          "cpu_ms_per_hit": cpu, "p50_ms": p50,
                                          "errors": errors}
            print(f"| {name} | {count} | {rate:,.0f} | {rate / ceiling_rate:.2f} | {cpu:.3f} | "
                  f"{p50:.2f} |" + (f" {errors} errors" if errors else ""))
    out = ROOT / "bench" / "results" / f"cache-hits-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu_flags(), "rounds": results, "summary": summary},
                              indent=1))
    print(f"\nraw results: {out}")
    if args.profile:
        import pstats

        stats = pstats.Stats(str(work / "profile.out"))
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
