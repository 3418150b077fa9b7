"""Bounded memory on any input: the clamping math, the long-line pieces and their seams, then the
real models on the worst inputs the options and the pixel limit allow, with every tensor the
sessions see recorded and checked against EngineLimits, and the worst case's RSS measured in a
child process."""

from __future__ import annotations

import difflib
import io
import json
import math
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ocr_engine import EngineLimits, OcrEngine, OcrError, OcrOptions
from ocr_engine.batching import normalised_padded
from ocr_engine.crops import ArrayCrops
from ocr_engine.geometry import crop_rotated
from ocr_engine.limits import detection_size
from ocr_engine.rec import CtcGreedyDecoder, Piece, TextRecognizer, seam
from tests.conftest import TESTS_DIR

LIMITS = EngineLimits()


# ---------------------------------------------------------------- the detection clamp

@pytest.mark.parametrize(("size", "limit", "limit_type", "expected"), [
    ((700, 1000), 960, "max", (672, 960)),     # PaddleOCR's own sizes where no limit binds
    ((100, 400), 736, "min", (736, 2944)),
    ((1000, 2000), 736, "min", (992, 1984)),
    ((100, 200), 4096, "min", (1984, 4000)),   # 4096 x 8192 asked: the longer side -> 4000
    ((6000, 6000), 4096, "max", (2976, 2976)),  # 4096 x 4096 asked: the area -> 9 Mpx
    ((1, 40_000_000), 4096, "min", (32, 4000)),  # a side at the 32-px floor
    ((40_000_000, 1), 960, "max", (960, 32)),
])
def test_detection_size(size, limit, limit_type, expected) -> None:
    assert detection_size(*size, limit, limit_type, LIMITS) == expected


@settings(max_examples=200, deadline=None)
@given(height=st.integers(1, 40_000_000), width=st.integers(1, 40_000_000),
       limit=st.integers(32, 4096), limit_type=st.sampled_from(["max", "min"]),
       max_side=st.integers(32, 5000), area_factor=st.integers(32, 400))
def test_detection_size_is_within_any_limits(height, width, limit, limit_type, max_side,
                                             area_factor) -> None:
    limits = EngineLimits(det_max_side=max_side, det_max_pixels=area_factor * max_side)
    out_h, out_w = detection_size(height, width, limit, limit_type, limits)
    assert out_h % 32 == 0 and out_w % 32 == 0 and min(out_h, out_w) >= 32
    assert max(out_h, out_w) <= max(max_side, 32)
    assert out_h * out_w <= limits.det_max_pixels


@settings(max_examples=100, deadline=None)
@given(height=st.integers(64, 8000), width=st.integers(64, 8000), limit=st.integers(32, 4096),
       limit_type=st.sampled_from(["max", "min"]))
def test_a_clamp_keeps_the_aspect_ratio(height, width, limit, limit_type) -> None:
    unbounded = EngineLimits(det_max_side=10**7, det_max_pixels=10**14)
    asked_h, asked_w = detection_size(height, width, limit, limit_type, unbounded)
    out_h, out_w = detection_size(height, width, limit, limit_type, LIMITS)
    if (out_h, out_w) != (asked_h, asked_w) and min(out_h, out_w) >= 320:
        # Away from the 32-px floor, only rounding down to multiples of 32 moves the ratio.
        assert out_w / out_h == pytest.approx(asked_w / asked_h, rel=0.1)
        assert out_h <= asked_h and out_w <= asked_w


@pytest.mark.parametrize(("changes", "field"), [
    ({"det_max_side": 0}, "det_max_side"), ({"rec_max_width": 3201}, "rec_max_width"),
    ({"det_max_pixels": 1000}, "det_max_pixels"), ({"rec_max_width": True}, "rec_max_width"),
    ({"rec_max_line_width": 1000}, "rec_max_line_width"),
])
def test_limits_are_validated(changes, field) -> None:
    with pytest.raises(ValueError, match=field):
        EngineLimits(**changes)


# ---------------------------------------------------------------- long lines in pieces

class StripeModel:
    """A stand-in recogniser with the real one's geometry: each 8 columns of the input become
    one frame, whose class is read off the column's grey level (white = blank); all-zero
    columns (padding) are blank. Pieces of a line then read exactly what the whole line reads
    where they are cut well, so the seams can be checked to the character."""

    metadata: dict = {}
    classes = 11

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        rows, _, _, width = batch.shape
        frames = width // 8
        columns = batch[:, 0, 0, :frames * 8].reshape(rows, frames, 8).mean(axis=2)
        padding = (batch[:, 0, 0, :frames * 8].reshape(rows, frames, 8) == 0).all(axis=2)
        # Normalised grey: white 1 -> class 0, black -1 -> class 10.
        classes = np.rint((1 - columns) * 5).astype(int).clip(0, self.classes - 1)
        classes[padding] = 0
        probs = np.full((rows, frames, self.classes), 0.01, np.float32)
        np.put_along_axis(probs, classes[..., None], 0.9, axis=2)
        return probs


