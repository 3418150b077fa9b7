"""Licence plates: greedy vs the plate decoder on the 200 eval crops, and the plate mode on
synthetic scenes (crops pasted into larger images), printed as markdown tables.

    .venv/bin/python bench/plates.py [--threads 1] [--scenes-every 10] [--repeat 3]

1. Crops: the recogniser runs once per crop; both decoders then decode the same
   probabilities, interleaved crop by crop, `--repeat` times, so the ms per crop compare the
   decoders alone under the same load (the model's time is printed beside them). Exact match
   counts greedy's reading with '·' removed, the plate decoder's as it is.
2. Scenes: every `--scenes-every`-th crop pasted into 640x480 and 1280x960 backgrounds at
   1x, 1.5x, 2x and 3x its size with a small rotation and two lines of other text beside it,
   read through `OcrOptions(text_grammar="plate")` (detection path); a scene counts as found
   when some line reads the plate exactly and as clean when no other line is returned. The
   same scenes are also read, interleaved scene by scene, with the plate study's detection
   settings (min/736, dilation, unclip 1.5) and with the page defaults (max/960, no
   dilation, unclip 1.5) in place of plate mode's, to show what its settings buy.

`plate_scene` is also what tests/test_plates.py builds its scenes with.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

PLATES_DIR = ROOT.parent / "shared" / "eval" / "plates"
SCENE_SIZES = ((640, 480), (1280, 960))  # (width, height)
SCENE_SCALES = (1.0, 1.5, 2.0, 3.0)  # plate size over the crop's own (94 x 24)
# Lines of text beside the plate that plate mode must drop (the second all digits).
DISTRACTORS = ("OPEN 24H", "TEL 0551 6234 5678")
JPEG_QUALITY = 85


def read_labels(plates_dir: Path = PLATES_DIR) -> dict[str, str]:
    with open(plates_dir / "labels.tsv", encoding="utf-8", newline="") as handle:
        return {row["file"]: row["plate"] for row in csv.DictReader(handle, delimiter="\t")}


def plate_scene(plate: np.ndarray, size: tuple[int, int], scale: float, seed: int
                ) -> np.ndarray:
    """`plate` (a BGR crop) `scale` times its size, turned by a small angle (-5..5 degrees
    from `seed`), pasted at a random place of a `size` (width, height) background: a colour
    gradient with blurred noise and a few dark boxes, and DISTRACTORS in white Hershey
    letters, lines the plate mode must drop; then a JPEG round trip at JPEG_QUALITY, as a
    camera's photo has had. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    start, end = rng.uniform(30, 200, 3), rng.uniform(30, 200, 3)
    ramp = (xs / width * 0.6 + ys / height * 0.4)[..., None]
    scene = start + (end - start) * ramp
    noise = rng.normal(0, 25, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    scene += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(4):
        x, y = int(rng.uniform(0, width * 0.8)), int(rng.uniform(0, height * 0.8))
        w, h = int(rng.uniform(0.05, 0.25) * width), int(rng.uniform(0.03, 0.15) * height)
        scene[y:y + h, x:x + w] *= 0.4
    scene = np.clip(scene, 0, 255).astype(np.uint8)
    resized = cv2.resize(plate, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    angle = float(rng.uniform(-5, 5))
    ph, pw = resized.shape[:2]
    turn = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
    bound_w = int(pw * abs(turn[0, 0]) + ph * abs(turn[0, 1])) + 2
    bound_h = int(pw * abs(turn[0, 1]) + ph * abs(turn[0, 0])) + 2
    turn[:, 2] += (bound_w - pw) / 2, (bound_h - ph) / 2
    turned = cv2.warpAffine(resized, turn, (bound_w, bound_h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full((ph, pw), 255, np.uint8), turn, (bound_w, bound_h)) > 127
    # The plate in the lower two thirds (where a car's plate is), the text above it.
    x = int(rng.uniform(0.05, 0.95) * (width - bound_w))
    y = int(rng.uniform(0.35, 0.95) * (height - bound_h))
    region = scene[y:y + bound_h, x:x + bound_w]
    region[mask] = turned[mask]
    text_scale = height / 480
    for row, text in enumerate(DISTRACTORS):
        cv2.putText(scene, text, (int(width * 0.08), int(height * (0.12 + 0.1 * row))),
                    cv2.FONT_HERSHEY_SIMPLEX, 1.2 * text_scale, (255, 255, 255),
                    max(2, int(3 * text_scale)), cv2.LINE_AA)
    encoded = cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


def scene_cases(labels: dict[str, str], every: int) -> list[tuple[str, tuple[int, int], float,
                                                                   int]]:
    """(crop file, scene size, scale, seed) for every `every`-th crop in file order."""
    cases = []
    for number, name in enumerate(sorted(labels)[::every]):
        for size in SCENE_SIZES:
            for scale in SCENE_SCALES:
                cases.append((name, size, scale, number * 100 + len(cases)))
    return cases


def crops_table(engine, labels: dict[str, str], repeat: int) -> tuple[str, list[str]]:
    from ocr_engine.image import decode_image
    from ocr_engine.rec import CtcGreedyDecoder

    greedy, plate = CtcGreedyDecoder(engine.charset), engine.plate_decoder
    recogniser = engine.recognizer
    probs, model_ms = {}, []
    for name in sorted(labels):
        image = decode_image((PLATES_DIR / "images" / name).read_bytes())
        start = time.perf_counter()
        for batch in recogniser.batches([image]):
            probs[name] = recogniser.session.run(batch.tensor)
        model_ms.append((time.perf_counter() - start) * 1000)
    times = {"greedy": [], "plate": []}
    reads: dict[str, dict[str, str]] = {"greedy": {}, "plate": {}}
    for _ in range(repeat):
        for name in sorted(labels):
            for label, decoder in (("greedy", greedy), ("plate", plate)):
                start = time.perf_counter()
                text = decoder(probs[name])[0].text
                times[label].append((time.perf_counter() - start) * 1000)
                reads[label][name] = text.replace("·", "")
    rows = ["| decoder | exact (of 200) | ms per crop, decoding (mean / p95) |",
            "|---|---|---|"]
    for label in ("greedy", "plate"):
        exact = sum(reads[label][name] == plate_text for name, plate_text in labels.items())
        rows.append(f"| {label} | {exact} | {np.mean(times[label]):.2f} / "
                    f"{np.percentile(times[label], 95):.2f} |")
    rows.append(f"| (the recogniser's run, per crop) | | {np.mean(model_ms):.1f} / "
                f"{np.percentile(model_ms, 95):.1f} |")
    misses = [f"| {name} | {labels[name]} | {reads['greedy'][name] or '(none)'} | "
              f"{reads['plate'][name] or '(none)'} |" for name in sorted(labels)
              if reads["plate"][name] != labels[name] or reads["greedy"][name] != labels[name]]
    confusion = ["| crop | label | greedy read | plate decoder read |", "|---|---|---|---|",
                 *misses]
    return "\n".join(rows), confusion


def scenes_table(engine, labels: dict[str, str], every: int) -> tuple[str, list[str]]:
    from ocr_engine import OcrOptions
    from ocr_engine.image import decode_image

    plate_mode = OcrOptions(text_grammar="plate")
    page = OcrOptions()
    # Detection options over what plate mode reads a photo with; None: plate mode itself.
    variants = {
        "plate mode": None,
        "min/736, dilation, unclip 1.5 (the study's)": {
            "det_limit_type": "min", "det_limit_side_len": 736, "use_dilation": True,
            "det_db_unclip_ratio": page.det_db_unclip_ratio},
        "page defaults (max/960, unclip 1.5)": {
            "det_limit_type": page.det_limit_type, "det_limit_side_len": page.det_limit_side_len,
            "use_dilation": page.use_dilation, "det_db_unclip_ratio": page.det_db_unclip_ratio},
    }
    counts: dict[tuple, list] = {}
    misses = []
    for name, size, scale, seed in scene_cases(labels, every):
        crop = decode_image((PLATES_DIR / "images" / name).read_bytes())
        scene = plate_scene(crop, size, scale, seed)
        for variant, detection in variants.items():
            result = _read_scene(engine, scene, plate_mode, detection)
            texts = [line.text for line in result.lines]
            found = labels[name] in texts
            clean = all(text == labels[name] for text in texts)
            tally = counts.setdefault((variant, size, scale), [0, 0, 0, 0.0])
            tally[0] += 1
            tally[1] += found
            tally[2] += found and clean
            tally[3] += result.timings_ms["total"]
            if detection is None and not (found and clean):
                misses.append(f"| {name} | {labels[name]} | {size[0]}x{size[1]} | {scale:g}x | "
                              f"{', '.join(texts) or '(none)'} |")
    rows = ["| detection | scene | plate scale | scenes | plate found | found, nothing else "
            "| ms per scene |", "|---|---|---|---|---|---|---|"]
    for (variant, size, scale), (total, found, clean, ms) in counts.items():
        rows.append(f"| {variant} | {size[0]}x{size[1]} | {scale:g}x | {total} | {found} | "
                    f"{clean} | {ms / total:.0f} |")
    totals: dict[str, list] = {}
    for (variant, _, _), (total, found, clean, ms) in counts.items():
        entry = totals.setdefault(variant, [0, 0, 0, 0.0])
        for k, value in enumerate((total, found, clean, ms)):
            entry[k] += value
    for variant, (total, found, clean, ms) in totals.items():
        rows.append(f"| **{variant}** | all | all | {total} | {found} | {clean} | "
                    f"{ms / total:.0f} |")
    missed = ["| crop | label | scene | plate scale | plate mode read |", "|---|---|---|---|---|",
              *misses]
    return "\n".join(rows), missed


def _read_scene(engine, scene: np.ndarray, plate_mode, detection: dict | None):
    """The plate mode on `scene`; with `detection`, those detection options replace plate
    mode's (the engine's plate decoder, passed explicitly, keeps the rest equal)."""
    if detection is None:
        return engine.ocr_array(scene, plate_mode)
    from ocr_engine.plates import plate_reading_options

    options = plate_reading_options(plate_mode, *scene.shape[:2]).replace(**detection)
    result = engine.ocr_array(scene, options, engine.plate_decoder)
    # What plate mode does with lines that are not plates.
    lines = [line for line in result.lines if line.text]
    return type(result)(result.width, result.height, lines, result.timings_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scenes-every", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from ocr_engine import EngineConfig, OcrEngine, resolve_model_set, setup_process

    setup_process("onnxruntime", args.threads)
    engine = OcrEngine(EngineConfig(resolve_model_set("ppocr-v4", "onnxruntime"),
                                    threads=args.threads))
    labels = read_labels()
    engine.warm_up()
    print(f"ppocr-v4 on onnxruntime, {args.threads} thread(s); {platform.processor() or ''} "
          f"{_cpu_name()}, {os.cpu_count()} cores\n")
    table, confusion = crops_table(engine, labels, args.repeat)
    print("### Plate crops (recognition only)\n")
    print(table)
    print("\nCrops either decoder misses:\n")
    print("\n".join(confusion))
    print(f"\n### Synthetic scenes (plate mode, detection path; every {args.scenes_every}th "
          "crop)\n")
    table, missed = scenes_table(engine, labels, args.scenes_every)
    print(table)
    print("\nScenes plate mode misses:\n")
    print("\n".join(missed))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
