"""Folder-job benchmark: a job's items/s beside the raw engine, interactive latency while it
runs, and a many-page PDF through POST /ocr_service, all in one run on one 2-worker server.

1. **Job throughput.** A folder job of --replicas copies of every benchmark image (every
   full-pipeline image of ../shared/eval, as bench/server.py takes them, plus
   docs/samples/receipt.jpg: 9 x 57 = 513 items by default) on a server with
   `ocr.process.number` 2, `ocr.process.threads` 1 and `jobs.max_workers` --job-workers (0,
   the server's default: one worker stays free while interactive requests come, both are the
   job's after `jobs.idle_takeover` seconds without one), against the raw engine
   (bench/raw_engine.py: 2 engine processes x 1 thread pulling from one queue) on the same
   files. Each copy of an image gets
   a comment (a JPEG COM segment before the scan, a PNG tEXt chunk before IEND) naming the copy
   and the image: new bytes, so a new cache key, and the same pixels (checked), so every copy
   costs the engine the same. Files are named <copy>_<cost rank>_<name>: the job reads copy
   after copy, each most expensive first, as the engine passes do. Order: --engine-passes
   engine passes (one copy each), the job, as many engine passes again (ABBA: a steady drift
   in the machine's other load favours neither side). The job's progress is polled every
   --poll-interval s and interpolated to the copy boundaries, so each copy of the job is a span
   like an engine pass; the copies that overlap the interactive passes (part 2) are set apart.
   Efficiency = pooled items/s of the other copies / pooled images/s of the engine passes; as
   bench/server.py does, the headline uses the quiet spans (other processes at most
   --max-other-cores) when there are at least two on each side.
2. **Interactive latency during the job.** One client, one request at a time, over
   --latency-images images spread over the cost ranks, each with its own comment so none is
   cached: --latency-passes passes while the job runs (from its --latency-at-block'th copy
   on), and as many with no job (half before the first engine pass, half after the last).
   p50 / p95 / max of both; each answer's elapsed_ms and timings_ms.total split the latency
   into the wait in the server and the engine time.
3. **A --pdf-pages page PDF** made in the run (the first images by name as pages, Pillow
   save_all, composited on white, stored at the server's render dpi so a page renders back to
   the image's own size): pages/s of one blocking POST /ocr_service, and the peak RSS of the
   server process and each worker (RssSampler every 0.5 s, the whole run, by phase).

Throughout, a poller thread records GET /ready's busy workers and queues (the background
lane's occupancy), the CPU seconds of the server process, its workers, the engine processes
and this process, and the machine's busy CPU: what other processes used is the difference.

    .venv/bin/python bench/jobs.py                 # ~5-8 min on 2 shared cores
    .venv/bin/python bench/jobs.py --quick         # smoke run: 4 copies, small sets, ~2 min

Results: bench/results/jobs-<timestamp>.json, and the tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import zlib
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The repository first: bench/server.py would otherwise shadow the server package.
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from raw_engine import RawEngine  # noqa: E402
from server_phases import prepare_images  # noqa: E402
from server_report import machine_info  # noqa: E402

from server.testing import (  # noqa: E402
    RssSampler,
    ServerProcess,
    busy_cpu_seconds,
    cpu_seconds,
    multipart,
    process_tree,
    request,
    wait_for,
)

EVAL_DIR = ROOT.parent / "shared" / "eval"
RECEIPT = ROOT / "docs" / "samples" / "receipt.jpg"
RESULTS_DIR = HERE / "results"
TARGETS = {"efficiency": 0.95, "latency_p95_ratio": 1.5}
DPI = 200  # the server's default ocr.predict_system.dpi: pages are stored at it


# ----------------------------------------------------------------------------- images

def with_comment(data: bytes, text: str) -> bytes:
    """`data` (a JPEG or PNG) with a comment added: other bytes, the same pixels."""
    payload = text.encode()
    if data[:2] == b"\xff\xd8":  # JPEG: a COM segment just before the first scan
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                raise ValueError("malformed JPEG segment")
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker == 0xDA:
                break
            if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
                pos += 2
                continue
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
        return data[:pos] + segment + data[pos:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: a tEXt chunk just before IEND
        pos = data.rfind(b"IEND") - 4
        body = b"tEXt" + b"bench\x00" + payload
        chunk = len(payload + b"bench\x00").to_bytes(4, "big") + body \
            + zlib.crc32(body).to_bytes(4, "big")
        return data[:pos] + chunk + data[pos:]
    raise ValueError("not a JPEG or PNG")


def same_pixels(a: bytes, b: bytes) -> bool:
    import io

    import numpy as np
    from PIL import Image
    return np.array_equal(np.asarray(Image.open(io.BytesIO(a))),
                          np.asarray(Image.open(io.BytesIO(b))))


def make_pdf(images: list[Path], dest: Path) -> int:
    """The images as the pages of one PDF, each at DPI so it renders back to its own size."""
    import io

    from PIL import Image
    pages = []
    for path in images:
        image = Image.open(io.BytesIO(path.read_bytes()))
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)
        pages.append(image.convert("RGB"))
    pages[0].save(dest, "PDF", save_all=True, append_images=pages[1:], resolution=DPI)
    return len(pages)


# ----------------------------------------------------------------------------- measuring

def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(values: list[float]) -> dict:
    return {"n": len(values), "p50": round(pct(values, 50), 1), "p95": round(pct(values, 95), 1),
            "max": round(max(values), 1), "mean": round(statistics.fmean(values), 1)}


class Accounting:
    """CPU seconds of our processes (server, workers, engine processes, this one) and of the
    machine, so that what other processes used over a span is the difference."""

    def __init__(self, server: ServerProcess, raw: RawEngine) -> None:
        self.server = server
        self.me = psutil.Process()
        self.raw_tree = [psutil.Process(raw.proc.pid), *raw.engines]

    def snapshot(self) -> dict:
        tree = process_tree(self.server.pid)
        workers = [p for role, p in tree if role == "worker"]
        me = self.me.cpu_times()
        return {"t": time.monotonic(), "busy": busy_cpu_seconds(),
                "server": cpu_seconds(p for role, p in tree if role == "server"),
                "workers": cpu_seconds(workers),
                # the workers' reaped children: the forked pdfium renderer of each PDF page
                "renderers": cpu_seconds(workers, children=True),
                "engine": cpu_seconds(self.raw_tree),
                "bench": me.user + me.system}

    @staticmethod
    def span(a: dict, b: dict) -> dict:
        wall = b["t"] - a["t"]
        ours = {k: b[k] - a[k] for k in ("server", "workers", "renderers", "engine", "bench")}
        other = b["busy"] - a["busy"] - sum(ours.values())
        return {"wall_s": round(wall, 3), **{f"{k}_cpu_s": round(v, 3) for k, v in ours.items()},
                "other_cpu_s": round(other, 3),
                "other_cores": round(other / wall, 3) if wall > 0 else None}


class Poller:
    """A thread that samples, every `interval` s from start() to stop(), the CPU accounting,
    GET /ready (busy workers, both queues) and, once watch() names one, a job's progress."""

    def __init__(self, server: ServerProcess, accounting: Accounting, interval: float) -> None:
        self.server, self.accounting, self.interval = server, accounting, interval
        self.job_id: str | None = None
        self.samples: list[dict] = []  # appended by the thread only
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            sample = self.accounting.snapshot()
            try:
                _, ready = self.server.get_json("/ready")
                sample.update(busy_workers=ready["busy"], queued=ready["queued"],
                              queued_background=ready["queued_background"])
                if self.job_id:
                    _, job = self.server.get_json(f"/jobs/{self.job_id}")
                    sample.update(job=self.job_id, done=job["done"] + job["failed"],
                                  status=job["status"])
            except (OSError, ValueError, KeyError) as exc:
                self.errors.append(repr(exc)[:200])
            self.samples.append(sample)
            if self._stop.wait(self.interval):
                return

    def start(self) -> Poller:
        self._thread.start()
        return self

    def watch(self, job_id: str) -> None:
        self.job_id = job_id

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def latest(self) -> dict:
        sample = self.samples[-1] if self.samples else {}
        return sample if sample.get("job") == self.job_id else {}

    def time_at(self, done: int) -> float:
        """When the watched job's progress reached `done` items, interpolated between the
        samples around it."""
        previous = None
        for sample in self.samples:
            if sample.get("job") != self.job_id:
                continue
            if sample["done"] >= done:
                if previous is None or sample["done"] == previous["done"]:
                    return sample["t"]
                fraction = (done - previous["done"]) / (sample["done"] - previous["done"])
                return previous["t"] + fraction * (sample["t"] - previous["t"])
            previous = sample
        raise ValueError(f"progress never reached {done}")

    def nearest(self, t: float) -> dict:
        return min(self.samples, key=lambda s: abs(s["t"] - t))

    def span(self, t0: float, t1: float) -> dict:
        """CPU accounting between the samples nearest t0 and t1, and the busy workers of the
        samples in between."""
        out = Accounting.span(self.nearest(t0), self.nearest(t1))
        out["wall_s"] = round(t1 - t0, 3)  # the interpolated times, not the samples'
        inside = [s["busy_workers"] for s in self.samples
                  if t0 <= s["t"] <= t1 and "busy_workers" in s]
        if inside:
            out.update(mean_busy_workers=round(statistics.fmean(inside), 3),
                       share_below_2_busy=round(sum(b < 2 for b in inside) / len(inside), 3),
                       busy_samples=len(inside))
        return out


