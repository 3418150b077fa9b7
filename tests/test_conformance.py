"""Conformance: the engine reads what PaddleOCR 2.10's own pipeline reads on the same model files.

tests/data/paddleocr_reference.json holds PaddleOCR 2.10 + paddlepaddle 3.3.1 output for every
image of ../shared/eval (bench/paddleocr_reference.py): full pipeline ("det+cls+rec") on pages,
recognition only ("rec") on word crops and licence plates. Every backend and precision the
config accepts that promises PaddleOCR's text (onnxruntime, paddle, openvino in f32; precision
"auto" is f32 today) must give the same text on every case, boxes within 2 px and confidences
within 1e-3. openvino with every stage in bf16 does not promise it (its probabilities are off
by up to 0.04: measured, it changes the text of some pages and crops); its tests below bound how
far it may drift instead. The bf16 variants skip, saying why, on a CPU without native bf16.
Three cases differ on purpose, all in how the file is decoded, not in the pipeline; each is
tested on its own below.

The second half encodes the applicable assertions of the case files that come with the eval
images (rapidocr_cases.json from RapidOCR's test suite, paddleocr_cases.json from PaddleOCR's
docs and CI).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Polygon

from ocr_engine import InvalidImageError, OcrEngine, OcrOptions, OcrResult, TextLine, decode_image
from server.testing import edit_distance

REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "paddleocr_reference.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
BOX_TOLERANCE_PX = 2
CONFIDENCE_TOLERANCE = 1e-3
# How PaddleOCR's `ocr(img, det=False, cls=False)` is asked for with our options.
RECOGNITION_ONLY = OcrOptions(use_det=False, use_angle_cls=False, drop_score=0.0)
# RapidOCR's det values (its config.yaml), for the few RapidOCR counts that only hold under them.
# Its 0.5/0.5 normalisation, pre-resize and vertical padding are not options here.
RAPIDOCR_DET_VALUES = OcrOptions(det_limit_type="min", det_limit_side_len=736,
                                 det_db_box_thresh=0.5, det_db_unclip_ratio=1.6, use_dilation=True)

# Images whose EXIF Orientation turns them, and what we read once it is applied (below).
EXIF_ROTATED = {"rapidocr/test_files/img_exif_orientation.jpg": ["我是中国人"],
                "rapidocr/test_files/text_cls_pre2025-10.jpg": ["小馆", "韩国"]}
# Reference cases our engine reads differently on purpose, and why.
UNDERSTOOD_DEVIATIONS = {
    **{image: ("PaddleOCR decodes with cv2.imdecode(..., cv2.IMREAD_UNCHANGED), which ignores "
               "the EXIF Orientation tag (3: rotate 180 degrees); we apply it")
       for image in EXIF_ROTATED},
    "rapidocr/test_files/white_font_color_transparent.png": (
        "PaddleOCR composites alpha onto white (alpha_to_color), which erases white text: its "
        "reference has no lines; we composite onto a background that contrasts with the opaque "
        "pixels and read the text"),
}


def _reference_images(mode: str) -> list[str]:
    # Read at collection time for the test ids; the `reference` fixture serves the contents.
    cases = json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))["cases"]
    return [case["image"] for case in cases if case["mode"] == mode]


FULL_PIPELINE_IMAGES = _reference_images("det+cls+rec")
CONFORMING_IMAGES = [image for image in FULL_PIPELINE_IMAGES if image not in UNDERSTOOD_DEVIATIONS]
WORD_CROPS = [image for image in _reference_images("rec") if not image.startswith("plates/")]
# Each backend x precision that promises PaddleOCR's text, and the fixture that builds it
# (precision "auto" is f32 on every CPU today: tests/test_autoselect.py).
BACKEND_FIXTURES = {"onnxruntime": "onnx_engine", "paddle": "paddle_engine",
                    "openvino": "openvino_engine"}


@pytest.fixture(params=sorted(BACKEND_FIXTURES))
def engine(request) -> OcrEngine:
    return request.getfixturevalue(BACKEND_FIXTURES[request.param])


@pytest.fixture
def read(onnx_engine: OcrEngine, read_eval_image) -> Callable[..., OcrResult]:
    """What the onnxruntime engine reads in an eval image, with the given options (memoised)."""
    return lambda image, options=None: read_eval_image(onnx_engine, image, options)


def decode_like_paddleocr(data: bytes) -> np.ndarray:
    """PaddleOCR 2.10's decoding (paddleocr.py check_img, alpha_to_color): IMREAD_UNCHANGED, so
    no EXIF orientation; grey to BGR; alpha composited onto white, truncated to uint8."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        alpha = image[..., 3:4] / 255
        image = (255 * (1 - alpha) + image[..., :3] * alpha).astype(np.uint8)
    return image


