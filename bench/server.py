"""Server benchmark: ppocr-server on loopback under multirequest.py, beside the raw engine.

One run measures, side by side:

1. the original server's three scenarios at 50 clients (different uncached images, one uncached
   image sent by all, one cached image), with the engine runs each cost (GET /ready's
   engine_runs before and after) and the same-image latency against one lone request's;
2. saturation throughput with 1 and 2 workers against the raw engine's throughput measured in the
   same run with the same threads per process (N engine processes for N workers, pulling the
   same image sequence from one queue): server efficiency = server req/s / engine images/s, and
   CPU efficiency = engine CPU s / (workers + server process) CPU s for the same images, which
   does not depend on how much CPU other processes on the machine left to each side;
3. the cache-hit latency distribution at 50 clients (and at 1, the service time), with a py-spy
   profile of the server process under that load;
4. RSS of the server process and of every worker, sampled over 2,000 mixed requests (20% uncached,
   80% cache hits, multirequest's `--mix different=1,cached=4`) on a fresh server after a
   warm-up of --warm-passes uncached passes over the images: a PNG plot and a table, with the
   growth from the end of the warm-up to the end of the mixed requests.

The server is started as users start it, `python setup.py --config <temp config>`, on a free
loopback port; every client is a separate `multirequest.py --json` process. Saturation rounds
alternate engine and server (ABBA) so that a drift in other processes' load favours neither, and
each round records how many cores other processes kept busy (a round above --max-other-cores is
"crowded"; the headline uses the clean rounds when there are any); the load average is recorded
too. Images: every full-pipeline image of ../shared/eval (paddleocr/doc/imgs, imgs_en,
rapidocr/test_files), copied into one folder; for the saturation rounds they are ordered most
expensive first (measured in the engine's warm-up pass) so that the last, lone requests of a
round are short and the tail does not skew a rate.

    make bench-server                          # = .venv/bin/python bench/server.py (~10-20 min)
    .venv/bin/python bench/server.py --quick   # smoke run, ~2-3 min on a quiet machine

Results: bench/results/server-<timestamp>.json, .md (the tables) and rss-<timestamp>.png; a full
run also copies the plot to docs/rss.png.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import importlib.metadata
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVAL_DIR = ROOT.parent / "shared" / "eval"
RESULTS_DIR = HERE / "results"
DOCS_PLOT = ROOT / "docs" / "rss.png"
IMAGE_SOURCES = ("paddleocr/doc/imgs", "paddleocr/doc/imgs_en", "rapidocr/test_files")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The one image of the same/cached scenarios: a 500x500 page of 16 lines, ~0.5 s on one core.
SAME_IMAGE = "paddleocr_doc_imgs__11.jpg"
PROTOCOL = "@@bench "  # prefix of the raw-engine runner's messages on its stdout

PARTS = ("saturation", "scenarios", "rss")
TARGETS = {"efficiency": 0.95, "cached_p99_ms": 5.0, "same_ratio": 1.2, "rss_growth": 0.05}


# ----------------------------------------------------------------------------- raw engine side
# `bench/server.py --raw-engine`, run with PYTHONPATH=ROOT: N engine processes pull image paths
# from one queue, like the server's workers pull jobs, and report when each image started and
# ended. Commands (JSON lines) come on stdin; answers go to stdout behind PROTOCOL.

def engine_process(threads: int, models_dir: str, tasks, results) -> None:
    import queue

    from ocr_engine import EngineConfig, OcrEngine, resolve_model_set

    parent = os.getppid()

    engine = OcrEngine(EngineConfig(resolve_model_set("ppocr-v4", "onnxruntime", Path(models_dir)),
                                    threads=threads))
    engine.warm_up()  # as a server worker does before it reports ready
    results.put(("ready", os.getpid()))
    payloads: dict[str, bytes] = {}
    while True:
        try:
            task = tasks.get(timeout=1)
        except queue.Empty:
            if os.getppid() != parent:  # the runner is gone: do not linger as an orphan
                return
            continue
        if task is None:
            return
        index, path = task
        data = payloads.get(path)
        if data is None:  # read once: the server's client also sends bytes it holds in memory
            data = payloads[path] = Path(path).read_bytes()
        start = time.monotonic()
        engine.ocr(data)
        results.put(("done", index, path, start, time.monotonic()))


def run_raw_engine(processes: int, threads: int, models_dir: str) -> int:
    def emit(message: dict) -> None:
        print(PROTOCOL + json.dumps(message), flush=True)

    # SIGTERM exits through sys.exit, so multiprocessing's exit handler ends the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue()
    workers = [context.Process(target=engine_process, args=(threads, models_dir, tasks, results),
                               daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    pids = [results.get(timeout=300)[1] for _ in workers]
    emit({"event": "ready", "pids": pids})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "stop":
            break
        paths, count = command["images"], command["count"]
        started = time.monotonic()
        for index in range(count):
            tasks.put((index, paths[index % len(paths)]))
        done = []
        for _ in range(count):
            message = results.get(timeout=600)
            if message[0] == "done":
                done.append(message)
        ended = max(message[4] for message in done)
        per_image: dict[str, list[float]] = collections.defaultdict(list)
        for _, _, path, start, end in done:
            per_image[path].append((end - start) * 1000)
        emit({"event": "run", "count": count, "wall_s": ended - started,
              "images_per_s": count / (ended - started), "per_image_ms": per_image})
    for _ in workers:
        tasks.put(None)
    for worker in workers:
        worker.join(timeout=30)
    return 0


class RawEngine:
    """The parent's handle on a `--raw-engine` runner subprocess."""

    def __init__(self, processes: int, threads: int, log_path: Path) -> None:
        self.processes, self.threads = processes, threads
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--raw-engine",
             "--processes", str(processes), "--threads", str(threads),
             "--models-dir", str(ROOT / "models")],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True)
        self.pids = self._read()["pids"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        raise RuntimeError(f"raw-engine runner exited ({self.proc.wait()}); see {self._log.name}")

    def run(self, images: list[Path], count: int) -> dict:
        """One pass of `count` images; adds the engine processes' CPU seconds and the CPU
        seconds the rest of the machine used meanwhile (other_cpu_s)."""
        busy_before, cpu_before = busy_cpu_seconds(), cpu_seconds_of(self.pids)
        self.proc.stdin.write(json.dumps({"cmd": "run", "images": [str(p) for p in images],
                                          "count": count}) + "\n")
        self.proc.stdin.flush()
        result = self._read()
        cpu = cpu_seconds_of(self.pids) - cpu_before
        result.update(cpu_s=round(cpu, 3),
                      other_cpu_s=round(busy_cpu_seconds() - busy_before - cpu, 3))
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)  # idle runners stop at once
            except (OSError, subprocess.TimeoutExpired):
                self.proc.terminate()  # mid-run: its SIGTERM handler ends the engine processes
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()


