"""The measurements behind the openvino backend's settings (docs/BENCHMARKS.md, "OpenVINO,
precision and auto backend"), one subcommand each; every comparison runs side by side in one
process, interleaved, so a change in the machine's load hits each variant alike.

    .venv/bin/python bench/openvino_checks.py graphs        # wheel vs fused graphs, f32 vs bf16
    .venv/bin/python bench/openvino_checks.py cache-rss det 120 0   # RSS over new shapes,
                                     # runtime cache capacity 0 (or default, or a number)
    .venv/bin/python bench/openvino_checks.py eval-text openvino det=bf16,cls=f32,rec=f32 none
    .venv/bin/python bench/openvino_checks.py eval-text openvino f32 default det
                                     # eval-set text vs PaddleOCR's: precision per stage, and
                                     # bucket padding (none | default | DET/REC ladders) on
                                     # det, rec or both
    .venv/bin/python bench/openvino_checks.py cls-margin   # the classifier in f32 vs bf16

graphs: per stage (det 1x3x704x992, rec 6x3x48x640), 2 threads, 7 rounds, medians as ratios to
onnxruntime on the fused graph. cache-rss: one compiled model reading `count` random shapes
(det: multiples of 32 up to 960 a side; rec: 1-6 rows, 320-1600 columns), RSS at each quarter.
eval-text: every conforming case of ../shared/eval (tests/data/paddleocr_reference.json),
which ones read differently from PaddleOCR. cls-margin: every eval image's detected lines
through the classifier in f32 and in bf16 (squeezed and windowed), how far bf16 moves P(180),
the lines whose turn it flips, and the classifier's time over all lines in each precision.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ocr_engine import EngineConfig, OcrEngine, OcrOptions, resolve_model_set, setup_process  # noqa: E402
from ocr_engine.backends import OnnxSession, OpenVinoSession, StagePrecision  # noqa: E402
from ocr_engine.buckets import ShapeBuckets  # noqa: E402

ONNX = ROOT / "models" / "ppocr-v4" / "onnx"
EVAL = ROOT.parent / "shared" / "eval"
REFERENCE = ROOT / "tests" / "data" / "paddleocr_reference.json"
# The reference cases our engine reads differently on purpose (decoding; test_conformance).
DEVIATIONS = {"rapidocr/test_files/img_exif_orientation.jpg",
              "rapidocr/test_files/text_cls_pre2025-10.jpg",
              "rapidocr/test_files/white_font_color_transparent.png"}


def graphs() -> None:
    rng = np.random.default_rng(0)
    inputs = {"det": rng.uniform(-1, 1, (1, 3, 704, 992)).astype(np.float32),
              "rec": rng.uniform(-1, 1, (6, 3, 48, 640)).astype(np.float32)}
    sessions = {}
    for stage in inputs:
        wheel, fused = ONNX / f"{stage}.onnx", ONNX / f"{stage}.fused.onnx"
        sessions[stage] = {"onnxruntime fused": OnnxSession(fused, 2),
                           "onnxruntime wheel": OnnxSession(wheel, 2),
                           "openvino f32 wheel": OpenVinoSession(wheel, 2, "f32"),
                           "openvino f32 fused": OpenVinoSession(fused, 2, "f32"),
                           "openvino bf16 wheel": OpenVinoSession(wheel, 2, "bf16")}
    for stage, variants in sessions.items():
        for session in variants.values():
            session.run(inputs[stage])
            session.run(inputs[stage])
    samples = {(stage, name): [] for stage, variants in sessions.items() for name in variants}
    for _ in range(7):
        for stage, variants in sessions.items():
            for name, session in variants.items():
                start = time.perf_counter()
                session.run(inputs[stage])
                samples[stage, name].append((time.perf_counter() - start) * 1000)
    for stage, variants in sessions.items():
        base = statistics.median(samples[stage, "onnxruntime fused"])
        print(stage, " | ".join(f"{name} {statistics.median(samples[stage, name]):.0f} ms "
                                f"({statistics.median(samples[stage, name]) / base:.2f}x)"
                                for name in variants))


def cache_rss(model: str, count: int, capacity: str) -> None:
    import psutil

    cache = 5000 if capacity == "default" else int(capacity)  # 5000: the plugin's default
    session = OpenVinoSession(ONNX / f"{model}.onnx", 2, "f32", runtime_cache=cache)
    rng = np.random.default_rng(0)
    process, rss = psutil.Process(), []
    started = time.perf_counter()
    for index in range(count):
        if model == "det":
            shape = (1, 3, 32 * int(rng.integers(4, 31)), 32 * int(rng.integers(4, 31)))
        else:
            shape = (int(rng.integers(1, 7)), 3, 48, int(rng.integers(320, 1600)))
        session.run(rng.standard_normal(shape, np.float32))
        if (index + 1) % max(1, count // 4) == 0:
            rss.append(process.memory_info().rss >> 20)
    print(f"{model} runtime cache {capacity}: RSS MB at each quarter {rss}, "
          f"{time.perf_counter() - started:.1f} s")


def eval_text(backend: str, precision: str, buckets: str, where: str = "both") -> None:
    setup_process(backend, 2)
    engine = OcrEngine(EngineConfig(resolve_model_set("ppocr-v4", backend), threads=2,
                                    precision=StagePrecision.parse(precision)))
    if buckets != "none":
        rule = ShapeBuckets() if buckets == "default" else ShapeBuckets(
            *(tuple(tuple(int(v) for v in rung.split(":")) for rung in ladder.split(","))
              for ladder in buckets.split("/")))
        # What Backend.bounded_shapes would turn on, here on one stage or both.
        engine.detector.preprocess.buckets = rule if where in ("both", "det") else None
        engine.recognizer.buckets = rule if where in ("both", "rec") else None
    recognition_only = OcrOptions(use_det=False, use_angle_cls=False, drop_score=0.0)
    differing = []
    cases = json.loads(REFERENCE.read_text(encoding="utf-8"))["cases"]
    for case in cases:
        if case["image"] in DEVIATIONS:
            continue
        options = recognition_only if case["mode"] == "rec" else None
        result = engine.ocr((EVAL / case["image"]).read_bytes(), options)
        if [line.text for line in result.lines] != [line["text"] for line in case["lines"]]:
            differing.append(case["image"])
    print(json.dumps({"backend": backend, "precision": precision, "buckets": buckets,
                      "on": where, "cases": len(cases) - len(DEVIATIONS),
                      "differing": len(differing), "differing_cases": differing}))


def _p180(reading) -> float:
    """The classifier's probability that the line is upside down, whichever label it gave."""
    return reading.score if reading.label == "180" else 1 - reading.score