def assert_lines_match(ours: list[TextLine], expected: list[dict], where: str) -> None:
    """Same texts in the same order; boxes (when the reference has them) within 2 px and
    confidences within 1e-3."""
    assert [line.text for line in ours] == [line["text"] for line in expected], where
    for line, want in zip(ours, expected, strict=True):
        if "box" in want:
            offset = int(np.abs(np.array(line.box) - np.array(want["box"])).max())
            assert offset <= BOX_TOLERANCE_PX, \
                f"{where}: {line.text!r} box {line.box} vs {want['box']}"
        assert line.confidence == pytest.approx(want["confidence"], abs=CONFIDENCE_TOLERANCE), \
            f"{where}: {line.text!r}"


def texts(result: OcrResult) -> list[str]:
    return [line.text for line in result.lines]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- the reference is for these images

def test_reference_covers_the_eval_images(eval_dir: Path, reference: dict) -> None:
    """The reference was recorded on exactly the images the eval folder holds now."""
    on_disk = {str(path.relative_to(eval_dir)) for path in eval_dir.rglob("*")
               if path.suffix.lower() in IMAGE_SUFFIXES}
    assert on_disk == set(reference["cases"])
    changed = [image for image, case in reference["cases"].items()
               if hashlib.sha256((eval_dir / image).read_bytes()).hexdigest() != case["sha256"]]
    assert not changed, f"images changed since the reference was recorded: {changed}"


# ---------------------------------------------------------------- full pipeline, both backends

@pytest.mark.slow
@pytest.mark.parametrize("image", CONFORMING_IMAGES)
def test_full_pipeline_matches_paddleocr(engine: OcrEngine, image: str, reference: dict,
                                         read_eval_image) -> None:
    result = read_eval_image(engine, image)
    assert_lines_match(result.lines, reference["cases"][image]["lines"], image)


@pytest.mark.parametrize("image", WORD_CROPS)
def test_recognition_only_matches_paddleocr(engine: OcrEngine, image: str, reference: dict,
                                            read_eval_image) -> None:
    result = read_eval_image(engine, image, RECOGNITION_ONLY)
    assert_lines_match(result.lines, reference["cases"][image]["lines"], image)


def test_decoding_matches_paddleocr_except_understood_deviations(eval_dir: Path) -> None:
    """Our decoder gives PaddleOCR's very pixels on every full-pipeline image but the three
    named ones: the deviations are in decoding, nowhere else."""
    differing = set()
    for image in FULL_PIPELINE_IMAGES:
        data = (eval_dir / image).read_bytes()
        ours, theirs = decode_image(data), decode_like_paddleocr(data)
        if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
            differing.add(image)
    assert differing == set(UNDERSTOOD_DEVIATIONS)


# ---------------------------------------------------------------- the understood deviations

@pytest.mark.parametrize("image", sorted(EXIF_ROTATED))
def test_exif_images_match_paddleocr_on_the_unrotated_pixels(engine: OcrEngine, image: str,
                                                             eval_dir: Path, reference: dict,
                                                             read_eval_image) -> None:
    """Given PaddleOCR's own (unrotated) pixels the pipeline reads exactly what it reads."""
    pixels = decode_like_paddleocr((eval_dir / image).read_bytes())
    assert_lines_match(engine.ocr_array(pixels).lines, reference["cases"][image]["lines"], image)
    # From the file, turned by its tag: the same text on both backends (explained below).
    assert texts(read_eval_image(engine, image)) == EXIF_ROTATED[image]


