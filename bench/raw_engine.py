"""The raw engine side of bench/server.py's saturation test: N engine processes that pull image
paths from one queue, as the server's workers pull jobs, and report when each image started and
ended.

    python bench/raw_engine.py --processes N --threads T [--models-dir DIR]

Commands (JSON lines) come on stdin; answers go to stdout behind PROTOCOL. `RawEngine` is the
benchmark's handle on such a runner.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/: bench/server.py would shadow the server package

from server.testing import busy_cpu_seconds, cpu_seconds  # noqa: E402

PROTOCOL = "@@bench "  # prefix of the runner's messages on its stdout


def engine_process(threads: int, models_dir: str, tasks, results) -> None:
    import queue

    from ocr_engine import EngineConfig, OcrEngine, resolve_model_set, setup_process

    setup_process("onnxruntime", threads)  # as a server worker's bootstrap does

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
    """The benchmark's handle on a raw-engine runner subprocess."""

    def __init__(self, processes: int, threads: int, log_path: Path) -> None:
        self.processes, self.threads = processes, threads
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--processes", str(processes),
             "--threads", str(threads), "--models-dir", str(ROOT / "models")],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True)
        self.engines = [psutil.Process(pid) for pid in self._read()["pids"]]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        raise RuntimeError(f"raw-engine runner exited ({self.proc.wait()}); see {self._log.name}")

    def run(self, images: list[Path], count: int) -> dict:
        """One pass of `count` images; adds the engine processes' CPU seconds and the CPU
        seconds the rest of the machine used meanwhile (other_cpu_s)."""
        busy_before, cpu_before = busy_cpu_seconds(), cpu_seconds(self.engines)
        self.proc.stdin.write(json.dumps({"cmd": "run", "images": [str(p) for p in images],
                                          "count": count}) + "\n")
        self.proc.stdin.flush()
        result = self._read()
        cpu = cpu_seconds(self.engines) - cpu_before
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    args = parser.parse_args(argv)
    return run_raw_engine(args.processes, args.threads, args.models_dir)


if __name__ == "__main__":
    sys.exit(main())