def stripe_line(classes: list[int]) -> np.ndarray:
    """A 48-px-high line whose 8-column blocks read as `classes` in StripeModel."""
    grey = np.array([255 - round(c * 25.5) for c in classes], np.uint8)
    line = np.repeat(grey, 8)[None, :, None].repeat(48, axis=0).repeat(3, axis=2)
    return np.ascontiguousarray(line)


CHARSET = ["blank", *"abcdefghij"]


def test_spans_cover_the_line_with_overlaps() -> None:
    recognizer = TextRecognizer(StripeModel(), limits=EngineLimits(rec_max_width=640))
    spans = recognizer.spans(2000)
    assert spans[0] == (0, 640) and spans[-1][1] == 2000
    for (_, stop), (start, next_stop) in zip(spans, spans[1:]):
        assert stop - start == recognizer.overlap == 192  # 4 line heights
        assert next_stop - start > recognizer.overlap
    assert all(stop - start <= 640 for start, stop in spans)


def test_a_long_line_reads_like_one_pass_through_the_seams() -> None:
    # Characters of 1 to 2 frames with a blank or a repeat between: CTC-like frames.
    rng = np.random.default_rng(4)
    classes: list[int] = []
    while len(classes) < 1500:
        classes += [int(rng.integers(1, 11))] * int(rng.integers(1, 3)) + [0] * int(
            rng.integers(1, 3))
    line = stripe_line(classes)
    model = StripeModel()
    decoder = CtcGreedyDecoder(CHARSET)
    limits = EngineLimits(rec_max_width=640, rec_max_line_width=20_000)
    [pieces] = TextRecognizer(model, limits=limits)([line], decoder)
    [whole] = decoder(StripeModel().run(normalised_padded(line, line.shape[1])[None]))
    assert len(model.shapes) > 1  # it was read in batches of pieces
    assert all(shape[3] <= 640 and shape[0] * 48 * shape[3] <= limits.rec_max_batch_pixels
               for shape in model.shapes)
    assert pieces.text == whole.text and len(pieces.text) > 400
    assert pieces.score == pytest.approx(whole.score)


def test_the_seam_prefers_a_blank_both_pieces_read() -> None:
    left, right = Piece(0, 0, 640, whole=False, last=False), Piece(0, 448, 1088, whole=False)
    frames_left, frames_right = np.full((80, 3), 0.1), np.full((80, 3), 0.1)
    frames_left[:, 1] = frames_right[:, 1] = 0.9  # a character everywhere...
    frames_left[70, :] = frames_right[14, :] = [0.9, 0.05, 0.05]  # ...but one shared blank
    assert seam(left, frames_left, 8.0, right, frames_right, 8.0) == (70, 14)
    frames_left[70] = frames_right[14] = [0.05, 0.9, 0.05]  # none: the middle of the overlap
    assert seam(left, frames_left, 8.0, right, frames_right, 8.0) == (68, 12)


def test_a_line_beyond_the_line_limit_is_squeezed_to_it() -> None:
    model = StripeModel()
    limits = EngineLimits(rec_max_width=640, rec_max_line_width=2000)
    recognizer = TextRecognizer(model, limits=limits)
    recognizer([stripe_line([1, 0] * 2000)], CtcGreedyDecoder(CHARSET))  # 32,000 columns
    assert sum(rows for rows, *_ in model.shapes) == len(recognizer.spans(2000)) == 5
    assert all(width <= 640 for *_, width in model.shapes)


def test_batches_stop_at_the_area_limit() -> None:
    model = StripeModel()
    crops = ArrayCrops([np.full((48, 600, 3), 255, np.uint8)] * 20)
    limits = EngineLimits(rec_max_width=640, rec_max_batch_pixels=48 * 640 * 3)
    TextRecognizer(model, batch_size=100, limits=limits)(crops, CtcGreedyDecoder(CHARSET))
    assert [shape[0] for shape in model.shapes] == [3] * 6 + [2]
    assert all(rows * height * width <= limits.rec_max_batch_pixels
               for rows, _, height, width in model.shapes)


# ---------------------------------------------------------------- warps of very long boxes

def test_a_box_longer_than_opencv_can_warp_is_warped_in_tiles() -> None:
    image = np.random.default_rng(5).integers(0, 256, (24, 70_000, 3), dtype=np.uint8)
    box = np.float32([[3, 2], [69_990, 2], [69_990, 22], [3, 22]])
    crop = crop_rotated(image, box)
    assert crop.shape == (20, 69_987, 3)
    assert np.array_equal(crop, image[2:22, 3:69_990])  # upright: the slice, as one warp gives