def test_white_text_on_transparency_matches_paddleocr_on_its_pixels(
        engine: OcrEngine, eval_dir: Path, reference: dict, read_eval_image) -> None:
    image = "rapidocr/test_files/white_font_color_transparent.png"
    assert reference["cases"][image]["lines"] == []
    pixels = decode_like_paddleocr((eval_dir / image).read_bytes())
    assert engine.ocr_array(pixels).lines == []
    assert texts(read_eval_image(engine, image)) == ["我是中国人"]


def test_exif_orientation_is_applied(read) -> None:
    # rapidocr_cases exif_orientation (det+rec, no cls): upright once the tag is applied, so it
    # reads without the direction classifier.
    image = "rapidocr/test_files/img_exif_orientation.jpg"
    assert texts(read(image, OcrOptions(use_angle_cls=False)))[0] == "我是中国人"


def test_exif_orientation_of_the_old_cls_image(read) -> None:
    """text_cls_pre2025-10.jpg stores upright pixels with Orientation 3, so applying the tag
    turns the sign upside down (RapidOCR and PaddleOCR never apply it and see it upright)."""
    image = "rapidocr/test_files/text_cls_pre2025-10.jpg"
    # rapidocr_cases text_cls_old_rec (cls+rec, no det): the classifier turns it back.
    assert texts(read(image, OcrOptions(use_det=False))) == ["韩国小馆"]
    assert texts(read(image, OcrOptions(use_det=False, use_angle_cls=False))) == []
    # With detection the two halves come out as two boxes; the classifier turns each, but with
    # no page-level orientation step the reading order of an upside-down sign is reversed.
    assert texts(read(image)) == ["小馆", "韩国"]


# ---------------------------------------------------------------- licence plates (recognition only)

@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(BACKEND_FIXTURES))
def test_licence_plates_match_paddleocr(request, backend: str, eval_dir: Path, reference: dict,
                                        record_property) -> None:
    engine = request.getfixturevalue(BACKEND_FIXTURES[backend])
    plates = eval_dir / "plates"
    with open(plates / "labels.tsv", encoding="utf-8", newline="") as handle:
        labels = {row["file"]: row["plate"] for row in csv.DictReader(handle, delimiter="\t")}
    assert len(labels) == 200
    plate_texts, differing = {}, []
    for name in sorted(labels):
        image = f"plates/images/{name}"
        plate_texts[name] = engine.ocr((plates / "images" / name).read_bytes(),
                                       RECOGNITION_ONLY).lines[0].text
        expected = reference["cases"][image]["lines"][0]["text"]
        if plate_texts[name] != expected:
            differing.append((name, plate_texts[name], expected))
    # PP-OCR rec puts a '·' after the province prefix that the labels do not have (the eval
    # README cites PaddleOCR's plate study for the same observation).
    exact = sum(plate_texts[name].replace("·", "") == plate for name, plate in labels.items())
    accuracy = exact / len(labels)
    record_property("plate_exact_match", accuracy)
    print(f"licence plates, {backend}: {exact}/{len(labels)} exact after stripping '·' "
          f"({accuracy:.1%})")
    assert not differing, f"plates read differently from PaddleOCR: {differing}"


# ---------------------------------------------------------------- rapidocr_cases.json
# Box counts there hold only under RapidOCR's det settings (min/736, box_thresh 0.5, unclip 1.6,
# dilation, 0.5/0.5 normalisation, pre-resize and vertical padding of strips), so they are not
# asserted under PaddleOCR's; their line texts are. Not asserted at all:
# - letterbox_like (1167x54) and without_det_strip (445x39): strips that RapidOCR pads
#   vertically before detection; without the padding DB finds other (partial) lines.
# - word_boxes_*, single_char_en, word_len_consistency: per-character boxes, which the engine
#   does not expose; word_boxes_3F1's first line is "3F1" only under RapidOCR's det settings.

RAPIDOCR_FILES = "rapidocr/test_files"


def rapidocr_file(name: str) -> str:
    return f"{RAPIDOCR_FILES}/{name}"


def test_ch_en_num_first_line(read) -> None:
    image = rapidocr_file("ch_en_num.jpg")
    assert texts(read(image))[0] == "正品促销"  # ch_en_num_full
    assert texts(read(image, OcrOptions(use_angle_cls=False)))[0] == "正品促销"  # ch_en_num_det_rec


