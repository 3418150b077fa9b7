"""The bucket rule (ocr_engine/buckets.py) and the stages that apply it.

No backend turns bucketing on today (padding changed the text of 27 of the 53 conforming eval
pages on OpenVINO; docs/BENCHMARKS.md): these tests hold the rule and its application to their
contracts for the backend that sets `Backend.bounded_shapes`, on the real models.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ocr_engine import EngineLimits, OcrEngine, OcrOptions
from ocr_engine.buckets import DET_LADDER, REC_LADDER, ShapeBuckets, buckets, round_up
from ocr_engine.det import DetPreprocess, TextDetector
from ocr_engine.rec import TextRecognizer


@pytest.mark.parametrize(("value", "expected"), [
    (1, 128), (128, 128), (129, 256), (960, 1024), (1024, 1024), (1025, 1280),
    (3999, 4096), (4096, 4096), (4097, 4097), (0, 0)])
def test_detection_sides_round_up_to_their_rung(value: int, expected: int) -> None:
    assert round_up(value, DET_LADDER) == expected


def test_a_rung_never_rounds_past_its_own_limit() -> None:
    # 3000 with step 256 would be 3072: the rung's limit is its last bucket.
    assert round_up(2990, ((3000, 256),)) == 3000
    assert round_up(3001, ((3000, 256),)) == 3001  # past the ladder: unchanged


def test_recognition_widths_round_up() -> None:
    assert [round_up(w, REC_LADDER) for w in (320, 321, 1280, 1281, 3200)] == [
        320, 480, 1280, 1600, 3200]


def test_bad_ladders_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        ShapeBuckets(det=((512, 64), (256, 64)))
    with pytest.raises(ValueError, match="positive"):
        ShapeBuckets(rec=((512, 0),))


def test_the_shapes_are_few() -> None:
    """Every detection side the engine can build (multiples of 32 up to 4000) lands in 20
    buckets (8 of 128 up to 1024, 12 of 256 up to 4096), so at most 400 shapes; every batch
    width up to 3200 in 14 (8 of 160, 6 of 320)."""
    sides = list(buckets(DET_LADDER, 32, 4000, multiple=32))
    assert len(sides) == 20 and max(sides) == 4096
    assert len(list(buckets(REC_LADDER, 1, 3200))) == 14


def test_buckets_stay_within_the_engine_limits() -> None:
    rule, limits = ShapeBuckets(), EngineLimits()
    for height in range(32, limits.det_max_side + 1, 32):
        for width in (32, 960, 2976, limits.det_max_side):
            if height * width > limits.det_max_pixels:
                continue
            bucket_h, bucket_w = rule.det_shape(height, width, limits.det_max_side,
                                                limits.det_max_pixels)
            assert height <= bucket_h <= limits.det_max_side
            assert width <= bucket_w <= limits.det_max_side
            assert bucket_h * bucket_w <= limits.det_max_pixels
    # At the area limit the input keeps its own shape rather than pass the cap.
    assert rule.det_shape(2976, 3008, 4000, 9_000_000) == (2976, 3008)
    assert rule.rec_width(3100, 3200) == 3200 and rule.rec_width(3300, 3200) == 3300


# ---------------------------------------------------------------- applied in the stages

def test_detection_pads_to_the_bucket_and_crops_the_map_back(onnx_engine: OcrEngine) -> None:
    """The tensor is the bucket's shape, the image in its top-left corner, zeros elsewhere;
    the boxes the detector returns stay inside the image."""
    image = np.full((300, 700, 3), 255, np.uint8)
    cv2.putText(image, "bucketed 0123", (30, 170), cv2.FONT_HERSHEY_SIMPLEX, 2, (0, 0, 0), 4)
    options = OcrOptions()
    plain = DetPreprocess()(image, options)
    padded = DetPreprocess(buckets=ShapeBuckets())(image, options)
    height, width = plain.tensor.shape[2:]
    assert padded.content_shape == (height, width)
    assert padded.tensor.shape[2:] == (round_up(height, DET_LADDER), round_up(width, DET_LADDER))
    np.testing.assert_array_equal(padded.tensor[:, :, :height, :width], plain.tensor)
    assert not padded.tensor[:, :, height:, :].any() and not padded.tensor[:, :, :, width:].any()
    detector = TextDetector(onnx_engine.detector.session, DetPreprocess(buckets=ShapeBuckets()))
    found = detector(image, options)
    assert len(found) >= 1
    assert (found.boxes[..., 0] <= 700).all() and (found.boxes[..., 1] <= 300).all()


def test_detection_shapes_stay_in_the_buckets(onnx_engine: OcrEngine) -> None:
    rng = np.random.default_rng(7)
    preprocess = DetPreprocess(buckets=ShapeBuckets())
    shapes = set()
    for _ in range(60):
        image = np.full((int(rng.integers(40, 1500)), int(rng.integers(40, 1500)), 3), 255,
                        np.uint8)
        shapes.add(preprocess(image, OcrOptions()).tensor.shape[2:])
    allowed = set(buckets(DET_LADDER, 32, 4000, multiple=32))
    assert all(h in allowed and w in allowed for h, w in shapes)
    assert len(shapes) <= 8 * 8  # max/960: both sides at most 960, so in 8 buckets each


def test_recognition_batches_use_bucket_widths_and_read_the_same_kind_of_text(
        onnx_engine: OcrEngine) -> None:
    """Batch widths are buckets (never past rec_max_width); the recogniser still reads a
    rendered line correctly with the extra padding."""
    line = np.full((48, 400, 3), 255, np.uint8)
    cv2.putText(line, "HELLO 2024", (8, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
    narrow = np.ascontiguousarray(line[:, :200])
    session = onnx_engine.recognizer.session
    bucketed = TextRecognizer(session, buckets=ShapeBuckets())
    widths = [batch.tensor.shape[3] for batch in bucketed.batches([line, narrow])]
    allowed = set(buckets(REC_LADDER, 1, 3200))
    assert widths and all(width in allowed for width in widths)
    texts = [r.text for r in bucketed([line], onnx_engine.default_decoder)]
    assert texts == [r.text for r in onnx_engine.recognizer([line], onnx_engine.default_decoder)]
    assert "HELLO" in texts[0]