def cpu_seconds_of(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle, all cores together."""
    import psutil

    times = psutil.cpu_times()  # guest time is already inside user time on Linux
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def wait_for_quiet(args, log) -> None:
    """With --wait-quiet S: waits up to S seconds until other processes use at most
    --max-other-cores for two 5-second windows in a row (nothing of ours runs meanwhile)."""
    if not args.wait_quiet:
        return
    deadline = time.monotonic() + args.wait_quiet
    quiet = 0
    waited = False
    while quiet < 2 and time.monotonic() < deadline:
        before = busy_cpu_seconds()
        time.sleep(5)
        other = (busy_cpu_seconds() - before) / 5
        quiet = quiet + 1 if other <= args.max_other_cores else 0
        if quiet == 0 and not waited:
            log(f"  waiting for other processes to quieten (now {other:.2f} cores)")
            waited = True
    if quiet < 2:
        log(f"  still busy after {args.wait_quiet:.0f} s; measuring anyway")


# ----------------------------------------------------------------------------- server side

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get_json(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


class Server:
    """`python setup.py --config <temp config>` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, workdir: Path, name: str, workers: int, threads: int,
                 roots: list[Path]) -> None:
        import psutil

        self.name, self.workers, self.threads = name, workers, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/ocr_service"
        self.config = {
            "web_server": {"port": self.port, "address": "127.0.0.1", "request_timeout": 900},
            "ocr": {"process": {"number": workers, "threads": threads},
                    "predict_system": {"models_dir": str(ROOT / "models")}},
            "service": {"filename_roots": [str(root) for root in roots]},
        }
        config_path = workdir / f"config-{name}.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        self.log_path = workdir / f"server-{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "setup.py", "--config", str(config_path)],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.exit_code: int | None = None
        deadline = started + 600
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                status, _ = http_get_json(self.port, "/ready", timeout=2)
                if status == 200:
                    break
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {name} not ready in 600 s:\n{self.log_tail()}")
            try:
                self.proc.wait(timeout=0.2)  # the pause between polls also notices an exit
            except subprocess.TimeoutExpired:
                pass
        self.ready_s = time.monotonic() - started
        self.process = psutil.Process(self.proc.pid)

    def ready(self) -> dict:
        return http_get_json(self.port, "/ready")[1]

    def engine_runs(self) -> int:
        return self.ready()["engine_runs"]

    def processes(self) -> list[tuple[str, object]]:
        """(role, psutil.Process) of the server and each child: 'server', 'worker', 'other'."""
        import psutil

        found = [("server", self.process)]
        try:
            children = self.process.children()
        except psutil.Error:
            return found
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.Error:
                continue
            found.append(("worker" if "spawn_main" in cmdline else "other", child))
        return found

    def cpu_seconds(self) -> dict[str, float]:
        import psutil

        totals = collections.Counter()
        for role, proc in self.processes():
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            totals[role] += times.user + times.system
        return {"server": totals["server"], "workers": totals["worker"]}

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        if self.exit_code is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.exit_code = self.proc.wait()
            self._log.close()
        return self.exit_code