def test_score_filter_at_one_drops_every_line(read) -> None:
    assert read(rapidocr_file("ch_en_num.jpg"), OcrOptions(drop_score=1.0)).lines == []


def test_recognition_only(read) -> None:
    options = OcrOptions(use_det=False, use_angle_cls=False)
    assert texts(read(rapidocr_file("text_rec.jpg"), options)) == ["韩国小馆"]


def test_classifier_turns_an_upside_down_crop(onnx_engine: OcrEngine, eval_dir: Path,
                                              read) -> None:
    image = rapidocr_file("text_cls.jpg")
    [direction] = onnx_engine.classifier([decode_image((eval_dir / image).read_bytes())], 0.9)
    assert direction.label == "180"  # text_cls_only
    assert texts(read(image, OcrOptions(use_det=False, use_angle_cls=True))) == ["怪我咯"]
    # Without the classifier the upside-down crop reads as nothing above drop_score.
    assert texts(read(image, OcrOptions(use_det=False, use_angle_cls=False))) == []


def test_classifier_on_the_old_cls_image(onnx_engine: OcrEngine, eval_dir: Path) -> None:
    # text_cls_old_only expects "0" on the stored (upright) pixels, which RapidOCR reads
    # without applying EXIF; with the tag applied the same sign is upside down.
    data = (eval_dir / rapidocr_file("text_cls_pre2025-10.jpg")).read_bytes()
    [stored] = onnx_engine.classifier([decode_like_paddleocr(data)], 0.9)
    [oriented] = onnx_engine.classifier([decode_image(data)], 0.9)
    assert (stored.label, oriented.label) == ("0", "180")


@pytest.mark.parametrize("name", ["black_font_color_transparent.png",
                                  "white_font_color_transparent.png"])
def test_transparent_png(read, name: str) -> None:
    assert texts(read(rapidocr_file(name)))[0] == "我是中国人"


def test_all_black_image_has_no_lines(read) -> None:
    assert read(rapidocr_file("empty_black.jpg")).lines == []


def test_zeros_image_has_no_lines(onnx_engine: OcrEngine) -> None:
    data = png_bytes(Image.fromarray(np.zeros((640, 640, 3), np.uint8)))
    assert onnx_engine.ocr(data).lines == []


def test_one_bit_png(eval_dir: Path, read) -> None:
    image = rapidocr_file("issue_170.png")
    assert Image.open(eval_dir / image).mode == "1"
    assert texts(read(image))[0] == "TEST"


def test_grey_one_channel_png(onnx_engine: OcrEngine, eval_dir: Path) -> None:
    """ch_en_num_gray_1ch: channel 0 of the RGB image, sent as a 1-channel PNG."""
    red = np.asarray(Image.open(eval_dir / rapidocr_file("ch_en_num.jpg")).convert("RGB"))[..., 0]
    data = png_bytes(Image.fromarray(red, "L"))
    result = onnx_engine.ocr(data)
    # Decoding a grey PNG is replicating its channel: the same lines as the array itself.
    assert result.lines == onnx_engine.ocr_array(np.repeat(red[..., None], 3, axis=2)).lines
    # Under PaddleOCR's settings the red channel gives 13 lines, as the colour image does, but
    # not the same ones: red and white-on-red elements lose their contrast in it, e.g. the first
    # line (white on red) reads 店品促销 where the colour image reads 正品促销.
    assert len(result.lines) == 13
    # RapidOCR's own assertion (at least 17 lines) holds under its det values.
    assert len(onnx_engine.ocr(data, RAPIDOCR_DET_VALUES).lines) >= 17


def test_grey_alpha_png(onnx_engine: OcrEngine, eval_dir: Path) -> None:
    """gray_alpha_npy: a (27, 300, 2) grey+alpha array, sent as an LA PNG."""
    grey_alpha = np.load(eval_dir / rapidocr_file("two_dim_image.npy"))
    data = png_bytes(Image.fromarray(grey_alpha, "LA"))
    grey, alpha = grey_alpha[..., 0], grey_alpha[..., 1]
    # Black text whose shape is in the alpha channel: composited onto white, as RapidOCR does.
    assert np.array_equal(decode_image(data)[..., 0], np.where(alpha > 0, grey, 255))
    # The full-pipeline text holds only with RapidOCR's vertical padding of this 27-px strip
    # (PaddleOCR's settings give "TRENDPLOT'REPOR"); recognition of the whole strip is exact.
    got = texts(onnx_engine.ocr(data, OcrOptions(use_det=False, use_angle_cls=False)))
    assert [text.strip() for text in got] == ["TREND PLOT REPORT"]