def test_a_tall_box_is_warped_in_tiles_and_turned() -> None:
    image = np.random.default_rng(7).integers(0, 256, (70_000, 24, 3), dtype=np.uint8)
    box = np.float32([[2, 3], [22, 3], [22, 69_990], [2, 69_990]])
    crop = crop_rotated(image, box)
    assert crop.shape == (20, 69_987, 3)
    assert np.array_equal(crop, np.rot90(image[3:69_990, 2:22]))


def test_a_tiled_warp_matches_a_single_warp(monkeypatch) -> None:
    from ocr_engine import geometry

    image = np.random.default_rng(6).integers(0, 256, (300, 9000, 3), dtype=np.uint8)
    tilted = np.float32([[100, 40], [8900, 90], [8899, 180], [99, 130]])
    single = crop_rotated(image, tilted)
    monkeypatch.setattr(geometry, "SHRT_MAX", 1000)  # force tiles, of 700 px
    monkeypatch.setattr(geometry, "WARP_TILE", 700)
    assert np.array_equal(crop_rotated(image, tilted), single)


# ---------------------------------------------------------------- the real models

@pytest.fixture
def seen(onnx_engine: OcrEngine, monkeypatch) -> dict[str, list[tuple[int, ...]]]:
    """Every tensor shape each session of the shared engine runs during the test."""
    shapes: dict[str, list[tuple[int, ...]]] = {"det": [], "cls": [], "rec": []}
    stages = {"det": onnx_engine.detector, "cls": onnx_engine.classifier,
              "rec": onnx_engine.recognizer}
    for name, stage in stages.items():
        def run(batch, _name=name, _run=stage.session.run):
            shapes[_name].append(batch.shape)
            return _run(batch)

        monkeypatch.setattr(stage.session, "run", run)
    return shapes


def assert_within_limits(shapes: dict[str, list[tuple[int, ...]]]) -> None:
    for rows, _, height, width in shapes["det"]:
        assert rows == 1 and max(height, width) <= LIMITS.det_max_side
        assert height * width <= LIMITS.det_max_pixels
    for rows, _, height, width in shapes["rec"]:
        assert width <= LIMITS.rec_max_width
        assert rows * height * width <= LIMITS.rec_max_batch_pixels
    for rows, _, height, width in shapes["cls"]:
        assert rows * height * width <= LIMITS.cls_max_batch_pixels


def assert_sane(result, height: int, width: int) -> None:
    assert (result.height, result.width) == (height, width)
    for line in result.lines:
        assert 0.0 <= line.confidence <= 1.0
        assert all(0 <= x <= width and 0 <= y <= height for x, y in line.box)


def png(image: np.ndarray) -> bytes:
    # Pillow, not cv2.imencode: libpng refuses to write rows of millions of pixels.
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[..., ::-1])).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def words(height: int, width: int, text: str = "OK 42", scale: float = 0.6) -> np.ndarray:
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, text, (12, height - 14 if height >= 48 else height - 8),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2)
    return image


def stretched_text(height: int, length: int) -> np.ndarray:
    """A text line stretched along its `length`, so that detection (which squeezes the image
    back into 960 columns) finds boxes tens of thousands of pixels long."""
    small = words(40, 960, "HELLO WORLD 123 HELLO WORLD 456 HELLO", 0.9)
    return cv2.resize(small, (length, height), interpolation=cv2.INTER_NEAREST)


def test_min_4096_on_a_small_image_is_clamped(onnx_engine, seen) -> None:
    image = words(100, 200)
    result = onnx_engine.ocr(png(image), OcrOptions(det_limit_type="min",
                                                    det_limit_side_len=4096))
    assert seen["det"] == [(1, 3, 1984, 4000)]  # not 4096 x 8192
    assert_within_limits(seen)
    assert_sane(result, 100, 200)
    # Enlarged 20x, the two words come out as two boxes.
    assert " ".join(line.text for line in result.lines) == "OK 42"


@pytest.mark.slow
def test_a_large_page_at_max_4096_is_clamped_to_the_area(onnx_engine, seen) -> None:
    image = cv2.resize(words(60, 400, "LARGE PAGE 7", 1.0), (4500, 4500))
    result = onnx_engine.ocr_array(image, OcrOptions(det_limit_side_len=4096))
    assert seen["det"] == [(1, 3, 2976, 2976)]
    assert_within_limits(seen)
    assert_sane(result, 4500, 4500)


@pytest.mark.parametrize("size", [(20, 60_000), (60_000, 20), (20, 20_000)])
def test_without_detection_any_line_is_bounded(onnx_engine, seen, size) -> None:
    height, width = size
    image = cv2.resize(words(24, 600, "a long line of text 0123456789"), (width, height))
    result = onnx_engine.ocr(png(image), OcrOptions(use_det=False))
    assert_within_limits(seen)
    assert_sane(result, height, width)
    assert len(result.lines) <= 1
    if width / height > LIMITS.rec_max_width / 48:  # read in pieces, some batches full
        assert max(shape[3] for shape in seen["rec"]) == LIMITS.rec_max_width


