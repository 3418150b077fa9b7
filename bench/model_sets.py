"""Model sets side by side: how well each reads the eval samples, how long it takes per page.

Every set of models/manifest.json that is installed in ONNX format (`make models-all`) is
loaded in this one process on onnxruntime at 2 intra-op threads, with PaddleOCR's defaults plus
the set's own `det_defaults` (what a request gets when it names the set). Then:

- pages: the Chinese and English pages of ../shared/eval/paddleocr/doc (the French, German,
  Japanese and Korean ones are left out: the PP-OCRv4 reference cannot read them, so a set
  that can would be marked wrong). Each set reads each page once untimed (its first call on the
  page's shapes; its text is what the CER is computed on), then REPEATS timed rounds in which
  every set reads the page once, the order rotating each round, so load from other processes on
  this shared machine falls on every set alike. Per page: the median of its rounds.
- page CER: against PaddleOCR 2.10's own pipeline on PP-OCRv4 (tests/data/
  paddleocr_reference.json), lines in reading order, whitespace removed: agreement with that
  pipeline, not truth; ppocr-v4 is that pipeline's model, so its figure is ~0 by construction.
- crop CER, against true labels (recognition only, no detection): the word crops whose texts
  PaddleOCR's docs print (paddleocr_cases.json, as tests/test_conformance.py reads them) and
  the 200 licence plates (plates/labels.tsv; the '·' PP-OCR puts after the province dropped).

CER = edit distance / reference length, summed over the sample. Prints one Markdown table and
the per-page times; `--append` adds it as the `## Model sets` section at the end of
docs/BENCHMARKS.md (replacing an earlier one).

    .venv/bin/python bench/model_sets.py [--repeats 3] [--append]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from ocr_engine import EngineConfig, OcrEngine, OcrOptions, setup_process  # noqa: E402
from ocr_engine.models import (  # noqa: E402
    DEFAULT_MODELS_DIR,
    download_size,
    installed_size,
    is_installed,
    load_manifest,
    resolve_model_set,
)
from server.testing import edit_distance, squeezed  # noqa: E402

EVAL_DIR = ROOT.parent / "shared" / "eval"
REFERENCE_FILE = ROOT / "tests" / "data" / "paddleocr_reference.json"
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Model sets (bench/model_sets.py)"
THREADS = 2
BASELINE = "ppocr-v4"
# Pages in other scripts than Chinese and English (see the module docstring).
OTHER_SCRIPTS = ("french_", "ger_", "japan_", "korean_")
RECOGNITION_ONLY = OcrOptions(use_det=False, use_angle_cls=False, drop_score=0.0)
# The doc-printed word crops tests/test_conformance.py reads exactly (case-insensitive: the
# two from lowercase English models).
WORD_CASES = ("pp_word_1", "pp_word_4_rec", "pp_word_10_rec_ch", "pp_word_2", "pp_word_3",
              "pp_word_5", "pp_en_word_19", "pp_en_word_201", "pp_en_word_308")
CASE_INSENSITIVE_WORD_CASES = ("pp_word_336", "pp_word_en_1")




def page_cases() -> list[tuple[str, str]]:
    """(image, reference text) of the Chinese and English doc pages."""
    cases = json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))["cases"]
    return [(case["image"], "".join(line["text"] for line in case["lines"]))
            for case in cases if case["mode"] == "det+cls+rec"
            and case["image"].startswith("paddleocr/doc/")
            and not Path(case["image"]).name.startswith(OTHER_SCRIPTS)]


def crop_cases() -> list[tuple[str, str, bool]]:
    """(image, label, case-insensitive) for the word crops and the licence plates."""
    cases = {case["id"]: case for case in json.loads(
        (EVAL_DIR / "paddleocr_cases.json").read_text(encoding="utf-8"))["cases"]}
    crops = [(cases[i]["image"], cases[i]["expected"][0]["text"], False) for i in WORD_CASES]
    crops += [(cases[i]["image"], cases[i]["expected"][0]["text"], True)
              for i in CASE_INSENSITIVE_WORD_CASES]
    with open(EVAL_DIR / "plates" / "labels.tsv", encoding="utf-8", newline="") as handle:
        crops += [(f"plates/images/{row['file']}", row["plate"], False)
                  for row in csv.DictReader(handle, delimiter="\t")]
    return crops


def load_engines(names: list[str]) -> dict[str, OcrEngine]:
    engines = {}
    for name in names:
        paths = resolve_model_set(name, "onnxruntime")
        engine = OcrEngine(EngineConfig(paths, threads=THREADS,
                                        defaults=OcrOptions().replace(**paths.det_defaults)))
        engine.warm_up()
        engines[name] = engine
    return engines


def measure(engines: dict[str, OcrEngine], repeats: int) -> dict:
    names = list(engines)
    pages = page_cases()
    page_ms = {name: {} for name in names}
    page_errors = {name: 0 for name in names}
    reference_chars = 0
    for number, (image, reference) in enumerate(pages):
        pixels = cv2.imread(str(EVAL_DIR / image))
        reference_chars += len(squeezed(reference))
        for name in names:
            text = "".join(line.text for line in engines[name].ocr_array(pixels).lines)
            page_errors[name] += edit_distance(squeezed(text), squeezed(reference))
        rounds = {name: [] for name in names}
        for round_index in range(repeats):
            shift = (number + round_index) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                engines[name].ocr_array(pixels)
                rounds[name].append((time.perf_counter() - start) * 1000)
        for name in names:
            page_ms[name][image] = statistics.median(rounds[name])
    crops = crop_cases()
    crop_errors = {name: 0 for name in names}
    crop_chars = sum(len(label) for _, label, _ in crops)
    for image, label, fold_case in crops:
        data = (EVAL_DIR / image).read_bytes()
        for name in names:
            lines = engines[name].ocr(data, RECOGNITION_ONLY).lines
            text = lines[0].text.replace("·", "") if lines else ""
            if fold_case:
                text, label_used = text.lower(), label.lower()
            else:
                label_used = label
            crop_errors[name] += edit_distance(text, label_used)
    return {"pages": [image for image, _ in pages], "page_ms": page_ms,
            "page_cer": {name: page_errors[name] / reference_chars for name in names},
            "reference_chars": reference_chars, "crops": len(crops), "crop_chars": crop_chars,
            "crop_cer": {name: crop_errors[name] / crop_chars for name in names}}


def report(results: dict, manifest: dict, repeats: int, load_before: tuple[float, ...]) -> str:
    names = list(results["page_ms"])
    baseline = BASELINE if BASELINE in names else names[0]
    pages = results["pages"]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION, "",
        f"Run {stamp}, {platform.machine()} with {os.cpu_count()} cores (load average "
        f"{load_before[0]:.2f} before, shared with other jobs), onnxruntime at {THREADS} threads, "
        f"every set in one process, {len(pages)} Chinese and English pages of shared/eval "
        f"(paddleocr/doc), {repeats} interleaved rounds per page, order rotating. Options: "
        "PaddleOCR's defaults plus each set's `det_defaults` from the manifest. Page CER: "
        f"against PaddleOCR 2.10 on PP-OCRv4 ({results['reference_chars']} characters, "
        "whitespace removed; agreement with that pipeline, not truth). Crop CER: recognition "
        f"only against true labels, {results['crops']} crops ({results['crop_chars']} "
        "characters: the doc word crops and the 200 licence plates, '·' dropped).", "",
        "| set | download | installed | page CER vs PP-OCRv4 reference | crop CER vs labels "
        f"| ms per eval page (mean of per-page medians) | time vs {baseline} (geo. mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        mean_ms = statistics.fmean(results["page_ms"][name].values())
        ratio = statistics.geometric_mean(
            results["page_ms"][name][page] / results["page_ms"][baseline][page]
            for page in pages)
        lines.append(
            f"| `{name}` | {download_size(manifest, name, 'onnx') / 1e6:.1f} MB "
            f"| {installed_size(manifest, name, 'onnx') / 1e6:.1f} MB "
            f"| {results['page_cer'][name]:.3f} | {results['crop_cer'][name]:.3f} "
            f"| {mean_ms:.0f} | {ratio:.2f}x |")
    lines += ["", "Per page, median ms:", "",
              "| page | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for page in pages:
        lines.append(f"| {Path(page).name} | "
                     + " | ".join(f"{results['page_ms'][name][page]:.0f}" for name in names)
                     + " |")
    return "\n".join(lines) + "\n"


def append_section(text: str) -> None:
    """Adds the section at the end of BENCHMARKS.md; an earlier run's section, which this
    script alone writes and always last, is replaced."""
    current = BENCHMARKS.read_text(encoding="utf-8")
    if SECTION in current:
        current = current[:current.index(SECTION)]
    BENCHMARKS.write_text(current.rstrip("\n") + "\n\n" + text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per page")
    parser.add_argument("--sets", nargs="*", help="sets to compare (default: every installed "
                                                  "ONNX set)")
    parser.add_argument("--append", action="store_true",
                        help=f"write the table as the last section of {BENCHMARKS.name}")
    args = parser.parse_args(argv)
    manifest = load_manifest(DEFAULT_MODELS_DIR)
    names = args.sets or [name for name, entry in manifest["sets"].items()
                          if "onnx" in entry["formats"]
                          and is_installed(DEFAULT_MODELS_DIR, name, "onnx", manifest)]
    missing = [name for name in names
               if not is_installed(DEFAULT_MODELS_DIR, name, "onnx", manifest)]
    if missing:
        print(f"not installed: {', '.join(missing)} (make models-all)", file=sys.stderr)
        return 1
    setup_process("onnxruntime", THREADS)
    load_before = os.getloadavg()
    results = measure(load_engines(names), args.repeats)
    text = report(results, manifest, args.repeats, load_before)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"model-sets-{int(time.time())}.json").write_text(json.dumps(results, indent=1))
    if args.append:
        append_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