def test_vertical_column_is_read_top_to_bottom(read) -> None:
    # word_boxes_vertical, text part: crops at least 1.5 times taller than wide are turned before
    # recognition. The case's text comes from a newer model that reads the traditional 參/見;
    # PP-OCRv4 rec picks the simplified 参/见 (both are in its dictionary).
    first = texts(read(rapidocr_file("text_vertical_words.png")))[0]
    assert first == "已取之時不參一人見而".replace("參", "参").replace("見", "见")


def test_undecodable_input_is_an_error(onnx_engine: OcrEngine) -> None:
    # none_input: the server's analogue of RapidOCR's LoadImageError.
    with pytest.raises(InvalidImageError):
        onnx_engine.ocr(b"")


# ---------------------------------------------------------------- paddleocr_cases.json
# Texts from PaddleOCR's docs and CI; their scores come from older models and are not compared.

def _paddleocr_case(eval_dir: Path, case_id: str) -> dict:
    cases = json.loads((eval_dir / "paddleocr_cases.json").read_text(encoding="utf-8"))["cases"]
    return next(case for case in cases if case["id"] == case_id)


def test_doc_11_first_line_and_box(eval_dir: Path, read) -> None:
    case = _paddleocr_case(eval_dir, "pp_11_quickstart_full")  # text exact, box within a few px
    line = read(case["image"]).lines[0]
    assert line.text == case["expected"][0]["text"]
    assert np.abs(np.array(line.box) - np.array(case["expected"][0]["box"])).max() <= 3


def test_doc_11_first_lines_of_the_old_whl_docs(eval_dir: Path, read) -> None:
    case = _paddleocr_case(eval_dir, "pp_11_whl_v1")  # texts only
    assert texts(read(case["image"]))[:3] == [line["text"] for line in case["expected"]]


def test_doc_11_det_only_boxes(onnx_engine: OcrEngine, eval_dir: Path) -> None:
    case = _paddleocr_case(eval_dir, "pp_11_quickstart_det_only")  # sanity check, IoU > 0.8
    pixels = decode_image((eval_dir / case["image"]).read_bytes())
    boxes = onnx_engine.detector(pixels, OcrOptions()).boxes
    for expected in case["expected_boxes"]:
        best = max(_iou(expected, box) for box in boxes)
        assert best > 0.8, f"no detected box overlaps {expected}"


def test_doc_11_full_page_like_paddleocr_ci(eval_dir: Path, read) -> None:
    """pp_11_tipc_web_expect, with the CI's own measure (test_tipc/web/index.test.js): at most
    10 characters differing position by position, mean normalised-Levenshtein similarity of
    at least 0.9, 16 lines in reading order."""
    case = _paddleocr_case(eval_dir, "pp_11_tipc_web_expect")
    expected = case["expected_lines_in_order"]
    got_lines = texts(read(case["image"]))
    assert len(got_lines) == len(expected) == 16
    mismatched = sum(1 for want, got in zip(expected, got_lines, strict=True)
                     for i, char in enumerate(want) if i >= len(got) or got[i] != char)
    similarity = sum(_similarity(want, got)
                     for want, got in zip(expected, got_lines, strict=True)) / 16
    assert mismatched <= 10
    assert similarity >= 0.9


@pytest.mark.parametrize("case_id", ["pp_word_1", "pp_word_4_rec", "pp_word_10_rec_ch",
                                     "pp_word_2", "pp_word_3", "pp_word_5", "pp_en_word_19",
                                     "pp_en_word_201", "pp_en_word_308"])
def test_doc_word_crops_exact(eval_dir: Path, read, case_id: str) -> None:
    case = _paddleocr_case(eval_dir, case_id)
    assert texts(read(case["image"], RECOGNITION_ONLY)) == [case["expected"][0]["text"]]