@pytest.mark.slow
def test_the_issue_image_with_boxes_longer_than_opencv_warps(onnx_engine, seen) -> None:
    """20 x 2,000,000: detection finds boxes ~170,000 px long, which reached
    cv2.warpPerspective whole (a 500 with OpenCV's assertion text)."""
    image = stretched_text(20, 2_000_000)
    found = onnx_engine.text_lines(image)
    assert max(found.crops.shape(i)[1] for i in range(len(found.crops))) > 32_767
    result = onnx_engine.ocr(png(image))
    assert_within_limits(seen)
    assert_sane(result, 20, 2_000_000)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1, 40_000_000), (40_000_000, 1), (2, 20_000_000),
                                  (20_000_000, 2)])
@pytest.mark.parametrize("use_det", [True, False], ids=["det", "no-det"])
def test_extreme_aspect_ratios_are_read_or_refused_cleanly(onnx_engine, seen, size,
                                                           use_det) -> None:
    height, width = size
    image = np.full((height, width, 3), 255, np.uint8)
    image[..., ::3, :] = 0
    image[::5] = 0
    try:
        result = onnx_engine.ocr(png(image), OcrOptions(use_det=use_det))
    except OcrError as error:  # refused is fine, as long as it is ours and says why
        assert "cv2" not in str(error) and "OpenCV" not in str(error)
        return
    assert_within_limits(seen)
    assert_sane(result, height, width)


def test_a_long_line_keeps_its_text(onnx_engine, seen) -> None:
    """14 rendered segments side by side (9,590 columns, read in 4 pieces): the long line reads
    what its segments read one by one."""
    segments = []
    for i in range(14):
        text = f"Segment {i:02d} reads {1000 + 37 * i} quick brown fox"
        (width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
        segments.append(words(48, width + 24, text, 1.0))
    options = OcrOptions(use_det=False, use_angle_cls=False, drop_score=0.0)
    alone = "".join(onnx_engine.ocr_array(s, options).lines[0].text for s in segments)
    seen["rec"].clear()
    [line] = onnx_engine.ocr_array(np.hstack(segments), options).lines
    assert len(seen["rec"]) >= 1 and sum(shape[0] for shape in seen["rec"]) >= 3
    assert_within_limits(seen)
    similarity = difflib.SequenceMatcher(None, alone.replace(" ", ""),
                                         line.text.replace(" ", "")).ratio()
    assert similarity >= 0.98, (alone, line.text)


# ---------------------------------------------------------------- RSS of the worst case

WORST_CASE = textwrap.dedent("""
    import json, sys
    import cv2
    import numpy as np
    from ocr_engine import EngineConfig, OcrEngine, OcrOptions, resolve_model_set, setup_process

    def status():
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return {key: int(fields[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}

    setup_process("onnxruntime", 1)
    engine = OcrEngine(EngineConfig(resolve_model_set("ppocr-v4", "onnxruntime"), threads=1))
    engine.warm_up()
    small = np.full((100, 200, 3), 255, np.uint8)
    cv2.putText(small, "OK 42", (5, 92), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2)
    # Detection at the area limit (2016 x 4000), then recognition at its widest batches.
    engine.ocr_array(small, OcrOptions(det_limit_type="min", det_limit_side_len=4096))
    line = cv2.resize(small, (20_000, 20))
    engine.ocr_array(line, OcrOptions(use_det=False))
    print(json.dumps(status()))
""")


@pytest.mark.slow
def test_worst_case_memory_of_one_worker() -> None:
    """Measured: peak ~1.5 GB, ~0.6 GB held after (1.9 GB held without the arena shrinkage).
    The bounds are generous: they catch a limit or the shrinkage gone, not noise."""
    done = subprocess.run([sys.executable, "-c", WORST_CASE], capture_output=True, text=True,
                          cwd=TESTS_DIR.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    memory = json.loads(done.stdout.strip().splitlines()[-1])
    assert memory["VmHWM"] < 2300, memory
    assert memory["VmRSS"] < 1200, memory


def test_limits_default_never_bind_on_paddleocr_settings() -> None:
    # max/960 gives at most 960 x 960; six crops at the widest whole line fit one batch.
    assert max(detection_size(5000, 5000, 960, "max", LIMITS)) == 960
    assert 6 * 48 * LIMITS.rec_max_width <= LIMITS.rec_max_batch_pixels
    assert math.ceil(LIMITS.rec_max_line_width / 48) >= 1000  # 1000:1 lines are not squeezed
