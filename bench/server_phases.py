"""The parts of bench/server.py: the server under multirequest.py, the saturation rounds against
the raw engine, the original's scenarios, the cache-hit profile and the RSS run.

Every client is a separate `multirequest.py --json` process: its summary is the JSON on its
stdout, and its progress (for the RSS run's x axis) the JSON lines of --progress-json on its
stderr. Servers are `server.testing.ServerProcess`es on free loopback ports.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from raw_engine import RawEngine

from server.testing import (
    ROOT,
    RssSampler,
    ServerProcess,
    busy_cpu_seconds,
    cpu_seconds,
    process_tree,
)

IMAGE_SOURCES = ("paddleocr/doc/imgs", "paddleocr/doc/imgs_en", "rapidocr/test_files")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ----------------------------------------------------------------------------- server and clients

def start_server(work: Path, name: str, workers: int, threads: int,
                 roots: list[Path]) -> ServerProcess:
    """A server as the benchmark runs it: `workers` x `threads`, a long request timeout."""
    return ServerProcess(work, {"web_server.request_timeout": 900,
                                "ocr.process.number": workers, "ocr.process.threads": threads,
                                "service.filename_roots": [str(root) for root in roots]},
                         name=name).start(ready_timeout=600)


def engine_runs(server: ServerProcess) -> int:
    return server.get_json("/ready")[1]["engine_runs"]


def cpu_by_role(server: ServerProcess) -> dict[str, float]:
    """CPU seconds of the server process and of its workers so far."""
    tree = process_tree(server.pid)
    return {"server": cpu_seconds(proc for role, proc in tree if role == "server"),
            "workers": cpu_seconds(proc for role, proc in tree if role == "worker")}


def run_client(server: ServerProcess, images: Path, scenario: str, concurrency: int,
               requests: int, *, extra: tuple[str, ...] = (), on_progress=None) -> dict:
    """One multirequest.py process; its JSON summary plus the engine runs, CPU seconds of the
    server, its workers and the client, and the load average around it. `on_progress(done)`
    gets the request count of each of its --progress-json lines."""
    command = [sys.executable, str(ROOT / "multirequest.py"), "--url", server.url(),
               "--images", str(images), "--scenario", scenario,
               "--concurrency", str(concurrency), "--requests", str(requests),
               "--mode", "upload", "--json", "--timeout", "900",
               "--progress-json" if on_progress else "--no-progress", *extra]
    runs_before, cpu_before = engine_runs(server), cpu_by_role(server)
    load_before = os.getloadavg()[0]
    rusage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = busy_cpu_seconds()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    messages: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            try:
                progress = json.loads(line)
            except ValueError:
                progress = None
            if isinstance(progress, dict) and "done" in progress:
                if on_progress:
                    on_progress(progress["done"])
            elif line.strip():
                messages.append(line.strip())

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
    cpu_after = cpu_by_role(server)
    cpu = {"server": cpu_after["server"] - cpu_before["server"],
           "workers": cpu_after["workers"] - cpu_before["workers"],
           "client": rusage_after.ru_utime + rusage_after.ru_stime
           - rusage_before.ru_utime - rusage_before.ru_stime}
    summary.update(
        engine_runs=engine_runs(server) - runs_before,
        cpu_s={k: round(v, 3) for k, v in cpu.items()},
        other_cpu_s=round(busy - sum(cpu.values()), 3),
        loadavg=[round(load_before, 2), round(os.getloadavg()[0], 2)])
    if messages:
        summary["client_messages"] = messages[-5:]
    return summary


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
        server = start_server(work, f"saturation-{workers}w", workers, threads, [])
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


def scenarios(server: ServerProcess, images_dir: Path, same_image: Path, args, log) -> dict:
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


def profile_cached(server: ServerProcess, same_image: Path, args, log) -> dict:
    """py-spy (sampling, non-blocking) on the server process during a cache-hit run."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        log("  py-spy not installed: no profile (pip install -r requirements-bench.txt)")
        return {"error": "py-spy not installed"}
    raw = Path(tempfile.mkdtemp(prefix="pyspy-")) / "cached.txt"
    spy = subprocess.Popen([py_spy, "record", "--pid", str(server.pid), "--rate", "250",
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
    images_dir = images[0].parent
    server = start_server(work, "rss", 2, max(1, (os.cpu_count() or 2) // 2), [images_dir])
    progress = {"done": 0, "offset": 0, "phase": "boot"}
    sampler = RssSampler(server.pid, args.sample_interval,
                         lambda: {"done": progress["done"], "phase": progress["phase"]})

    def on_progress(done: int) -> None:
        progress["done"] = progress["offset"] + done

    try:
        sampler.start()
        time.sleep(2 * args.sample_interval)  # a few idle samples: the RSS after boot
        progress["phase"] = "warm-up"
        warm = run_client(server, images_dir, "different", 4, args.warm_passes * len(images),
                          on_progress=on_progress)
        progress.update(done=warm["requests"], offset=warm["requests"], phase="mixed")
        sampler.take()  # the reference point: warmed up, no mixed request yet
        summary = run_client(server, images_dir, "mixed", 8, args.mixed_requests,
                             extra=("--mix", "different=1,cached=4", "--seed", "4"),
                             on_progress=on_progress)
        progress.update(done=warm["requests"] + summary["requests"], phase="end")
        sampler.take()
        time.sleep(2 * args.sample_interval)
    finally:
        sampler.stop()
        exit_code = server.stop()
    samples = sampler.samples
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
            table.append(rss_row(role, str(pid), first, during[0], during[-1], max(during)))
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