@pytest.mark.parametrize("case_id", ["pp_word_336", "pp_word_en_1"])
def test_doc_word_crops_case_insensitive(eval_dir: Path, read, case_id: str) -> None:
    # The doc outputs come from lowercase English-dictionary models.
    case = _paddleocr_case(eval_dir, case_id)
    got = texts(read(case["image"], RECOGNITION_ONLY))
    assert [text.lower() for text in got] == [case["expected"][0]["text"].lower()]


@pytest.mark.parametrize(("case_id", "label"), [("pp_word_4_cls", "0"), ("pp_word_10_cls", "0")])
def test_doc_classifier_labels(onnx_engine: OcrEngine, eval_dir: Path, case_id: str,
                               label: str) -> None:
    case = _paddleocr_case(eval_dir, case_id)  # label exact, score about 1
    [direction] = onnx_engine.classifier(
        [decode_image((eval_dir / case["image"]).read_bytes())], 0.9)
    assert direction.label == case["expected"][0]["label"] == label
    assert direction.score > 0.99


def test_doc_img_12_first_lines(eval_dir: Path, read) -> None:
    case = _paddleocr_case(eval_dir, "pp_img_12_en")  # texts match what ch PP-OCRv4 reads
    assert texts(read(case["image"]))[:3] == [line["text"] for line in case["expected"]]


def test_doc_254_first_lines_ignoring_spaces(eval_dir: Path, read) -> None:
    # Printed by the English model; the Chinese dictionary's model differs in spacing only.
    case = _paddleocr_case(eval_dir, "pp_254_en")
    got = texts(read(case["image"]))[:3]
    assert [text.replace(" ", "") for text in got] == \
        [line["text"].replace(" ", "") for line in case["expected"]]


def _iou(first, second) -> float:
    a, b = Polygon(np.asarray(first, float)), Polygon(np.asarray(second, float))
    return a.intersection(b).area / a.union(b).area


def _similarity(first: str, second: str) -> float:
    """1 - Levenshtein distance / longer length, as PaddleOCR's web CI computes it."""
    if not first or not second:
        return 0.0
    return 1 - edit_distance(first, second) / max(len(first), len(second))


# ---------------------------------------------------------------- openvino, every stage in bf16
# bf16 does not promise PaddleOCR's text: measured on this eval set (2026-12-01, AMX CPU, two
# runs alike), 28 of the 53 conforming pages read alike, 216 of the 220 word and plate crops,
# character error rate 0.0115 over all of them; a few pages gain or lose a line. These bounds
# hold it to that drift with a margin for another CPU's rounding, so a broken bf16 path
# (garbage, a dropped stage) still fails.
BF16_MIN_SAME_PAGES = 0.4
BF16_MIN_SAME_CROPS = 0.95
BF16_MAX_CHARACTER_ERROR_RATE = 0.03  # edits / characters over all cases



@pytest.mark.slow
def test_bf16_stays_close_to_paddleocr(openvino_bf16_engine: OcrEngine, reference: dict,
                                       read_eval_image) -> None:
    same = {"pages": 0, "crops": 0}
    total = {"pages": 0, "crops": 0}
    edits = characters = 0
    for image in CONFORMING_IMAGES + [image for image in reference["cases"]
                                      if reference["cases"][image]["mode"] == "rec"]:
        case = reference["cases"][image]
        kind = "crops" if case["mode"] == "rec" else "pages"
        options = RECOGNITION_ONLY if kind == "crops" else None
        ours = "\n".join(texts(read_eval_image(openvino_bf16_engine, image, options)))
        theirs = "\n".join(line["text"] for line in case["lines"])
        total[kind] += 1
        same[kind] += ours == theirs
        edits += edit_distance(ours, theirs)
        characters += len(theirs)
    rate = edits / characters
    print(f"openvino bf16: {same['pages']}/{total['pages']} pages and {same['crops']}/"
          f"{total['crops']} crops read as PaddleOCR; character error rate {rate:.4f}")
    assert same["pages"] >= BF16_MIN_SAME_PAGES * total["pages"]
    assert same["crops"] >= BF16_MIN_SAME_CROPS * total["crops"]
    assert rate <= BF16_MAX_CHARACTER_ERROR_RATE
