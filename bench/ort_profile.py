"""Where an onnxruntime model spends its time, by operator type, on the benchmark page.

Runs our detector on bench/data/doc_1000x700_15lines.png, takes the recogniser's batches from
the engine itself (6 crops sorted by aspect ratio, padded to the widest), then runs
the chosen model file under onnxruntime's profiler and prints each operator type's share of
kernel time. Compare the wheel's file with the fused one `models fetch` installs:

    .venv/bin/python bench/ort_profile.py                       # rec.onnx vs rec.fused.onnx
    .venv/bin/python bench/ort_profile.py --stage det --threads 1
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ocr_engine import (  # noqa: E402
    EngineConfig,
    OcrEngine,
    OcrOptions,
    resolve_model_set,
    setup_process,
)

PAGE = ROOT / "bench" / "data" / "doc_1000x700_15lines.png"


def inputs_for(stage: str, engine: OcrEngine, page: np.ndarray) -> list[np.ndarray]:
    """The tensors the engine's own stages give the model for `page`."""
    if stage == "det":
        return [engine.detector.preprocess(page, OcrOptions()).tensor]
    lines = engine.text_lines(page, OcrOptions())
    return [batch.tensor for batch in engine.recognizer.batches(lines.crops)]


def profile(path: Path, batches: list[np.ndarray], threads: int, rounds: int) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if threads > 1 else "0")
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(1 + rounds):  # the first round warms up and is not counted
            for batch in batches:
                session.run(None, {name: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
    warm_end = runs[len(batches) - 1]
    totals: collections.Counter = collections.Counter()
    for event in events:
        if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                and event["ts"] > warm_end):
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: us / rounds / 1000 for op, us in totals.most_common()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("det", "rec"), default="rec")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    # This profiles onnxruntime's sessions directly, so its backend is fixed, not a choice.
    setup_process("onnxruntime", args.threads)
    paths = resolve_model_set("ppocr-v4", "onnxruntime")
    engine = OcrEngine(EngineConfig(paths, threads=args.threads))
    page = cv2.imread(str(PAGE))
    batches = inputs_for(args.stage, engine, page)
    fused = getattr(paths, args.stage)
    wheel = getattr(resolve_model_set("ppocr-v4", "onnxruntime", derived_files=False), args.stage)
    print(f"{args.stage} on {PAGE.name}: {len(batches)} run(s) of shapes "
          f"{[list(b.shape) for b in batches]}, {args.threads} thread(s), "
          f"mean of {args.rounds} rounds\n")
    for path in (wheel, fused):
        shares = profile(path, batches, args.threads, args.rounds)
        total = sum(shares.values())
        print(f"{path.name}: {total:.0f} ms of kernel time per round")
        print("| op | ms | share |\n|---|---|---|")
        for op, ms in list(shares.items())[:args.top]:
            print(f"| {op} | {ms:.1f} | {100 * ms / total:.1f}% |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