# ----------------------------------------------------------------------------- clients

PROGRESS = re.compile(r"\] (\d+)/(\d+) ")


def run_client(server: Server, images: Path, scenario: str, concurrency: int, requests: int,
               *, extra: tuple[str, ...] = (), on_progress=None) -> dict:
    """One multirequest.py process; its JSON summary plus the engine runs, CPU seconds of the
    server, its workers and the client, and the load average around it."""
    command = [sys.executable, str(ROOT / "multirequest.py"), "--url", server.url,
               "--images", str(images), "--scenario", scenario,
               "--concurrency", str(concurrency), "--requests", str(requests),
               "--mode", "upload", "--json", "--timeout", "900",
               "--progress" if on_progress else "--no-progress", *extra]
    runs_before, cpu_before = server.engine_runs(), server.cpu_seconds()
    load_before = os.getloadavg()[0]
    rusage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = busy_cpu_seconds()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    messages: list[str] = []

    def read_stderr() -> None:
        pending = b""
        while chunk := proc.stderr.read1(4096):
            pending += chunk
            *parts, pending = re.split(rb"[\r\n]", pending)
            for part in parts:
                text = part.decode(errors="replace")
                match = PROGRESS.search(text)
                if match and on_progress:
                    on_progress(int(match.group(1)))
                elif text.strip() and not match:
                    messages.append(text)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        out = proc.stdout.read()
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the load too
            proc.kill()
            proc.wait()
    reader.join()
    rusage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = busy_cpu_seconds() - busy_before
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"multirequest exited {proc.returncode}: {' '.join(messages)}")
    summary = json.loads(out)
    cpu_after = server.cpu_seconds()
    cpu = {"server": cpu_after["server"] - cpu_before["server"],
           "workers": cpu_after["workers"] - cpu_before["workers"],
           "client": rusage_after.ru_utime + rusage_after.ru_stime
           - rusage_before.ru_utime - rusage_before.ru_stime}
    summary.update(
        engine_runs=server.engine_runs() - runs_before,
        cpu_s={k: round(v, 3) for k, v in cpu.items()},
        other_cpu_s=round(busy - sum(cpu.values()), 3),
        loadavg=[round(load_before, 2), round(os.getloadavg()[0], 2)])
    if messages:
        summary["client_messages"] = messages[-5:]
    return summary


# ----------------------------------------------------------------------------- phases