def cls_margin() -> None:
    from ocr_engine.image import decode_image

    setup_process("openvino", 2)
    engines = {precision: OcrEngine(EngineConfig(
        resolve_model_set("ppocr-v4", "openvino"), threads=2,
        precision=StagePrecision.parse(precision)))
        for precision in ("f32", "det=f32,cls=bf16,rec=f32")}
    f32 = engines["f32"]
    options = f32.config.defaults
    images = [path for path in sorted(EVAL.rglob("*"))
              if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")]
    lines, moved, flips = [], [], []
    for path in images:
        try:
            crops = f32.text_lines(decode_image(path.read_bytes()), options).crops
        except Exception:  # noqa: BLE001 (an eval image this engine refuses: not a line)
            continue
        if len(crops):
            lines.append((path.relative_to(EVAL), crops))
    elapsed = {name: 0.0 for name in engines}
    for windows in (False, True):
        for name_of_image, crops in lines:
            readings = {}
            for name, engine in engines.items():
                start = time.perf_counter()
                readings[name] = engine.classifier(crops, options.cls_thresh, windows=windows)
                elapsed[name] += time.perf_counter() - start
            for index, (a, b) in enumerate(zip(*readings.values())):
                p_a, p_b = _p180(a), _p180(b)
                moved.append(abs(p_a - p_b))
                if a.turned != b.turned:
                    flips.append(f"{name_of_image}, {'windowed' if windows else 'squeezed'} "
                                 f"line {index}: P(180) f32 {p_a:.3f}, bf16 {p_b:.3f}")
    quantiles = np.quantile(moved, [0.5, 0.9, 0.99, 1.0])
    print(f"{len(images)} images, {len(moved)} line readings; bf16 moves P(180) by (median, "
          f"90%, 99%, max) {', '.join(f'{q:.4f}' for q in quantiles)}; turn flipped: "
          f"{len(flips)}")
    for flip in flips:
        print("  ", flip)
    print("classifier time over all readings: " + ", ".join(
        f"{name} {seconds * 1000:.0f} ms" for name, seconds in elapsed.items()))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("graphs", "cache-rss", "eval-text", "cls-margin"):
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command == "graphs":
        graphs()
    elif command == "cache-rss":
        cache_rss(args[0], int(args[1]), args[2])
    elif command == "cls-margin":
        cls_margin()
    else:
        eval_text(*args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
