"""The `page` preset's detection rule, measured: lines read on rendered A4 pages at 100-300 dpi and
time on the shared eval images, for each candidate detection resize rule side by side.

Pages: one A4 layout (a 16 pt title, 10.5 pt body text, 9 pt and 8 pt small print) of real text,
lines that PaddleOCR 2.10 read on the shared eval images (tests/data/paddleocr_reference.json),
Chinese and English, rendered with Pillow and the Debian CJK font at 100, 150, 200 and 300 dpi
(827x1169 ... 2480x3508 px). Deterministic: same text, same positions, same pixels on one font
build. A line counts as read when the text the engine put on it has a CER of at most
READ_CER against what was drawn there (NFKC, whitespace ignored).

Rules: PaddleOCR 2.x's max/960, max/1280, PaddleOCR 3.x's min/64 (native resolution, clamped to
4000 px by EngineLimits) and the page rule. All rounds are interleaved: each round times every
rule once on every image, in an order that rotates per round, so a change in the machine's load
(other processes) hits every rule alike; the ratios are what to read, the absolute times depend
on the load.

    .venv/bin/python bench/page_rule.py                 # markdown tables on stdout
    .venv/bin/python bench/page_rule.py --rounds 5 --threads 2
    .venv/bin/python bench/page_rule.py --save-pages /tmp/pages   # the rendered pages as PNG

tests/test_page_rule.py imports the page renderer and the scoring from here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVAL_DIR = ROOT.parent / "shared" / "eval"
REFERENCE_FILE = ROOT / "tests" / "data" / "paddleocr_reference.json"
LARGE_PHOTO = ("paddleocr/doc/imgs_en/img_195.jpg", (4032, 2268))  # (eval image, size)
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)

DPIS = (100, 150, 200, 300)
A4_MM = (210.0, 297.0)  # width, height
MARGIN_POINTS = 56.0        # ~20 mm
# A line is read when at most 1 character in 10 is wrong. Recognition alone slips that much on
# 6 pt print at 100 dpi whatever the detection size (the crop is cut from the full-resolution
# page: the detection size moves only its box), up to CER 0.09; a line the detector lost reads
# CER 1.0, one it cut or merged with a neighbour 0.18 and more.
READ_CER = 0.1
# (font size in points, number of lines, line pitch as a multiple of the size): a title, body
# text, then small print down to 6 pt (footnotes, legal text, table notes).
SECTIONS = ((16.0, 1, 1.8), (10.5, 10, 1.5), (9.0, 8, 1.45), (8.0, 8, 1.45), (7.0, 7, 1.45),
            (6.0, 6, 1.45))


@dataclass(frozen=True)
class PageLine:
    """One drawn line: its text and its ink box (left, top, right, bottom) in page pixels."""

    text: str
    points: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Page:
    dpi: int
    image: np.ndarray  # (H, W, 3) BGR uint8
    lines: tuple[PageLine, ...]


def find_font() -> str:
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise FileNotFoundError("no CJK font: apt-get install fonts-wqy-microhei (the Makefile's "
                            "browser step installs it)")


def text_fragments(font_path: str, reference_file: Path = REFERENCE_FILE) -> list[str]:
    """Real text lines, in the reference file's order: what PaddleOCR read with confidence on the
    shared eval images, without the plate and word crops (short, repetitive), without the
    vertical and Japanese images (characters the Chinese dictionary reads only in part) and
    without lines the font cannot draw (its '℃' is an empty glyph: the truth would hold a
    character the page does not)."""
    document = json.loads(reference_file.read_text(encoding="utf-8"))
    font = ImageFont.truetype(font_path, 32)
    skip = ("plates/", "imgs_words", "text_vertical", "japan")
    fragments: list[str] = []
    for case in document["cases"]:
        if any(part in case["image"] for part in skip):
            continue
        for line in case["lines"]:
            text = line["text"].strip()
            drawable = all(char.isspace() or font.getmask(char).getbbox() for char in text)
            if (line["confidence"] >= 0.95 and len(text) >= 6 and drawable
                    and text not in fragments):
                fragments.append(text)
    return fragments


def compose_lines(fragments: Sequence[str], font: ImageFont.FreeTypeFont, width: float,
                  count: int, start: int) -> tuple[list[str], int]:
    """`count` lines no wider than `width` (pixels at `font`), filled with fragments taken
    cyclically from `start`, joined by two spaces; returns the lines and the next start."""
    lines: list[str] = []
    index = start
    while len(lines) < count:
        line = ""
        while True:
            fragment = fragments[index % len(fragments)]
            candidate = f"{line}  {fragment}" if line else fragment
            if font.getlength(candidate) > width:
                if not line:  # a fragment alone too wide: cut it
                    while font.getlength(candidate) > width:
                        candidate = candidate[:-1]
                    line, index = candidate, index + 1
                break
            line, index = candidate, index + 1
        lines.append(line)
    return lines, index


def render_page(dpi: int, font_path: str | None = None,
                fragments: Sequence[str] | None = None) -> Page:
    """The A4 page at `dpi`: every section's lines drawn at its size in points, so the same text
    falls in the same place at every resolution."""
    font_path = font_path or find_font()
    fragments = fragments or text_fragments(font_path)
    scale = dpi / 72.0
    width, height = (round(side / 25.4 * dpi) for side in A4_MM)
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    left = round(MARGIN_POINTS * scale)
    column = width - 2 * left
    y = MARGIN_POINTS * scale
    drawn: list[PageLine] = []
    start = 0
    for points, count, pitch in SECTIONS:
        font = ImageFont.truetype(font_path, round(points * scale))
        # Lines are broken at the largest resolution so that every page holds the same lines
        # (hinted glyph widths are not quite proportional to the size).
        layout = ImageFont.truetype(font_path, round(points * max(DPIS) / 72.0))
        texts, start = compose_lines(fragments, layout, column * max(DPIS) / dpi, count, start)
        for text in texts:
            draw.text((left, round(y)), text, fill=20, font=font)
            box = draw.textbbox((left, round(y)), text, font=font)
            drawn.append(PageLine(text, points, tuple(int(v) for v in box)))
            y += points * scale * pitch
        y += points * scale  # a blank line between sections
    if y > height - MARGIN_POINTS * scale:
        raise ValueError("the layout does not fit on the page")
    bgr = np.ascontiguousarray(np.repeat(np.asarray(page)[..., None], 3, axis=2))
    return Page(dpi, bgr, tuple(drawn))


# ---------------------------------------------------------------- scoring

def normalise(text: str) -> str:
    """NFKC (full-width forms as ASCII) without whitespace: the model's spacing and the width
    of its punctuation are not what is measured here."""
    return "".join(unicodedata.normalize("NFKC", text).split())



def line_cers(page: Page, found: Iterable[tuple[str, Sequence[Sequence[float]]]]) -> list[float]:
    """CER of every drawn line against the text of the found lines whose box centre falls in
    its band (the drawn box's rows, widened by a quarter of its height), left to right. A found
    line is given to the nearest band only, so a line read twice or merged with its neighbour
    costs what it should."""
    bands: list[list[tuple[float, str]]] = [[] for _ in page.lines]
    for text, box in found:
        xs = [point[0] for point in box]
        ys = [point[1] for point in box]
        centre_x, centre_y = sum(xs) / len(xs), sum(ys) / len(ys)
        best, best_distance = None, None
        for index, line in enumerate(page.lines):
            _, top, _, bottom = line.box
            slack = (bottom - top) / 4
            if top - slack <= centre_y <= bottom + slack:
                distance = abs(centre_y - (top + bottom) / 2)
                if best_distance is None or distance < best_distance:
                    best, best_distance = index, distance
        if best is not None:
            bands[best].append((centre_x, text))
    from server.testing import edit_distance  # lazily: main() puts the repository on sys.path

    cers = []
    for line, band in zip(page.lines, bands):
        truth = normalise(line.text)
        read = normalise("".join(text for _, text in sorted(band)))
        cers.append(edit_distance(truth, read) / len(truth))
    return cers


def lines_read(cers: Sequence[float]) -> int:
    return sum(cer <= READ_CER for cer in cers)


# ---------------------------------------------------------------- the measurement

@dataclass(frozen=True)
class Rule:
    label: str
    limit_type: str
    side: int
    cls_long_lines: str = "squeeze"  # how the direction classifier reads long lines


def candidate_rules() -> tuple[Rule, ...]:
    """PaddleOCR 2.x's default, the larger fixed side, PaddleOCR 3.x's resolution-preserving
    default (min/64; EngineLimits clamps it to 4000 px as 3.x does), each with PaddleOCR's
    classifier (long lines squeezed), then the page preset's rule with its classifier windows,
    and without them (what the windows cost)."""
    from ocr_engine.presets import PRESETS

    page = PRESETS["page"].changes
    label = f"page/{page['det_limit_side_len']}"
    return (Rule("max/960 (PaddleOCR 2.x)", "max", 960), Rule("max/1280", "max", 1280),
            Rule("min/64 (PaddleOCR 3.x)", "min", 64),
            Rule(f"{label}, cls squeeze", page["det_limit_type"], page["det_limit_side_len"]),
            Rule(f"{label}, cls windows (page preset)", page["det_limit_type"],
                 page["det_limit_side_len"], page["cls_long_lines"]))


def page_options(rule: Rule):
    """What pages and eval images are read with: the page preset over the built-in defaults
    (direction classifier on, as a request gets it), with the rule's detection resize and
    classifier mode."""
    from ocr_engine import OcrOptions
    from ocr_engine.presets import apply_preset

    return apply_preset("page", OcrOptions()).replace(
        det_limit_type=rule.limit_type, det_limit_side_len=rule.side,
        cls_long_lines=rule.cls_long_lines)


eval_options = page_options


def timed(engine, image: np.ndarray, options) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = engine.ocr_array(image, options)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def rotated(items: Sequence, turn: int) -> list:
    turn %= len(items)
    return list(items[turn:]) + list(items[:turn])


def measure(engine, rules: Sequence[Rule], pages: Sequence[Page],
            eval_images: Sequence[tuple[str, np.ndarray]], page_rounds: int,
            eval_rounds: int, log=print) -> dict:
    """Per page and rule: lines read (first round; the engine is deterministic) and CPU/wall
    seconds per round; per eval image and rule, CPU/wall seconds per round. Rules rotate per
    call so none is always first after another's cache-warming run."""
    pages_out: dict[int, dict[str, dict]] = {}
    turn = 0
    for round_index in range(page_rounds):
        for page in pages:
            for rule in rotated(rules, turn):
                result, wall, cpu = timed(engine, page.image, page_options(rule))
                entry = pages_out.setdefault(page.dpi, {}).setdefault(
                    rule.label, {"wall": [], "cpu": []})
                entry["wall"].append(wall)
                entry["cpu"].append(cpu)
                if round_index == 0:
                    cers = line_cers(page, [(line.text, line.box) for line in result.lines])
                    entry["cers"] = [round(cer, 4) for cer in cers]
                    entry["read"] = lines_read(cers)
                    entry["lost"] = [(index, page.lines[index].points, round(cer, 3))
                                     for index, cer in enumerate(cers) if cer > READ_CER]
                    log(f"  {page.dpi} dpi {rule.label}: {entry['read']}/{len(cers)} lines, "
                        f"cpu {cpu:.2f} s, lost {entry['lost']}")
                turn += 1
    eval_out: dict[str, dict[str, dict]] = {}
    for _name, image in eval_images:  # each shape seen once before it is timed
        engine.ocr_array(image, eval_options(rules[0]))
    for _ in range(eval_rounds):
        for name, image in eval_images:
            for rule in rotated(rules, turn):
                _, wall, cpu = timed(engine, image, eval_options(rule))
                entry = eval_out.setdefault(name, {}).setdefault(rule.label,
                                                                 {"wall": [], "cpu": []})
                entry["wall"].append(wall)
                entry["cpu"].append(cpu)
                turn += 1
        log(f"  eval round done at load {os.getloadavg()[0]:.1f}")
    return {"pages": pages_out, "eval": eval_out}


def report(results: dict, rules: Sequence[Rule], pages: Sequence[Page], machine: str) -> str:
    base = rules[0].label
    out = [f"Machine: {machine}", ""]
    out.append("| rule | " + " | ".join(f"{page.dpi} dpi ({page.image.shape[1]}x"
                                         f"{page.image.shape[0]})" for page in pages)
               + " | page CPU vs max/960 |")
    out.append("|---" * (len(pages) + 2) + "|")
    for rule in rules:
        cells, ratios = [], []
        for page in pages:
            entry = results["pages"][page.dpi][rule.label]
            cpu = statistics.median(entry["cpu"])
            cells.append(f"{entry['read']}/{len(page.lines)} read, {cpu:.1f} s")
            ratios.append(cpu / statistics.median(results["pages"][page.dpi][base]["cpu"]))
        out.append(f"| {rule.label} | " + " | ".join(cells)
                   + f" | {statistics.mean(ratios):.2f}x |")
    out.append("")
    out.append("Lines lost (line index, print size in pt, CER):")
    for rule in rules:
        lost = {page.dpi: results["pages"][page.dpi][rule.label]["lost"] for page in pages}
        lost = {dpi: items for dpi, items in lost.items() if items}
        out.append(f"- {rule.label}: " + ("none" if not lost else "; ".join(
            f"{dpi} dpi {items}" for dpi, items in lost.items())))
    out.append("")
    totals = {rule.label: {kind: sum(statistics.median(per[rule.label][kind])
                                     for per in results["eval"].values())
                           for kind in ("cpu", "wall")} for rule in rules}
    out.append(f"Shared eval images ({len(results['eval'])} full-pipeline images, sum of "
               "per-image medians):")
    out.append("")
    out.append("| rule | CPU s | vs max/960 | wall s | vs max/960 | within +15% |")
    out.append("|---|---|---|---|---|---|")
    for rule in rules:
        cpu, wall = totals[rule.label]["cpu"], totals[rule.label]["wall"]
        ratio = cpu / totals[base]["cpu"]
        out.append(f"| {rule.label} | {cpu:.2f} | {ratio:.3f} | {wall:.2f} | "
                   f"{wall / totals[base]['wall']:.3f} | {'yes' if ratio <= 1.15 else 'NO'} |")
    if results.get("large_photo"):
        [(name, per_rule)] = results["large_photo"].items()
        base_cpu = statistics.median(per_rule[base]["cpu"])
        out.append("")
        out.append(f"A large photo ({name}), median CPU s per call:")
        out.append("")
        out.append("| rule | CPU s | vs max/960 |")
        out.append("|---|---|---|")
        for rule in rules:
            cpu = statistics.median(per_rule[rule.label]["cpu"])
            out.append(f"| {rule.label} | {cpu:.2f} | {cpu / base_cpu:.2f}x |")
    return "\n".join(out)


def machine_line(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                    if line.startswith("Model name:")), cpu)
    except (OSError, subprocess.CalledProcessError):
        pass
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} cores, onnxruntime {onnxruntime.__version__}, engine "
            f"threads {threads}, load average at start {os.getloadavg()[0]:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--page-rounds", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds on the eval images")
    parser.add_argument("--dpi", default=",".join(map(str, DPIS)))
    parser.add_argument("--save-pages", type=Path, help="write the rendered pages as PNG here")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    import cv2
    from paddleocr_reference import eval_images

    from ocr_engine import (
        EngineConfig,
        OcrEngine,
        OcrError,
        decode_image,
        resolve_model_set,
        setup_process,
    )

    setup_process("onnxruntime", args.threads)
    engine = OcrEngine(EngineConfig(resolve_model_set("ppocr-v4", "onnxruntime"),
                                    threads=args.threads))
    engine.warm_up()
    machine = machine_line(args.threads)
    font = find_font()
    fragments = text_fragments(font)
    pages = [render_page(int(dpi), font, fragments) for dpi in args.dpi.split(",")]
    if args.save_pages:
        args.save_pages.mkdir(parents=True, exist_ok=True)
        for page in pages:
            cv2.imwrite(str(args.save_pages / f"a4_{page.dpi}dpi.png"), page.image)
    images = []
    for path in eval_images(EVAL_DIR)[0]:
        try:
            images.append((str(path.relative_to(EVAL_DIR)), decode_image(path.read_bytes())))
        except OcrError as error:
            print(f"skipping {path.name}: {error}", file=sys.stderr)
    rules = candidate_rules()
    started = time.time()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    results = measure(engine, rules, pages, images, args.page_rounds, args.rounds, log=log)
    # Not part of the +15% budget (the eval images are at most 1890 px): what each rule costs
    # on a phone-camera-sized photo, an eval street photo enlarged to 12 Mpx.
    photo = cv2.imread(str(EVAL_DIR / LARGE_PHOTO[0]))
    photo = cv2.resize(photo, LARGE_PHOTO[1], interpolation=cv2.INTER_CUBIC)
    large = measure(engine, rules, [], [(f"{LARGE_PHOTO[0]} at {LARGE_PHOTO[1][0]}x"
                                         f"{LARGE_PHOTO[1][1]}", photo)], 0, args.rounds,
                    log=log)
    results["large_photo"] = large["eval"]
    print(report(results, rules, pages, machine))
    print(f"\n{time.time() - started:.0f} s, load average at the end "
          f"{os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