def prepare_images(eval_dir: Path, dest: Path) -> list[Path]:
    dest.mkdir(parents=True)
    for source in IMAGE_SOURCES:
        for path in sorted((eval_dir / source).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                shutil.copyfile(path, dest / f"{source.replace('/', '_')}__{path.name}")
    images = sorted(dest.iterdir())
    if not images:
        raise SystemExit(f"no images found under {eval_dir}")
    return images


def order_by_cost(images: list[Path], per_image_ms: dict[str, list[float]],
                  dest: Path) -> list[Path]:
    """Copies of the images named so that multirequest's sorted order is most expensive first."""
    dest.mkdir()
    cost = {p: statistics.median(per_image_ms.get(str(p), [0.0])) for p in images}
    ordered = []
    for rank, path in enumerate(sorted(images, key=lambda p: -cost[p])):
        target = dest / f"{rank:03d}_{path.name}"
        shutil.copyfile(path, target)
        ordered.append(target)
    return ordered


def saturation(workers: int, threads: int, images: list[Path], ordered: list[Path] | None,
               args, work: Path, log) -> tuple[dict, list[Path]]:
    """Alternating rounds of the raw engine and the server, each on the same image sequence."""
    concurrency = 2 * workers + 2
    result = {"workers": workers, "threads": threads, "concurrency": concurrency, "rounds": []}
    with ExitStack() as stack:
        raw = RawEngine(workers, threads, work / f"raw-engine-{workers}.log")
        stack.callback(raw.close)
        server = Server(work, f"saturation-{workers}w", workers, threads, [])
        stack.callback(server.stop)
        log(f"  {workers} worker(s) x {threads} thread(s): server ready in {server.ready_s:.1f} s")
        # Untimed warm-up pass on both sides: first calls on new shapes are slow.
        warm = raw.run(ordered or images, len(images))
        log(f"  engine warm-up pass: {warm['images_per_s']:.2f} images/s")
        if ordered is None:
            ordered = order_by_cost(images, warm["per_image_ms"], work / "ordered")
            result["per_image_ms"] = {Path(k).name: round(statistics.median(v), 1)
                                      for k, v in warm["per_image_ms"].items()}
        ordered_dir = ordered[0].parent
        summary = run_client(server, ordered_dir, "different", concurrency, len(ordered))
        log(f"  server warm-up pass: {summary['throughput_rps']:.2f} req/s")
        count = args.passes * len(ordered)
        for round_no in range(1, args.rounds + 1):
            load = os.getloadavg()[0]
            # ABBA order (engine, server, server, engine, ...): a steady drift in the machine's
            # other load then favours neither side.
            def run_engine() -> dict:
                wait_for_quiet(args, log)
                return raw.run(ordered, count)

            def run_server() -> dict:
                wait_for_quiet(args, log)
                return run_client(server, ordered_dir, "different", concurrency, count)

            if round_no % 2:
                engine, summary = run_engine(), run_server()
            else:
                summary = run_server()
                engine = run_engine()
            efficiency = summary["throughput_rps"] / engine["images_per_s"]
            server_cpu = summary["cpu_s"]["server"] + summary["cpu_s"]["workers"]
            # Cores the rest of the machine kept busy meanwhile: other sessions' tests and
            # benchmarks share these cores, and a round they crowded is not a fair comparison.
            other = max(engine["other_cpu_s"] / engine["wall_s"],
                        summary["other_cpu_s"] / summary["wall_s"])
            result["rounds"].append({
                "engine_images_per_s": round(engine["images_per_s"], 3),
                "engine_wall_s": round(engine["wall_s"], 3),
                "engine_cpu_s": engine["cpu_s"], "server": summary,
                "efficiency": round(efficiency, 4),
                "cpu_efficiency": round(engine["cpu_s"] / server_cpu, 4),
                "other_cores": round(other, 3), "clean": other <= args.max_other_cores,
                "loadavg": [round(load, 2), round(os.getloadavg()[0], 2)]})
            log(f"  round {round_no}: engine {engine['images_per_s']:.3f} images/s, server "
                f"{summary['throughput_rps']:.3f} req/s ({summary['ok']}/{count} ok, "
                f"{summary['engine_runs']} engine runs), efficiency {efficiency:.3f}, CPU "
                f"efficiency {engine['cpu_s'] / server_cpu:.3f}, other processes "
                f"{other:.2f} cores, load {load:.2f}")
        result["server_exit_code"] = server.stop()
    # The headline comes from the rounds no other process crowded, if there are any.
    rounds = [r for r in result["rounds"] if r["clean"]] or result["rounds"]
    engine_total = sum(r["engine_wall_s"] for r in rounds)
    server_total = sum(r["server"]["wall_s"] for r in rounds)
    result.update(
        clean_rounds=sum(r["clean"] for r in result["rounds"]),
        efficiency_median=round(statistics.median(r["efficiency"] for r in rounds), 4),
        efficiency_pooled=round(engine_total / server_total, 4),
        cpu_efficiency_median=round(statistics.median(r["cpu_efficiency"] for r in rounds), 4))
    return result, ordered


def scenarios(server: Server, images_dir: Path, same_image: Path, args, log) -> dict:
    """The original's three scenarios at `clients` clients, plus the cache-hit distribution."""
    clients = args.clients
    out: dict = {}
    singles = [run_client(server, same_image, "same", 1, 1) for _ in range(3)]
    out["single"] = {"latency_ms": [s["latency_ms"]["mean"] for s in singles],
                     "median_ms": statistics.median(s["latency_ms"]["mean"] for s in singles),
                     "engine_runs": sum(s["engine_runs"] for s in singles)}
    log(f"  one lone uncached request: {out['single']['median_ms']:.0f} ms (median of 3)")
    out["same"] = run_client(server, same_image, "same", clients, clients)
    out["same"]["ratio_to_single"] = round(out["same"]["latency_ms"]["mean"]
                                           / out["single"]["median_ms"], 3)
    log(f"  same uncached x{clients}: mean {out['same']['latency_ms']['mean']:.0f} ms, "
        f"{out['same']['engine_runs']} engine run(s)")
    out["different"] = run_client(server, images_dir, "different", clients, clients)
    log(f"  different uncached x{clients}: mean {out['different']['latency_ms']['mean']:.0f} ms, "
        f"{out['different']['engine_runs']} engine runs")
    out["cached"] = run_client(server, same_image, "cached", clients, clients)
    log(f"  same cached x{clients}: mean {out['cached']['latency_ms']['mean']:.1f} ms")
    out["cached_load"] = run_client(server, same_image, "cached", clients, args.cached_requests)
    log(f"  cache hits, {clients} clients x {args.cached_requests // clients}: p99 "
        f"{out['cached_load']['latency_ms']['p99']:.1f} ms, "
        f"{out['cached_load']['throughput_rps']:.0f} req/s")
    out["cached_serial"] = run_client(server, same_image, "cached", 1, args.cached_requests // 4)
    log(f"  cache hits, 1 client: p99 {out['cached_serial']['latency_ms']['p99']:.1f} ms")
    if args.profile:
        out["profile"] = profile_cached(server, same_image, args, log)
    return out


def profile_cached(server: Server, same_image: Path, args, log) -> dict:
    """py-spy (sampling, non-blocking) on the server process during a cache-hit run."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        log("  py-spy not installed: no profile (pip install -r requirements-bench.txt)")
        return {"error": "py-spy not installed"}
    raw = Path(tempfile.mkdtemp(prefix="pyspy-")) / "cached.txt"
    spy = subprocess.Popen([py_spy, "record", "--pid", str(server.proc.pid), "--rate", "250",
                            "--nonblocking", "--format", "raw", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # py-spy attaching; a failure to attach shows as an exit here
        if spy.poll() is not None:
            error = spy.stderr.read().strip()[-300:]
            log(f"  py-spy failed: {error}")
            return {"error": error}
        run_client(server, same_image, "cached", args.clients, args.cached_requests)
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    if not raw.exists():
        return {"error": "py-spy wrote no profile"}
    profile = summarize_profile(raw.read_text())
    shutil.copyfile(raw, args.out_dir / f"pyspy-cached-{args.stamp}.txt")
    return profile


PROFILE_GROUPS = (  # (label, substring of a frame); the first match from the leaf up wins
    ("socket send (kernel)", "write_to_fd"),
    ("socket receive", "read_from_fd"),
    ("waiting in epoll (idle)", "select (selectors.py"),
    ("access log line", "log_request"),
    ("JSON encode of the response", "send_json"),
    ("cache key: sha256 of the image", "request_key"),
    ("multipart/form parsing", "read_fields"),
    ("request checks (build_request)", "build_request"),
    ("HTTP header parsing", "_read_message"),
    ("response headers and flush", "flush (tornado/web.py"),
)


def summarize_profile(raw: str) -> dict:
    """Share of samples by leaf function and by group (the first PROFILE_GROUPS entry whose
    substring appears in the stack, searched from the leaf towards the root)."""
    leaf = collections.Counter()
    groups = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        label = "other (event loop, Tornado routing, asyncio)"
        for frame in reversed(frames):
            hit = next((name for name, needle in PROFILE_GROUPS if needle in frame), None)
            if hit:
                label = hit
                break
        groups[label] += n
    share = lambda n: round(100 * n / total, 1) if total else 0.0  # noqa: E731
    return {"samples": total,
            "groups": {name: share(n) for name, n in groups.most_common()},
            "top_functions": {name: share(n) for name, n in leaf.most_common(12)}}


def rss_run(work: Path, images: list[Path], args, log) -> dict:
    """A fresh 2-worker server: a warm-up of `--warm-passes` uncached passes over the images,
    then the mixed requests; RSS of the server process and its children sampled throughout."""
    import psutil

    images_dir = images[0].parent
    server = Server(work, "rss", 2, max(1, (os.cpu_count() or 2) // 2), [images_dir])
    samples: list[dict] = []
    progress = {"done": 0, "offset": 0, "phase": "boot"}
    stop = threading.Event()
    started = time.monotonic()

    def take_sample() -> None:
        rss = {}
        for role, proc in server.processes():
            try:
                rss[str(proc.pid)] = (role, proc.memory_info().rss)
            except psutil.Error:
                continue
        samples.append({"t": round(time.monotonic() - started, 2), "done": progress["done"],
                        "phase": progress["phase"], "rss": rss})

    def sample_until_stopped() -> None:
        while True:
            take_sample()
            if stop.wait(args.sample_interval):
                return

    def on_progress(done: int) -> None:
        progress["done"] = progress["offset"] + done

    sampler = threading.Thread(target=sample_until_stopped, daemon=True)
    try:
        sampler.start()
        time.sleep(2 * args.sample_interval)  # a few idle samples: the RSS after boot
        progress["phase"] = "warm-up"
        warm = run_client(server, images_dir, "different", 4, args.warm_passes * len(images),
                          on_progress=on_progress)
        progress.update(done=warm["requests"], offset=warm["requests"], phase="mixed")
        take_sample()  # the reference point: warmed up, no mixed request yet
        summary = run_client(server, images_dir, "mixed", 8, args.mixed_requests,
                             extra=("--mix", "different=1,cached=4", "--seed", "4"),
                             on_progress=on_progress)
        progress.update(done=warm["requests"] + summary["requests"], phase="end")
        take_sample()
        time.sleep(2 * args.sample_interval)
    finally:
        stop.set()
        sampler.join()
        exit_code = server.stop()
    log(f"  warm-up: {warm['requests']} uncached requests in {warm['wall_s']:.0f} s; "
        f"{summary['requests']} mixed requests: {summary['ok']} ok, {summary['cached']} "
        f"cached, {summary['engine_runs']} engine runs, {summary['wall_s']:.0f} s")
    reference = next(i for i, s in enumerate(samples) if s["phase"] == "mixed")
    last = max(i for i, s in enumerate(samples) if s["phase"] == "end")
    measured = samples[reference:last + 1]
    table = []
    pids = {pid: role for s in samples for pid, (role, _) in s["rss"].items()}
    for pid, role in sorted(pids.items(), key=lambda kv: (kv[1] != "server", kv[1], kv[0])):
        first = next(s["rss"][pid][1] for s in samples if pid in s["rss"])
        during = [s["rss"][pid][1] for s in measured if pid in s["rss"]]
        if during:  # a worker replaced mid-run would show as two pids, each with its own row
            table.append(rss_row(role, pid, first, during[0], during[-1], max(during)))
    totals = [sum(rss for _, rss in s["rss"].values()) for s in samples]
    table.append(rss_row("all", "-", totals[0], totals[reference], totals[last],
                         max(totals[reference:last + 1])))
    return {"warm_up": warm, "summary": summary, "warm_up_requests": warm["requests"],
            "table": table, "samples": samples, "server_exit_code": exit_code,
            "sample_interval_s": args.sample_interval}


def rss_row(role: str, pid: str, start: int, warm: int, end: int, peak: int) -> dict:
    mib = 1024 * 1024
    return {"process": role, "pid": pid, "start_mib": round(start / mib, 1),
            "warm_mib": round(warm / mib, 1), "end_mib": round(end / mib, 1),
            "peak_mib": round(peak / mib, 1),
            "growth_after_warm": round((end - warm) / warm, 4) if warm else None}


def plot_rss(rss: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    pids = {}
    for s in rss["samples"]:
        for pid, (role, _) in s["rss"].items():
            pids.setdefault(pid, role)
    workers = 0
    for pid, role in pids.items():
        if role == "other":
            continue  # multiprocessing's resource tracker: a few MiB, flat
        points = [(s["done"], s["rss"][pid][1] / 2**20) for s in rss["samples"] if pid in s["rss"]]
        if role == "worker":
            workers += 1
            label = f"worker {workers} (pid {pid})"
        else:
            label = f"server process (pid {pid})"
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label,
                marker=".", markersize=3, linewidth=1)
    ax.axvline(rss["warm_up_requests"], color="grey", linestyle="--", linewidth=1,
               label=f"warm-up ({rss['warm_up_requests']} uncached) | mixed requests")
    ax.set_xlabel(f"requests completed since boot: warm-up, then {rss['summary']['requests']} "
                  "mixed (20% uncached, 80% cache hits)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------- report

def machine_info() -> dict:
    import psutil

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    for package in ("onnxruntime", "tornado", "numpy"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ms(value) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def report(results: dict) -> str:
    lines: list[str] = []
    m = results["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; Python "
                 f"{m['python']}, onnxruntime {m.get('onnxruntime')}, tornado {m.get('tornado')}.")
    lines.append(f"Load average (1 min) before/after the run: {results['loadavg_before'][0]:.2f}"
                 f" / {results['loadavg_after'][0]:.2f}; run took "
                 f"{results['elapsed_s'] / 60:.1f} min{' (--quick)' if results['quick'] else ''}"
                 f"; parts: {', '.join(results['args']['part_list'])}.")
    exits = []
    if "saturation" in results:
        report_saturation(results, lines.append)
        exits += [e["server_exit_code"] for e in results["saturation"]]
    if "scenarios" in results:
        report_scenarios(results, lines.append)
        exits.append(results["scenario_server_exit_code"])
    if "rss" in results:
        report_rss(results, lines.append)
        exits.append(results["rss"]["server_exit_code"])
    lines.append("")
    lines.append(f"Server exit codes after SIGTERM: {exits}.")
    return "\n".join(lines)


def report_saturation(results: dict, add) -> None:
    add("")
    sat = results["saturation"]
    add("Saturation: server req/s (multirequest `different`, uncached, upload) vs raw engine "
        "images/s (same images, same order, same threads per process), rounds alternating.")
    add("")
    add("| workers x threads | clients | round | engine images/s | server req/s | efficiency "
        "| CPU s per image: engine / server (workers + server process) | CPU efficiency "
        "| other processes, cores | load avg |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for entry in sat:
        for i, r in enumerate(entry["rounds"], 1):
            srv = r["server"]
            count = srv["requests"]
            add(f"| {entry['workers']} x {entry['threads']} | {entry['concurrency']} | {i} | "
                f"{r['engine_images_per_s']:.3f} | {srv['throughput_rps']:.3f} | "
                f"{r['efficiency']:.3f} | {r['engine_cpu_s'] / count:.3f} / "
                f"{(srv['cpu_s']['workers'] + srv['cpu_s']['server']) / count:.3f} "
                f"({srv['cpu_s']['server'] / count * 1000:.1f} ms server process) | "
                f"{r['cpu_efficiency']:.3f} | {r['other_cores']:.2f}"
                f"{'' if r['clean'] else ' (crowded)'} | {r['loadavg'][0]:.1f} |")
    add("")
    add("| workers x threads | clean rounds | efficiency (median) | pooled (sum engine s / sum "
        "server s) | CPU efficiency (median) | target >= 0.95 |")
    add("|---|---|---|---|---|---|")
    for entry in sat:
        add(f"| {entry['workers']} x {entry['threads']} | {entry['clean_rounds']} of "
            f"{len(entry['rounds'])} | {entry['efficiency_median']:.3f} | "
            f"{entry['efficiency_pooled']:.3f} | {entry['cpu_efficiency_median']:.3f} | "
            f"{verdict(entry['efficiency_median'] >= TARGETS['efficiency'])} |")


def report_scenarios(results: dict, add) -> None:
    add("")
    sc = results["scenarios"]
    clients = results["args"]["clients"]
    add(f"The original's scenarios, {clients} clients, one request each (2 workers x "
        f"{results['scenario_threads']} thread), latency in ms:")
    add("")
    add("| scenario | original (4 workers, Ryzen 5 3600) | mean | p50 | p95 | max | engine runs |")
    add("|---|---|---|---|---|---|---|")
    original = {"different": "mean 4800, max 9000", "same": "mean 1140",
                "cached": "mean 10, max 30"}
    names = {"different": "different uncached images", "same": "same uncached image",
             "cached": "same cached image"}
    for key in ("different", "same", "cached"):
        s = sc[key]
        lat = s["latency_ms"]
        add(f"| {names[key]} | {original[key]} | {ms(lat['mean'])} | {ms(lat['p50'])} | "
            f"{ms(lat['p95'])} | {ms(lat['max'])} | {s['engine_runs']}"
            f"{' (the warm-up request)' if key == 'cached' and s['engine_runs'] else ''} |")
    add("")
    single, same = sc["single"], sc["same"]
    add(f"Same uncached image: {same['engine_runs']} engine run(s) for {same['requests']} "
        f"requests (target 1: {verdict(same['engine_runs'] == 1)}); mean "
        f"{same['latency_ms']['mean']:.0f} ms vs a lone request's {single['median_ms']:.0f} ms "
        f"(median of {', '.join(f'{v:.0f}' for v in single['latency_ms'])}) = "
        f"{same['ratio_to_single']:.2f}x (target <= 1.2x: "
        f"{verdict(same['ratio_to_single'] <= TARGETS['same_ratio'])}).")
    add("")
    add("Cache hits (same image, upload), latency in ms:")
    add("")
    add("| clients | requests | mean | p50 | p95 | p99 | max | req/s | CPU s: server / client | "
        "target p99 <= 5 ms |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for key in ("cached_load", "cached_serial"):
        s = sc[key]
        lat = s["latency_ms"]
        add(f"| {s['concurrency']} | {s['requests']} | {ms(lat['mean'])} | {ms(lat['p50'])} | "
            f"{ms(lat['p95'])} | {ms(lat['p99'])} | {ms(lat['max'])} | "
            f"{s['throughput_rps']:.0f} | {s['cpu_s']['server']:.1f} / {s['cpu_s']['client']:.1f}"
            f" of {s['wall_s']:.1f} s wall | "
            f"{verdict(lat['p99'] <= TARGETS['cached_p99_ms']) if key == 'cached_load' else '-'} |")
    prof = sc.get("profile")
    if prof and "groups" in prof:
        add("")
        add(f"Where the server process's time goes under {clients} clients of cache hits "
            f"(py-spy, {prof['samples']} samples):")
        add("")
        add("| share | part |")
        add("|---|---|")
        for name, share in prof["groups"].items():
            add(f"| {share:.1f}% | {name} |")


def report_rss(results: dict, add) -> None:
    rss = results["rss"]
    add("")
    s = rss["summary"]
    w = rss["warm_up"]
    add(f"RSS on a fresh 2-worker server: warm-up = {w['requests']} uncached requests "
        f"({results['args']['warm_passes']} passes over the images, 4 clients, "
        f"{w['wall_s']:.0f} s),"
        f" then {s['requests']} mixed requests (`--mix different=1,cached=4`, 8 clients): "
        f"{s['ok']} ok, {s['cached']} cache hits, {s['engine_runs']} engine runs, "
        f"{s['wall_s']:.0f} s. Sampled every {rss['sample_interval_s']} s.")
    add("")
    add(f"| process | pid | after boot MiB | after warm-up MiB | after {s['requests']} mixed MiB "
        "| peak during mixed MiB | growth after warm-up | target <= 5% |")
    add("|---|---|---|---|---|---|---|---|")
    for row in rss["table"]:
        growth = row["growth_after_warm"]
        add(f"| {row['process']} | {row['pid']} | {row['start_mib']:.0f} | {row['warm_mib']:.0f}"
            f" | {row['end_mib']:.0f} | {row['peak_mib']:.0f} | "
            f"{100 * growth:+.1f}% | {verdict(growth <= TARGETS['rss_growth'])} |")


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer images, "
                        "one round, fewer requests; docs/rss.png is left alone")
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts to run, "
                        "comma-separated (default: %(default)s)")
    parser.add_argument("--workers", default="1,2", help="worker counts of the saturation test")
    parser.add_argument("--rounds", type=int, help="engine/server rounds per worker count "
                        "(default 2, quick 1)")
    parser.add_argument("--passes", type=int, default=1, help="passes over the images per round")
    parser.add_argument("--max-other-cores", type=float, default=0.25, help="a saturation "
                        "round counts as clean when other processes kept at most this many "
                        "cores busy; the headline efficiency uses clean rounds when there are")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each half of a saturation round, wait up to SECONDS for "
                        "other processes to stay under --max-other-cores (default: no wait)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--cached-requests", type=int, help="cache hits at --clients clients "
                        "(default 2000, quick 500)")
    parser.add_argument("--mixed-requests", type=int, help="requests of the RSS run "
                        "(default 2000, quick 200)")
    parser.add_argument("--warm-passes", type=int, default=2, help="uncached passes over the "
                        "images before the mixed requests of the RSS run (default 2)")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="RSS sampling, s")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy profile of cache hits")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--docs-plot", type=Path, help="where to copy the RSS plot "
                        "(default docs/rss.png, none with --quick)")
    # The raw-engine runner (internal).
    parser.add_argument("--raw-engine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", default=str(ROOT / "models"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 2)
    args.cached_requests = args.cached_requests or (500 if quick else 2000)
    args.mixed_requests = args.mixed_requests or (200 if quick else 2000)
    if args.docs_plot is None and not quick:
        args.docs_plot = DOCS_PLOT
    args.worker_counts = [int(n) for n in args.workers.split(",")]
    args.part_list = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(args.part_list) - set(PARTS)
    if unknown or not args.part_list:
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.raw_engine:
        return run_raw_engine(args.processes, args.threads, args.models_dir)
    # SIGTERM exits through sys.exit, so the finally blocks stop the servers and runners.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    results: dict = {"machine": machine_info(), "quick": args.quick,
                     "loadavg_before": [round(v, 2) for v in os.getloadavg()],
                     "args": {k: (str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()},
                     "targets": TARGETS}
    log(f"load average before: {results['loadavg_before']}")
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    try:
        images = prepare_images(args.eval_dir, work / "images")
        same_image = work / "images" / SAME_IMAGE
        if not same_image.exists():
            same_image = images[0]
        if args.quick:
            images = sorted(set(images[::8]) | {same_image})
            for path in set((work / "images").iterdir()) - set(images):
                path.unlink()
        log(f"{len(images)} images in {work / 'images'}")

        if "saturation" in args.part_list:
            log("saturation: raw engine vs server")
            results["saturation"] = []
            ordered = None
            for workers in args.worker_counts:
                entry, ordered = saturation(workers, max(1, cores // workers), images, ordered,
                                            args, work, log)
                results["saturation"].append(entry)

        threads = max(1, cores // 2)
        results["scenario_threads"] = threads
        if "scenarios" in args.part_list:
            log(f"scenarios at {args.clients} clients: 2 workers x {threads} thread(s)")
            server = Server(work, "scenarios", 2, threads, [work / "images"])
            try:
                # Warm the workers on every image first, as the saturation servers were.
                run_client(server, work / "images", "different", 6, len(images))
                results["scenarios"] = scenarios(server, work / "images", same_image, args, log)
            finally:
                results["scenario_server_exit_code"] = server.stop()

        if "rss" in args.part_list:
            log(f"RSS over {args.mixed_requests} mixed requests")
            results["rss"] = rss_run(work, images, args, log)
    except BaseException:
        print(f"benchmark failed; server and runner logs kept in {work}", file=sys.stderr)
        raise
    results["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    plot = None
    if "rss" in results:
        plot = args.out_dir / f"rss-{args.stamp}.png"
        plot_rss(results["rss"], plot, f"ppocr-server RSS, 2 workers x {threads} thread(s), "
                 f"{results['machine']['cpu']}, {cores} cores")
        if args.docs_plot:
            shutil.copyfile(plot, args.docs_plot)
    text = report(results)
    (args.out_dir / f"server-{args.stamp}.json").write_text(json.dumps(results, indent=1))
    (args.out_dir / f"server-{args.stamp}.md").write_text(text + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
    print(f"\nresults: {args.out_dir}/server-{args.stamp}.json, .md"
          + (f"; plot {plot}" if plot else "")
          + (f" (copied to {args.docs_plot})" if plot and args.docs_plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