def ocr_upload(server: ServerProcess, data: bytes, name: str, timeout: float = 900
               ) -> tuple[int, dict, float]:
    """(status, answer, milliseconds) of one blocking upload to POST /ocr_service."""
    body, content_type = multipart({"file_type": "file"}, data, name)
    start = time.monotonic()
    status, _, answer = request(server.port, "POST", "/ocr_service", body,
                                {**server.headers, "Content-Type": content_type}, timeout)
    elapsed = (time.monotonic() - start) * 1000
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = {"raw": answer[:200].decode("latin-1")}
    return status, parsed, elapsed


def latency_pass(server: ServerProcess, images: list[Path], tag: str) -> list[dict]:
    """One client, one request at a time, over `images`, each with its own comment: none is
    cached. Per request: the client's latency, the server's elapsed_ms and the worker's
    engine time (timings_ms.total); what is left of the server's time is the wait."""
    out = []
    for path in images:
        data = with_comment(path.read_bytes(), f"{tag}-{path.name}")
        status, answer, elapsed = ocr_upload(server, data, path.name)
        engine_ms = (answer.get("timings_ms") or {}).get("total")
        server_ms = answer.get("elapsed_ms")
        out.append({"image": path.name, "status": status, "ms": round(elapsed, 1),
                    "server_ms": server_ms, "engine_ms": engine_ms,
                    "wait_ms": round(server_ms - engine_ms, 1)
                    if server_ms is not None and engine_ms is not None else None,
                    "cached": answer.get("cached")})
    return out


def engine_pass(raw: RawEngine, accounting: Accounting, name: str, images: list[Path]) -> dict:
    a = accounting.snapshot()
    result = raw.run(images, len(images))
    span = Accounting.span(a, accounting.snapshot())
    return {"name": name, "items": len(images), "images_per_s": round(result["images_per_s"], 4),
            "wall_s": round(result["wall_s"], 3), "engine_cpu_s": result["cpu_s"],
            "server_cpu_s": span["server_cpu_s"], "other_cores": span["other_cores"],
            "t0": a["t"]}


def pooled_rate(spans: list[dict]) -> float:
    return sum(s["items"] for s in spans) / sum(s["wall_s"] for s in spans)


def pooled_rate_per_free_core(spans: list[dict]) -> float:
    """Items per core-second left to us: each span's wall times the cores other processes
    did not use. A correction for a shared machine, assuming their use takes ours one for
    one; it does not depend on how the load moved between the spans."""
    cores = os.cpu_count() or 1
    return sum(s["items"] for s in spans) / sum(s["wall_s"] * max(0.05, cores - s["other_cores"])
                                                 for s in spans)


# ----------------------------------------------------------------------------- the run

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 copies, "
                        "6 latency images, an 8-page PDF")
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--replicas", type=int, help="copies of every image in the job "
                        "(default 9: 513 items)")
    parser.add_argument("--engine-passes", type=int, default=3, help="engine passes (one "
                        "copy each) before the job, and as many after (default %(default)s)")
    parser.add_argument("--job-workers", type=int, default=0, help="jobs.max_workers "
                        "(default %(default)s, the server's: all workers but one while "
                        "interactive requests come, every worker after jobs.idle_takeover "
                        "seconds without one; 2: the job may always hold both)")
    parser.add_argument("--latency-images", type=int, help="images of the interactive set "
                        "(default 20)")
    parser.add_argument("--latency-passes", type=int, default=2, help="passes over the set "
                        "while the job runs, and with no job (half before, half after)")
    parser.add_argument("--latency-at-block", type=int, help="the interactive passes start "
                        "when this many copies of the job are done (default: a third)")
    parser.add_argument("--pdf-pages", type=int, help="pages of the PDF (default 50)")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--max-other-cores", type=float, default=0.25, help="a span counts "
                        "as quiet when other processes kept at most this many cores busy")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    quick = args.quick
    args.replicas = args.replicas or (4 if quick else 9)
    args.latency_images = args.latency_images or (6 if quick else 20)
    args.pdf_pages = args.pdf_pages or (8 if quick else 50)
    if args.latency_at_block is None:
        args.latency_at_block = max(1, args.replicas // 3)
    if not 1 <= args.latency_at_block < args.replicas - 1:
        parser.error("--latency-at-block must leave a whole copy after the interactive passes")
    if args.latency_passes < 2 or args.latency_passes % 2:
        parser.error("--latency-passes must be even (the idle passes are half before, half "
                     "after the job)")
    if 2 * args.engine_passes > args.replicas:
        parser.error("--engine-passes: each pass reads its own copy of the job's files")
    return args


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))
    return []


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    results: dict = {"machine": {**machine_info(), "cpu_flags": cpu_flags()},
                     "loadavg_before": [round(v, 2) for v in os.getloadavg()],
                     "command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "args": {k: (str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()}, "targets": TARGETS}
    log(f"load average before: {results['loadavg_before']}")
    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    try:
        run(args, work, results, log)
    except BaseException:
        print(f"benchmark failed; server and runner logs kept in {work}", file=sys.stderr)
        raise
    results["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    text = report(results)
    path = args.out_dir / f"jobs-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
    print(f"\nresults: {path}")
    return 0


def run(args, work: Path, results: dict, log) -> None:
    originals = prepare_images(args.eval_dir, work / "originals")
    shutil.copyfile(RECEIPT, work / "originals" / "docs_samples__receipt.jpg")
    originals = sorted((work / "originals").iterdir())
    log(f"{len(originals)} images; starting the raw engine (2 x 1) and the server (2 x 1, "
        f"jobs.max_workers {args.job_workers})")
    with ExitStack() as stack:
        server = ServerProcess(work, {
            "web_server.request_timeout": 900, "ocr.process.number": 2,
            "ocr.process.threads": 1, "jobs.max_workers": args.job_workers,
            "service.filename_roots": [str(work)], "service.state_dir": str(work / "state"),
        }, name="jobs")
        server.start(ready_timeout=None)  # boots while the raw engine boots
        stack.callback(server.stop)
        raw = RawEngine(2, 1, work / "raw-engine.log")
        stack.callback(raw.close)
        server.wait_ready(600)
        log(f"server ready in {server.ready_s:.1f} s")
        phase = {"name": "boot"}
        sampler = RssSampler(server.pid, 0.5, lambda: {"phase": phase["name"]}).start()
        stack.callback(sampler.stop)
        accounting = Accounting(server, raw)

        # Untimed warm-up of the engine, which also ranks the images by cost.
        warm = raw.run(originals, len(originals))
        cost = {Path(k).name: statistics.median(v) for k, v in warm["per_image_ms"].items()}
        ranked = sorted(originals, key=lambda p: -cost[p.name])
        results["per_image_ms_cold"] = {p.name: round(cost[p.name], 1) for p in ranked}
        log(f"engine warm-up: {warm['images_per_s']:.2f} images/s")

        # The job's copies, the warm-up folder, the latency set, the PDF.
        job_dir, warm_dir = work / "job", work / "warm"
        job_dir.mkdir()
        warm_dir.mkdir()
        blocks: list[list[Path]] = []
        for copy in range(args.replicas):
            block = []
            for rank, path in enumerate(ranked):
                target = job_dir / f"{copy:02d}_{rank:02d}_{path.name}"
                target.write_bytes(with_comment(path.read_bytes(), f"job-{copy}-{path.name}"))
                block.append(target)
            blocks.append(block)
        for rank, path in enumerate(ranked):
            (warm_dir / f"{rank:02d}_{path.name}").write_bytes(path.read_bytes())
        block_size = len(ranked)
        changed = [o.name for p, o in zip(blocks[0], ranked)
                   if not same_pixels(p.read_bytes(), o.read_bytes())]
        if changed:
            raise SystemExit(f"a comment changed the pixels of {changed}")
        step = len(ranked) / args.latency_images  # spread over the cost ranks
        latency_set = [ranked[int(i * step + step / 2)] for i in range(args.latency_images)]
        pdf_images = sorted(originals)[:args.pdf_pages]
        pdf_path = work / "pages.pdf"
        make_pdf(pdf_images, pdf_path)
        results["setup"] = {"images": block_size, "replicas": args.replicas,
                            "job_items": args.replicas * block_size,
                            "latency_set": [p.name for p in latency_set],
                            "pdf_pages": len(pdf_images), "pdf_bytes": pdf_path.stat().st_size}
        log(f"job folder: {args.replicas} copies x {block_size} = "
            f"{args.replicas * block_size} files; PDF {pdf_path.stat().st_size / 2**20:.1f} MiB")

        # Untimed warm-up of the server: a job over the originals.
        phase["name"] = "warm-up"
        t0 = time.monotonic()
        warm_job = submit_job(server, warm_dir)
        wait_for(lambda: server.get_json(f"/jobs/{warm_job}")[1]["status"]
                 not in ("queued", "running"), 900, "the warm-up job did not finish",
                 interval=0.5)
        log(f"server warm-up job: {block_size / (time.monotonic() - t0):.2f} items/s")
        # From here on the poller asks for a job's progress as well: the finished warm-up
        # job's until the job starts, so its cost to the server process is the same throughout.
        poller = Poller(server, accounting, args.poll_interval)
        poller.watch(warm_job)
        poller.start()
        stack.callback(poller.stop)

        # A: interactive latency with no job, then the engine passes.
        half = args.latency_passes // 2
        phase["name"] = "latency-idle"
        passes: list[dict] = []

        def timed_pass(tag: str) -> list[dict]:
            a = accounting.snapshot()
            rows = latency_pass(server, latency_set, tag)
            span = Accounting.span(a, accounting.snapshot())
            ms = [r["ms"] for r in rows]
            passes.append({"pass": tag, "wall_s": span["wall_s"], "p50_ms": round(pct(ms, 50), 1),
                           "p95_ms": round(pct(ms, 95), 1), "other_cores": span["other_cores"]})
            return rows

        idle = [r for n in range(half) for r in timed_pass(f"idle-{n}")]
        log(f"no job: interactive p95 {pct([r['ms'] for r in idle], 95):.0f} ms")
        phase["name"] = "engine"
        engine = []
        for n in range(args.engine_passes):
            engine.append(engine_pass(raw, accounting, f"E1.{n + 1}", blocks[n]))
            log(f"engine {engine[-1]['name']}: {engine[-1]['images_per_s']:.3f} images/s, "
                f"other processes {engine[-1]['other_cores']:.2f} cores")

        # B: the job, with the interactive passes inside it.
        phase["name"] = "job"
        job_started = time.monotonic()
        job_id = submit_job(server, job_dir)
        poller.watch(job_id)
        b1 = args.latency_at_block * block_size
        wait_for(lambda: poller.latest().get("done", 0) >= b1, 900,
                 "the job did not reach the interactive window", interval=0.1)
        busy_started = time.monotonic()
        log(f"job: {poller.latest()['done']} items done; interactive passes start")
        busy = [r for n in range(args.latency_passes)
                for r in timed_pass(f"busy-{n}")]
        busy_ended = time.monotonic()
        log(f"during the job: interactive p95 {pct([r['ms'] for r in busy], 95):.0f} ms")
        wait_for(lambda: poller.latest().get("status") in ("done", "failed", "cancelled"),
                 1800, "the job did not finish", interval=0.2)
        _, job = server.get_json(f"/jobs/{job_id}")
        log(f"job {job['status']}: {job['done']} done, {job['failed']} failed, "
            f"{job['cached']} cached, {time.monotonic() - job_started:.0f} s")

        # A: the engine passes again, then interactive latency with no job.
        phase["name"] = "engine"
        for n in range(args.engine_passes):
            engine.append(engine_pass(raw, accounting, f"E2.{n + 1}",
                                      blocks[args.replicas - args.engine_passes + n]))
            log(f"engine {engine[-1]['name']}: {engine[-1]['images_per_s']:.3f} images/s, "
                f"other processes {engine[-1]['other_cores']:.2f} cores")
        phase["name"] = "latency-idle"
        idle += [r for n in range(half, args.latency_passes)
                 for r in timed_pass(f"idle-{n}")]

        # The PDF.
        phase["name"] = "pdf"
        sampler.take()
        a = accounting.snapshot()
        status, answer, pdf_ms = ocr_upload(server, pdf_path.read_bytes(), "pages.pdf")
        pdf_acc = Accounting.span(a, accounting.snapshot())
        sampler.take()
        phase["name"] = "end"
        if status != 200:
            raise RuntimeError(f"the PDF request answered {status}: {str(answer)[:300]}")
        log(f"PDF: {answer.get('page_count')} pages in {pdf_ms / 1000:.1f} s")
        pdf_engine = engine_pass(raw, accounting, "PDF images", pdf_images)
        log(f"engine on the PDF's images: {pdf_engine['images_per_s']:.3f} images/s")
        poller.stop()
        sampler.stop()
        results["server_exit_code"] = server.stop()

    results["engine_passes"] = engine
    results["job"] = job_figures(job, poller, block_size, job_started, busy_started,
                                 busy_ended, engine, args)
    results["poll_errors"] = poller.errors[-5:]
    results["latency"] = {**latency_figures(idle, busy), "passes": passes}
    pages = answer.get("page_count") or len(answer.get("pages", []))
    results["pdf"] = {
        "pages": pages, "wall_s": round(pdf_ms / 1000, 3),
        "pages_per_s": round(pages / (pdf_ms / 1000), 4),
        "engine_images_per_s": pdf_engine["images_per_s"],
        "engine_pass": pdf_engine,
        "ratio_to_engine": round(pages / (pdf_ms / 1000) / pdf_engine["images_per_s"], 4),
        "cpu": pdf_acc, "rss": rss_peaks(sampler.samples)}
    results["rss_peaks"] = rss_peaks(sampler.samples, by_phase=False)


def job_figures(job: dict, poller: Poller, block_size: int, job_started: float,
                busy_started: float, busy_ended: float, engine: list[dict], args) -> dict:
    """The job's copies as spans (the first from the POST), those that overlap the
    interactive passes set apart, against the engine passes: plain, and quiet spans only."""
    total = job["total"]
    bounds = [job_started] + [poller.time_at(k * block_size)
                              for k in range(1, total // block_size + 1)]
    blocks = []
    for k in range(len(bounds) - 1):
        t0, t1 = bounds[k], bounds[k + 1]
        span = poller.span(t0, t1)
        blocks.append({"block": k, "items": block_size, "t0": round(t0 - job_started, 2),
                       "items_per_s": round(block_size / (t1 - t0), 4),
                       "interactive": t1 > busy_started and t0 < busy_ended, **span})
    clean = [b for b in blocks if not b["interactive"]]
    quiet_blocks = [b for b in clean if b["other_cores"] <= args.max_other_cores]
    quiet_engine = [e for e in engine if e["other_cores"] <= args.max_other_cores]
    engine_rate, job_rate = pooled_rate(engine), pooled_rate(clean)
    # The server process's CPU with no job running is the poller's requests (and idle
    # timers): measured over the engine passes, then taken off the job's.
    poll_rate = sum(e["server_cpu_s"] for e in engine) / sum(e["wall_s"] for e in engine)
    clean_wall = sum(b["wall_s"] for b in clean)
    clean_items = sum(b["items"] for b in clean)
    server_cpu = sum(b["server_cpu_s"] for b in clean)
    workers_cpu = sum(b["workers_cpu_s"] for b in clean)
    engine_cpu = sum(e["engine_cpu_s"] for e in engine) / sum(e["items"] for e in engine)
    busy_mean = sum(b.get("mean_busy_workers", 2) * b["wall_s"] for b in clean) / clean_wall
    out = {
        "id": job.get("id"), "status": job["status"], "total": total, "done": job["done"],
        "failed": job["failed"], "cached": job["cached"],
        "wall_s": round(poller.time_at(total) - job_started, 2),
        "items_per_s_whole": round(total / (poller.time_at(total) - job_started), 4),
        "blocks": blocks, "clean_blocks": len(clean), "quiet_blocks": len(quiet_blocks),
        "quiet_engine_passes": len(quiet_engine),
        "items_per_s": round(job_rate, 4), "engine_images_per_s": round(engine_rate, 4),
        "efficiency": round(job_rate / engine_rate, 4),
        "efficiency_per_free_core": round(pooled_rate_per_free_core(clean)
                                          / pooled_rate_per_free_core(engine), 4),
        "efficiency_whole_job": round(total / (poller.time_at(total) - job_started)
                                      / engine_rate, 4),
        "cpu_s_per_item_workers": round(workers_cpu / clean_items, 4),
        "cpu_s_per_image_engine": round(engine_cpu, 4),
        "cpu_efficiency": round(engine_cpu / ((workers_cpu + server_cpu) / clean_items), 4),
        "server_cpu_ms_per_item": round(1000 * server_cpu / clean_items, 2),
        "server_cpu_ms_per_item_without_polling": round(
            1000 * (server_cpu - poll_rate * clean_wall) / clean_items, 2),
        "polling_server_cpu_cores": round(poll_rate, 4),
        "mean_busy_workers": round(busy_mean, 3),
        "idle_worker_ms_per_item": round(1000 * (2 - busy_mean) * clean_wall / clean_items, 1),
        "other_cores": round(sum(b["other_cpu_s"] for b in clean) / clean_wall, 3)}
    if len(quiet_blocks) >= 2 and len(quiet_engine) >= 2:
        out["quiet"] = {"items_per_s": round(pooled_rate(quiet_blocks), 4),
                        "engine_images_per_s": round(pooled_rate(quiet_engine), 4),
                        "efficiency": round(pooled_rate(quiet_blocks)
                                            / pooled_rate(quiet_engine), 4)}
    return out


def latency_figures(idle: list[dict], busy: list[dict]) -> dict:
    idle_ms, busy_ms = [r["ms"] for r in idle], [r["ms"] for r in busy]
    by_image: dict[str, list[float]] = {}
    for r in idle:
        by_image.setdefault(r["image"], []).append(r["ms"])
    added = [r["ms"] - statistics.median(by_image[r["image"]]) for r in busy]

    def part(rows: list[dict], key: str) -> dict:
        values = [r[key] for r in rows if r[key] is not None]
        return summary_ms(values) if values else {}

    return {"idle": summary_ms(idle_ms), "busy": summary_ms(busy_ms),
            "p95_ratio": round(pct(busy_ms, 95) / pct(idle_ms, 95), 3),
            "p50_ratio": round(pct(busy_ms, 50) / pct(idle_ms, 50), 3),
            "added_ms": summary_ms(added),
            "wait_ms": {"idle": part(idle, "wait_ms"), "busy": part(busy, "wait_ms")},
            "engine_ms": {"idle": part(idle, "engine_ms"), "busy": part(busy, "engine_ms")},
            "errors": sum(r["status"] != 200 for r in idle + busy),
            "cached": sum(bool(r["cached"]) for r in idle + busy),
            "requests": {"idle": idle, "busy": busy}}


def submit_job(server: ServerProcess, directory: Path) -> str:
    body = json.dumps({"directory": str(directory)}).encode()
    status, _, answer = request(server.port, "POST", "/jobs", body,
                                {**server.headers, "Content-Type": "application/json"}, 60)
    if status not in (200, 201):
        raise RuntimeError(f"POST /jobs answered {status}: {answer[:300]!r}")
    return json.loads(answer)["id"]


def rss_peaks(samples: list[dict], by_phase: bool = True) -> list[dict]:
    """Peak RSS (MiB) of each process: over the PDF phase, or over the whole run."""
    chosen = [s for s in samples if s.get("phase") == "pdf"] if by_phase else samples
    peaks: dict[int, tuple[str, int]] = {}
    for sample in chosen:
        for pid, (role, rss) in sample["rss"].items():
            if role == "other":
                continue
            if rss > peaks.get(pid, (role, 0))[1]:
                peaks[pid] = (role, rss)
    return [{"process": role, "pid": pid, "peak_mib": round(rss / 2**20, 1)}
            for pid, (role, rss) in sorted(peaks.items(),
                                           key=lambda kv: (kv[1][0] != "server", kv[0]))]


# ----------------------------------------------------------------------------- the report

def report(results: dict) -> str:
    m, job, lat, pdf = results["machine"], results["job"], results["latency"], results["pdf"]
    targets = results["targets"]
    flags = ", ".join(m["cpu_flags"]) or "no avx2/avx512/amx"
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({flags}), {m['ram_gib']} GiB; Python "
             f"{m['python']}, onnxruntime {m.get('onnxruntime')}.",
             f"Load average before/after: {results['loadavg_before']} / "
             f"{results['loadavg_after']}; {results['elapsed_s'] / 60:.1f} min.", ""]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    quiet = job.get("quiet")
    headline = quiet or job
    eff, ratio = headline["efficiency"], lat["p95_ratio"]
    lines += [
        "| measure | figure | target | verdict |", "|---|---|---|---|",
        f"| job items/s / engine images/s ({'quiet' if quiet else 'all'} spans) | "
        f"{headline['items_per_s']:.3f} / {headline['engine_images_per_s']:.3f} = "
        f"**{eff:.3f}** | >= {targets['efficiency']} | "
        f"{verdict(eff >= targets['efficiency'])} |",
        f"| same, every copy outside the interactive passes | {job['items_per_s']:.3f} / "
        f"{job['engine_images_per_s']:.3f} = {job['efficiency']:.3f} | - | - |",
        f"| same, per core left free by other processes (items / (wall x (cores - other)))"
        f" | {job['efficiency_per_free_core']:.3f} | - | - |",
        f"| whole job, POST to finished (interactive passes included) | "
        f"{job['items_per_s_whole']:.3f} / {job['engine_images_per_s']:.3f} = "
        f"{job['efficiency_whole_job']:.3f} | - | - |",
        f"| CPU efficiency: engine CPU s per image / (workers + server process) per item | "
        f"{job['cpu_s_per_image_engine']:.3f} / ({job['cpu_s_per_item_workers']:.3f} + "
        f"{job['server_cpu_ms_per_item'] / 1000:.4f}) = {job['cpu_efficiency']:.3f} | - | - |",
        f"| interactive p95, during the job / no job | {lat['busy']['p95']:.0f} / "
        f"{lat['idle']['p95']:.0f} ms = **{ratio:.2f}x** | <= "
        f"{targets['latency_p95_ratio']}x | {verdict(ratio <= targets['latency_p95_ratio'])} |",
        f"| PDF, {pdf['pages']} pages, one blocking request: pages/s / engine images/s on "
        f"the same images | {pdf['pages_per_s']:.3f} ({pdf['wall_s']:.1f} s) / "
        f"{pdf['engine_images_per_s']:.3f} = {pdf['ratio_to_engine']:.3f} | - | - |", ""]
    lines += ["| span | items | wall s | items/s | busy workers (mean) | share of samples "
              "< 2 busy | other processes, cores |", "|---|---|---|---|---|---|---|"]
    engine = results["engine_passes"]
    half = len(engine) // 2
    for e in engine[:half]:
        lines.append(f"| engine {e['name']} | {e['items']} | {e['wall_s']:.1f} | "
                     f"{e['images_per_s']:.3f} | 2 | - | {e['other_cores']:.2f} |")
    for b in job["blocks"]:
        name = f"job copy {b['block']}" + (" (interactive passes)" if b["interactive"] else "")
        lines.append(f"| {name} | {b['items']} | {b['wall_s']:.1f} | {b['items_per_s']:.3f} | "
                     f"{b.get('mean_busy_workers', '-')} | {b.get('share_below_2_busy', '-')} "
                     f"| {b['other_cores']:.2f} |")
    for e in engine[half:]:
        lines.append(f"| engine {e['name']} | {e['items']} | {e['wall_s']:.1f} | "
                     f"{e['images_per_s']:.3f} | 2 | - | {e['other_cores']:.2f} |")
    lines += ["", f"Job: {job['total']} items, {job['done']} done, {job['failed']} failed, "
              f"{job['cached']} cached, {job['wall_s']:.0f} s. Outside the interactive passes: "
              f"{job['mean_busy_workers']:.3f} workers busy on average, "
              f"{job['idle_worker_ms_per_item']:.0f} ms of idle worker per item; the server "
              f"process {job['server_cpu_ms_per_item']:.1f} ms CPU per item "
              f"({job['server_cpu_ms_per_item_without_polling']:.1f} ms without the "
              f"benchmark's polling); other processes {job['other_cores']:.2f} cores.", ""]
    lines += ["| interactive, 1 client | n | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
    for name, s in (("no job running: latency", lat["idle"]),
                    ("during the job: latency", lat["busy"]),
                    ("  added (vs the same image, no job)", lat["added_ms"]),
                    ("no job: wait in the server (elapsed - engine)", lat["wait_ms"]["idle"]),
                    ("during the job: wait in the server", lat["wait_ms"]["busy"]),
                    ("no job: engine time in the worker", lat["engine_ms"]["idle"]),
                    ("during the job: engine time", lat["engine_ms"]["busy"])):
        if s:
            lines.append(f"| {name} | {s['n']} | {s['p50']:.0f} | {s['p95']:.0f} | "
                         f"{s['max']:.0f} |")
    lines += ["", f"Interactive: {lat['errors']} errors, {lat['cached']} cached. Passes: "
              + "; ".join(f"{p['pass']} p50 {p['p50_ms']:.0f} / p95 {p['p95_ms']:.0f} ms, "
                          f"other processes {p['other_cores']:.2f} cores"
                          for p in lat["passes"]) + ".", ""]
    cpu = pdf["cpu"]
    lines += [f"PDF CPU: workers {cpu['workers_cpu_s']:.2f} s, their pdfium children "
              f"{cpu['renderers_cpu_s']:.2f} s, server process {cpu['server_cpu_s']:.2f} s "
              f"({pdf['pages']} pages); engine on the same images "
              f"{pdf['engine_pass']['engine_cpu_s']:.2f} s; other processes "
              f"{cpu['other_cores']:.2f} cores.", ""]
    lines += ["| process | peak RSS during the PDF, MiB | peak over the run, MiB |",
              "|---|---|---|"]
    run_peaks = {r["pid"]: r["peak_mib"] for r in results["rss_peaks"]}
    for r in pdf["rss"]:
        lines.append(f"| {r['process']} {r['pid']} | {r['peak_mib']:.0f} | "
                     f"{run_peaks.get(r['pid'], 0):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
