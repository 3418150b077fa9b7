"""Unit tests of the engine's pieces: DB post-processing on synthetic probability maps, resizing,
CTC decoding, geometry, options, image decoding; then the engine's contract on real models
(no state kept between calls, result shape, timings, both backends agree)."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ocr_engine import (
    EngineConfig,
    EngineLimits,
    ImageTooLargeError,
    InvalidImageError,
    InvalidOptionError,
    OcrEngine,
    OcrOptions,
    decode_image,
    parse_options,
)
from ocr_engine.det import (
    DetPreprocess,
    boxes_from_probability_map,
    resize_for_detection,
    scale_to_source,
)
from ocr_engine.geometry import crop_rotated, order_points_clockwise, sort_reading_order
from ocr_engine.options import OPTION_NAMES
from ocr_engine.rec import CtcGreedyDecoder, Recognition, build_charset, read_dictionary
from tests.conftest import TESTS_DIR

DEFAULTS = OcrOptions()


# ---------------------------------------------------------------- DB post-processing

def probability_map(height: int = 100, width: int = 200) -> np.ndarray:
    return np.zeros((height, width), np.float32)


def expected_unclipped(x0: int, y0: int, x1: int, y1: int, ratio: float = 1.5
                       ) -> tuple[float, float, float, float]:
    """Where DB puts the box of a filled rectangle [x0..x1] x [y0..y1] (inclusive pixels): the
    contour's rectangle is (x1-x0) x (y1-y0), grown on every side by area * ratio / perimeter."""
    width, height = x1 - x0, y1 - y0
    grow = width * height * ratio / (2 * (width + height))
    return x0 - grow, y0 - grow, x1 + grow, y1 + grow


def box_extent(box: np.ndarray) -> tuple[int, int, int, int]:
    return int(box[:, 0].min()), int(box[:, 1].min()), int(box[:, 0].max()), int(box[:, 1].max())


def test_one_rectangle_gives_one_unclipped_box() -> None:
    prob = probability_map()
    prob[40:60, 50:150] = 0.9
    boxes, scores = boxes_from_probability_map(prob, 100, 200, DEFAULTS)
    assert boxes.shape == (1, 4, 2)
    assert scores == [pytest.approx(0.9, abs=1e-6)]
    assert box_extent(boxes[0]) == pytest.approx(expected_unclipped(50, 40, 149, 59), abs=1)


def test_boxes_are_scaled_to_the_source_image() -> None:
    prob = probability_map()
    prob[40:60, 50:150] = 0.9
    boxes, _ = boxes_from_probability_map(prob, 300, 800, DEFAULTS)  # map is 1/3 x 1/4 of it
    x0, y0, x1, y1 = expected_unclipped(50, 40, 149, 59)
    assert box_extent(boxes[0]) == pytest.approx((x0 * 4, y0 * 3, x1 * 4, y1 * 3), abs=4)


@pytest.mark.parametrize("map_side, source_side, value, expected", [
    (288, 291, 48.0, 49),   # 48.4999... in PaddleOCR's float32/float64 mix; 48 in float32 alone
    (960, 1000, 84.0, 87),  # 87.4999... there; exactly 87.5 (rounds to 88) in float32 alone
    (960, 1000, 12.0, 13),
])
def test_scaling_to_the_source_rounds_like_paddleocr(map_side, source_side, value,
                                                     expected) -> None:
    box = np.full((4, 2), value, np.float32)
    scaled = scale_to_source(box, map_side, map_side, source_side, source_side)
    assert scaled.dtype == np.int32 and (scaled == expected).all()


def test_boxes_are_clipped_to_the_image() -> None:
    prob = probability_map()
    prob[0:20, 0:100] = 0.9  # touching the corner: unclip reaches outside
    boxes, _ = boxes_from_probability_map(prob, 100, 200, DEFAULTS)
    assert boxes[0].min() == 0


def test_two_blobs_give_two_boxes() -> None:
    prob = probability_map()
    prob[20:40, 20:90] = 0.8
    prob[60:80, 110:190] = 0.95
    boxes, scores = boxes_from_probability_map(prob, 100, 200, DEFAULTS)
    assert len(boxes) == 2
    extents = sorted(box_extent(box) for box in boxes)
    assert extents[0] == pytest.approx(expected_unclipped(20, 20, 89, 39), abs=1)
    assert extents[1] == pytest.approx(expected_unclipped(110, 60, 189, 79), abs=1)
    assert sorted(scores) == [pytest.approx(0.8), pytest.approx(0.95)]


def test_blob_below_box_thresh_is_dropped() -> None:
    prob = probability_map()
    prob[10:30, 20:90] = 0.5  # over the binarisation threshold (0.3), under box_thresh (0.6)
    prob[60:80, 110:190] = 0.65
    boxes, scores = boxes_from_probability_map(prob, 100, 200, DEFAULTS)
    assert len(boxes) == 1 and scores == [pytest.approx(0.65)]
    assert len(boxes_from_probability_map(prob, 100, 200, DEFAULTS.replace(
        det_db_box_thresh=0.4))[0]) == 2


def test_blob_below_binarisation_threshold_is_not_text() -> None:
    prob = probability_map()
    prob[10:30, 20:90] = 0.25
    assert len(boxes_from_probability_map(prob, 100, 200, DEFAULTS)[0]) == 0
    assert len(boxes_from_probability_map(prob, 100, 200, DEFAULTS.replace(
        det_db_thresh=0.2, det_db_box_thresh=0.2))[0]) == 1


def test_thin_blob_is_dropped() -> None:
    prob = probability_map()
    prob[50:52, 20:180] = 0.9  # 2 px tall: shorter than the 3 px minimum side
    assert len(boxes_from_probability_map(prob, 100, 200, DEFAULTS)[0]) == 0


def test_empty_map_gives_no_boxes() -> None:
    boxes, scores = boxes_from_probability_map(probability_map(), 100, 200, DEFAULTS)
    assert boxes.shape == (0, 4, 2) and scores == []


def test_dilation_merges_a_one_pixel_gap() -> None:
    prob = probability_map()
    prob[40:60, 20:100] = 0.9
    prob[40:60, 101:180] = 0.9  # column 100 is a 1-px gap
    assert len(boxes_from_probability_map(prob, 100, 200, DEFAULTS)[0]) == 2
    merged, _ = boxes_from_probability_map(prob, 100, 200, DEFAULTS.replace(use_dilation=True))
    assert len(merged) == 1
    x0, _, x1, _ = box_extent(merged[0])
    assert x0 < 20 and x1 > 179


def test_slow_score_follows_the_contour_fast_score_its_rectangle() -> None:
    # An L shape fills a quarter of its bounding rectangle: fast (rectangle) scores it about
    # 0.9 / 4, slow (contour polygon) about 0.9.
    prob = probability_map()
    prob[60:70, 20:120] = 0.9
    prob[10:70, 20:30] = 0.9
    assert len(boxes_from_probability_map(prob, 100, 200, DEFAULTS)[0]) == 0
    boxes, scores = boxes_from_probability_map(prob, 100, 200,
                                               DEFAULTS.replace(det_db_score_mode="slow"))
    assert len(boxes) == 1 and scores[0] > 0.8


# ---------------------------------------------------------------- detection resize

def resized_shape(height: int, width: int, limit: int, limit_type: str,
                  limits: EngineLimits | None = None) -> tuple[int, int]:
    image = np.zeros((height, width, 3), np.uint8)
    return resize_for_detection(image, limit, limit_type, limits).shape[:2]


# PaddleOCR's policy alone; test_engine_limits checks the clamp the engine's limits add.
UNBOUNDED = EngineLimits(det_max_side=100_000, det_max_pixels=10**10)


@pytest.mark.parametrize(("size", "limit", "limit_type", "expected"), [
    ((500, 1000), 960, "max", (480, 960)),     # longer side brought down to the limit
    ((700, 1000), 960, "max", (672, 960)),     # 672 = 32 * round(672 / 32)
    ((100, 50), 960, "max", (96, 64)),         # small: not enlarged, only rounded to 32s
    ((100, 400), 736, "min", (736, 2944)),     # shorter side brought up to the limit
    ((1000, 2000), 736, "min", (992, 1984)),   # large: not reduced; round(62.5) is 62
    ((10, 10), 960, "max", (32, 32)),          # never below 32
    ((5, 300), 960, "max", (32, 288)),
])
def test_resize_for_detection(size, limit, limit_type, expected) -> None:
    assert resized_shape(*size, limit, limit_type) == expected


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 2500), width=st.integers(1, 2500), limit=st.integers(32, 1600))
def test_max_policy_gives_multiples_of_32_within_the_limit(height, width, limit) -> None:
    out_h, out_w = resized_shape(height, width, limit, "max")
    assert out_h % 32 == 0 and out_w % 32 == 0 and min(out_h, out_w) >= 32
    assert max(out_h, out_w) <= limit + 16  # rounding to a multiple of 32 adds at most 16


# Bounded sizes: the min policy scales the longer side up too, so a 1 x 2500 input would ask
# for gigabytes.
@settings(max_examples=40, deadline=None)
@given(height=st.integers(50, 400), width=st.integers(50, 400), limit=st.integers(32, 736))
def test_min_policy_gives_multiples_of_32_at_least_the_limit(height, width, limit) -> None:
    out_h, out_w = resized_shape(height, width, limit, "min", UNBOUNDED)
    assert out_h % 32 == 0 and out_w % 32 == 0 and min(out_h, out_w) >= 32
    assert min(out_h, out_w) >= limit - 16  # brought up to the limit, or already over it


def test_tiny_image_is_padded_but_boxes_map_to_its_own_size() -> None:
    det_input = DetPreprocess()(np.full((10, 20, 3), 255, np.uint8), DEFAULTS)
    assert det_input.tensor.shape == (1, 3, 32, 32)
    assert (det_input.src_height, det_input.src_width) == (10, 20)


def test_detection_input_is_imagenet_normalised_bgr() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 255  # blue, first in BGR
    tensor = DetPreprocess()(image, DEFAULTS).tensor
    assert tensor.dtype == np.float32
    assert tensor[0, 0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)
    assert tensor[0, 1, 0, 0] == pytest.approx(-0.456 / 0.224, rel=1e-5)


# ---------------------------------------------------------------- CTC decoding and the charset

CHARSET = build_charset(["a", "b", "c"])  # blank, a, b, c, space
decode = CtcGreedyDecoder(CHARSET)


def one_hot(indices: list[int], peaks: list[float] | None = None) -> np.ndarray:
    """(1, T, C) probabilities peaking at the given index per step (at 0.9 unless given)."""
    peaks = peaks or [0.9] * len(indices)
    probs = np.full((1, len(indices), len(CHARSET)), 0.01, np.float32)
    for step, (index, peak) in enumerate(zip(indices, peaks, strict=True)):
        probs[0, step, index] = peak
    return probs


def test_ctc_repeats_collapse() -> None:
    assert decode(one_hot([1, 1, 1, 2, 2, 3]))[0].text == "abc"


def test_ctc_blank_separates_repeats() -> None:
    assert decode(one_hot([1, 1, 0, 1, 2]))[0].text == "aab"


def test_ctc_space_is_the_last_class() -> None:
    assert decode(one_hot([1, 4, 2]))[0].text == "a b"


def test_ctc_all_blank_is_empty_with_zero_score() -> None:
    assert decode(one_hot([0, 0, 0])) == [Recognition("", 0.0)]


def test_ctc_score_is_the_mean_of_the_kept_characters() -> None:
    # Kept: step 0 (a, 0.9) and step 3 (b, 0.6); the repeat and the blank do not count.
    recognition = decode(one_hot([1, 1, 0, 2], [0.9, 0.5, 0.7, 0.6]))[0]
    assert recognition.text == "ab" and recognition.score == pytest.approx(0.75)


def test_ctc_decodes_each_row_of_a_batch() -> None:
    batch = np.concatenate([one_hot([1, 0, 2]), one_hot([3, 3, 0])])
    assert [recognition.text for recognition in decode(batch)] == ["ab", "c"]


def test_build_charset() -> None:
    assert build_charset(["x", "y"]) == ["blank", "x", "y", " "]
    assert build_charset(["x", "y"], use_space_char=False) == ["blank", "x", "y"]


def test_read_dictionary() -> None:
    assert read_dictionary("a\nb\r\nc") == ["a", "b", "c"]
    assert read_dictionary("") == []
    assert read_dictionary("a\n \nb") == ["a", " ", "b"]  # a space entry is a character


# ---------------------------------------------------------------- geometry

def box_at(x: float, y: float, width: float = 50, height: float = 20) -> np.ndarray:
    return np.float32([[x, y], [x + width, y], [x + width, y + height], [x, y + height]])


def test_reading_order_top_to_bottom() -> None:
    boxes = [box_at(10, 100), box_at(10, 10), box_at(10, 50)]
    assert [b[0][1] for b in sort_reading_order(np.array(boxes))] == [10, 50, 100]


def test_reading_order_same_row_within_10_px_goes_left_to_right() -> None:
    right_higher, left_lower = box_at(200, 20), box_at(10, 29)  # 9 px apart: one row
    ordered = sort_reading_order(np.array([right_higher, left_lower]))
    assert [b[0][0] for b in ordered] == [10, 200]


def test_reading_order_10_px_apart_is_another_row() -> None:
    right_higher, left_lower = box_at(200, 20), box_at(10, 30)
    ordered = sort_reading_order(np.array([left_lower, right_higher]))
    assert [b[0][0] for b in ordered] == [200, 10]


def test_reading_order_of_nothing() -> None:
    assert sort_reading_order(np.zeros((0, 4, 2), np.float32)) == []


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (2, 0, 3, 1), (3, 2, 1, 0), (1, 3, 0, 2)])
def test_order_points_clockwise(order) -> None:
    upright = box_at(10, 20, 100, 30)
    assert np.array_equal(order_points_clockwise(upright[list(order)]), upright)
    tilted = np.float32([[10, 30], [110, 20], [113, 50], [13, 60]])  # a few degrees clockwise
    assert np.array_equal(order_points_clockwise(tilted[list(order)]), tilted)


def test_upright_crop_is_the_array_slice() -> None:
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    crop = crop_rotated(image, box_at(10, 20, 100, 40))
    assert np.array_equal(crop, image[20:60, 10:110])


def test_tall_crop_is_turned_to_read_left_to_right() -> None:
    image = np.random.default_rng(1).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    crop = crop_rotated(image, box_at(10, 20, 20, 60))  # 60 tall, 20 wide
    assert crop.shape == (20, 60, 3)
    assert np.array_equal(crop, np.rot90(image[20:80, 10:30]))


def test_slightly_tall_crop_is_kept_upright() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    assert crop_rotated(image, box_at(10, 20, 20, 29)).shape == (29, 20, 3)  # ratio < 1.5


# ---------------------------------------------------------------- options

def test_defaults_are_paddleocr_pp_ocrv4_defaults() -> None:
    assert (DEFAULTS.det_limit_type, DEFAULTS.det_limit_side_len) == ("max", 960)
    assert (DEFAULTS.det_db_thresh, DEFAULTS.det_db_box_thresh, DEFAULTS.det_db_unclip_ratio) \
        == (0.3, 0.6, 1.5)
    assert (DEFAULTS.use_dilation, DEFAULTS.det_db_score_mode) == (False, "fast")
    assert (DEFAULTS.cls_thresh, DEFAULTS.drop_score, DEFAULTS.use_angle_cls) == (0.9, 0.5, True)


def test_parse_form_strings() -> None:
    options = parse_options({"use_angle_cls": "false", "det_limit_side_len": "1280",
                             "det_db_box_thresh": "0.7", "det_limit_type": " MIN ",
                             "use_dilation": "1", "det_db_score_mode": "Slow"})
    assert options == DEFAULTS.replace(use_angle_cls=False, det_limit_side_len=1280,
                                       det_db_box_thresh=0.7, det_limit_type="min",
                                       use_dilation=True, det_db_score_mode="slow")


def test_parse_nothing_gives_the_defaults() -> None:
    assert parse_options({}) == DEFAULTS
    base = DEFAULTS.replace(drop_score=0.1)
    assert parse_options({}, base) is base
    assert parse_options({"use_dilation": True}, base).drop_score == 0.1


@pytest.mark.parametrize(("raw", "value"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True), (True, True),
    (1, True),
    ("false", False), ("0", False), ("no", False), ("off", False), (" False ", False),
    (False, False), (0, False),
])
def test_parse_booleans(raw, value) -> None:
    assert parse_options({"use_dilation": raw}).use_dilation is value


@pytest.mark.parametrize("raw", ["maybe", "", "2", 2, -1, 0.5, None, [True]])
def test_parse_rejects_non_booleans(raw) -> None:
    with pytest.raises(InvalidOptionError) as error:
        parse_options({"use_dilation": raw})
    assert error.value.name == "use_dilation"


def test_unknown_option_is_named() -> None:
    with pytest.raises(InvalidOptionError, match="det_limt_side_len") as error:
        parse_options({"det_limt_side_len": "960"})
    assert error.value.name == "det_limt_side_len"
    assert error.value.code == "invalid_option"


@pytest.mark.parametrize(("name", "raw"), [
    ("det_limit_side_len", "10"), ("det_limit_side_len", 100000), ("det_limit_side_len", "-960"),
    ("drop_score", "1.5"), ("drop_score", -0.1), ("cls_thresh", "2"),
    ("det_db_unclip_ratio", "0"), ("det_db_unclip_ratio", 11),
    ("det_limit_type", "avg"), ("det_db_score_mode", "medium"),
])
def test_parse_rejects_out_of_range(name, raw) -> None:
    with pytest.raises(InvalidOptionError) as error:
        parse_options({name: raw})
    assert error.value.name == name


@pytest.mark.parametrize("raw", ["nan", "NaN", float("nan"), "inf", float("-inf"), "1e999"])
def test_parse_rejects_non_finite_numbers(raw) -> None:
    with pytest.raises(InvalidOptionError, match="drop_score"):
        parse_options({"drop_score": raw})


@pytest.mark.parametrize(("name", "raw"), [
    ("det_limit_side_len", "960.5"), ("det_limit_side_len", 960.5), ("det_limit_side_len", True),
    ("det_limit_side_len", "nine hundred"), ("det_limit_side_len", "9" * 40),
    ("det_limit_side_len", [960]), ("drop_score", True), ("drop_score", "0.5.1"),
    ("drop_score", {"value": 0.5}), ("drop_score", "1" * 40), ("det_limit_type", 5),
    ("det_limit_type", None),
])
def test_parse_rejects_wrong_types(name, raw) -> None:
    with pytest.raises(InvalidOptionError) as error:
        parse_options({name: raw})
    assert error.value.name == name


def test_parse_accepts_numbers_as_numbers() -> None:
    options = parse_options({"det_limit_side_len": 1280.0, "drop_score": 1, "cls_thresh": "  0.8"})
    assert (options.det_limit_side_len, options.drop_score, options.cls_thresh) == (1280, 1.0, 0.8)
    assert isinstance(options.det_limit_side_len, int)


def test_options_validate_on_construction() -> None:
    with pytest.raises(InvalidOptionError, match="det_db_thresh"):
        OcrOptions(det_db_thresh=1.2)
    with pytest.raises(InvalidOptionError, match="det_limit_type"):
        DEFAULTS.replace(det_limit_type="both")


def test_cache_key_is_canonical() -> None:
    forward = parse_options({"drop_score": "0.7", "use_dilation": "true",
                             "det_limit_side_len": "1280"})
    backward = parse_options({"det_limit_side_len": 1280, "use_dilation": True, "drop_score": 0.7})
    assert forward.cache_key() == backward.cache_key()
    assert parse_options({}).cache_key() == DEFAULTS.cache_key()
    assert forward.cache_key() != DEFAULTS.cache_key()
    assert DEFAULTS.replace(drop_score=0.51).cache_key() != DEFAULTS.cache_key()
    assert set(json.loads(DEFAULTS.cache_key())) == set(OPTION_NAMES)


def test_cache_key_ignores_how_a_value_was_spelt() -> None:
    keys = {parse_options({"use_angle_cls": raw, "det_limit_type": kind}).cache_key()
            for raw, kind in (("0", "MAX"), ("false", "max"), (False, " max"), ("off", "Max"))}
    assert len(keys) == 1


# ---------------------------------------------------------------- image decoding

def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def sample_rgb(width: int = 64, height: int = 48) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = 200  # red
    pixels[: height // 2, :, 2] = 100
    return Image.fromarray(pixels, "RGB")


def assert_bgr(image: np.ndarray, height: int, width: int) -> None:
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert image.flags["C_CONTIGUOUS"]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_colour_png_is_bgr() -> None:
    image = decode_image(encode(sample_rgb(), "PNG"))
    assert_bgr(image, 48, 64)
    assert tuple(image[40, 0]) == (0, 0, 200)  # B, G, R
    assert tuple(image[0, 0]) == (100, 0, 200)


@pytest.mark.parametrize("data", [
    b"",
    b"hello, this is plain text, not an image\n" * 4,
    b"<!DOCTYPE html><html><body><img src='x.png'></body></html>",
    b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    b"\x89PNG\r\n\x1a\n",  # a signature and nothing after it
    b"\xff\xd8\xff",  # the start of a JPEG and nothing after it
], ids=["empty", "text", "html", "pdf", "png-signature", "jpeg-start"])
def test_non_images_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(data)


def test_zip_is_invalid() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("image.png", encode(sample_rgb(), "PNG"))
    with pytest.raises(InvalidImageError):
        decode_image(buffer.getvalue())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_invalid(fmt: str) -> None:
    noise = np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixel data: decoding it would fail as corrupt,
    so ImageTooLargeError shows the size was refused before any decoding."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header() -> None:
    # 10 Gpx: over twice Pillow's own global limit, where Image.open itself refuses.
    with pytest.raises(ImageTooLargeError, match="too large"):
        decode_image(png_header_only(100_000, 100_000))


def test_image_over_our_limit_is_refused_from_its_header() -> None:
    # 100 Mpx: under Pillow's refusal, over our 40 Mpx default; our check names the size.
    with pytest.raises(ImageTooLargeError, match="10000x10000"):
        decode_image(png_header_only(10_000, 10_000))
    with pytest.raises(InvalidImageError):  # within the limit it is read, and is corrupt
        decode_image(png_header_only(100, 100))


def test_pixel_limit_is_per_call() -> None:
    data = encode(sample_rgb(100, 100), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=9_999)
    assert_bgr(decode_image(data, max_pixels=10_000), 100, 100)


def test_one_pixel_image() -> None:
    assert_bgr(decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")), 1, 1)


def test_grey_png() -> None:
    image = decode_image(encode(Image.new("L", (30, 20), 77), "PNG"))
    assert_bgr(image, 20, 30)
    assert (image == 77).all()


def test_one_bit_png() -> None:
    bits = Image.new("1", (30, 20), 0)
    bits.putpixel((5, 5), 1)
    image = decode_image(encode(bits, "PNG"))
    assert_bgr(image, 20, 30)
    assert tuple(image[5, 5]) == (255, 255, 255) and tuple(image[0, 0]) == (0, 0, 0)


def test_sixteen_bit_png_is_scaled_to_eight() -> None:
    levels = np.array([[0, 32768, 65535]], np.uint16)
    data = encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode_image(data)
    assert_bgr(image, 1, 3)
    assert image[0, :, 0].tolist() == [0, 128, 255]


def test_palette_png_with_transparency() -> None:
    palette = Image.new("P", (30, 20), 0)
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # 0: white, 1: black
    palette.paste(1, (10, 5, 20, 15))
    data = encode(palette, "PNG", transparency=0)  # the white background is transparent
    image = decode_image(data)
    assert_bgr(image, 20, 30)
    # Dark visible pixels: the transparent area is composited onto white.
    assert tuple(image[10, 15]) == (0, 0, 0) and tuple(image[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize(("text", "background"), [(0, 255), (255, 0)])
def test_transparent_png_gets_a_contrasting_background(text: int, background: int) -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 128  # colour of the invisible pixels must not matter
    rgba[5:15, 10:20] = (text, text, text, 255)
    image = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(image[10, 15]) == (text,) * 3 and tuple(image[0, 0]) == (background,) * 3


def test_fully_transparent_png_is_white() -> None:
    image = decode_image(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"))
    assert (image == 255).all()


def test_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)  # red
    image = decode_image(data)
    assert_bgr(image, 30, 40)
    blue, green, red = image[15, 20].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (20, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    image = decode_image(data)
    assert_bgr(image, 10, 20)
    assert tuple(image[5, 5]) == (0, 0, 255)  # red, in BGR


def test_multi_page_tiff_gives_its_first_page() -> None:
    pages = [Image.new("RGB", (20, 10), (0, 255, 0)), Image.new("RGB", (40, 30), (0, 0, 255))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    image = decode_image(data)
    assert_bgr(image, 10, 20)
    assert tuple(image[5, 5]) == (0, 255, 0)


@pytest.mark.parametrize(("fmt", "params"), [("WEBP", {"lossless": True}), ("BMP", {}),
                                             ("JPEG", {"quality": 95})])
def test_other_formats(fmt: str, params: dict) -> None:
    image = decode_image(encode(sample_rgb(), fmt, **params))
    assert_bgr(image, 48, 64)
    assert np.abs(image[40, 10].astype(int) - (0, 0, 200)).max() <= 8


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 tall, left half bright
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    image = decode_image(encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95))
    assert_bgr(image, 40, 20)
    assert image[5, 10].mean() > 200 and image[35, 10].mean() < 50  # left half is now on top


# ---------------------------------------------------------------- the engine on real models

def rendered_page(lines: tuple[str, ...] = ("SIMPLE PAGE 2024", "hello world 42")) -> np.ndarray:
    page = np.full((260, 640, 3), 255, np.uint8)
    for row, text in enumerate(lines):
        cv2.putText(page, text, (30, 80 + 100 * row), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 3)
    return page


def png_of(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def page_result(onnx_engine: OcrEngine):
    return onnx_engine.ocr(png_of(rendered_page()))


def test_engine_reads_a_rendered_page(page_result) -> None:
    assert [line.text for line in page_result.lines] == ["SIMPLE PAGE 2024", "hello world 42"]


def test_a_call_never_changes_the_next(onnx_engine: OcrEngine, page_result) -> None:
    defaults_before = onnx_engine.config.defaults
    odd = OcrOptions(use_angle_cls=False, det_limit_side_len=64, det_limit_type="min",
                     det_db_thresh=0.1, det_db_box_thresh=0.1, det_db_unclip_ratio=4.0,
                     use_dilation=True, det_db_score_mode="slow", cls_thresh=0.1, drop_score=0.0)
    odd_result = onnx_engine.ocr(png_of(rendered_page()), odd)
    assert odd_result.lines != page_result.lines  # the options did change that call
    onnx_engine.ocr(png_of(rendered_page()), OcrOptions(use_det=False))
    assert onnx_engine.ocr(png_of(rendered_page())).lines == page_result.lines
    assert onnx_engine.config.defaults is defaults_before == OcrOptions()


def test_result_dict_shape(page_result) -> None:
    body = page_result.to_dict()
    assert set(body) == {"width", "height", "lines", "text", "timings_ms"}
    assert (body["width"], body["height"]) == (640, 260)
    assert body["text"] == "SIMPLE PAGE 2024\nhello world 42"
    for line in body["lines"]:
        assert set(line) == {"text", "confidence", "box"}
        assert 0.5 <= line["confidence"] <= 1.0
        assert len(line["box"]) == 4
        assert all(len(point) == 2 and all(isinstance(v, int) for v in point)
                   for point in line["box"])
        (left, top), (right, _), (_, bottom), _ = line["box"]
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 260
    assert json.loads(json.dumps(body, ensure_ascii=False)) == body


def test_timings_present(page_result) -> None:
    timings = page_result.timings_ms
    assert set(timings) == {"decode", "det", "cls", "rec", "total"}
    assert all(value >= 0 for value in timings.values())
    assert timings["total"] >= timings["det"] + timings["cls"] + timings["rec"]


def test_timings_skip_stages_that_did_not_run(onnx_engine: OcrEngine) -> None:
    blank = onnx_engine.ocr_array(np.full((100, 100, 3), 255, np.uint8))
    assert blank.lines == [] and set(blank.timings_ms) == {"det", "total"}
    no_det = onnx_engine.ocr_array(rendered_page(("word",)), OcrOptions(use_det=False,
                                                                       use_angle_cls=False))
    assert set(no_det.timings_ms) == {"rec", "total"}


def test_without_detection_the_line_is_the_whole_image(onnx_engine: OcrEngine) -> None:
    crop = rendered_page(("HELLO",))[30:100, 20:200]
    result = onnx_engine.ocr_array(crop, OcrOptions(use_det=False, drop_score=0.0))
    assert [line.text for line in result.lines] == ["HELLO"]
    assert result.lines[0].box == ((0, 0), (180, 0), (180, 70), (0, 70))


def test_tiny_images_have_no_lines(onnx_engine: OcrEngine) -> None:
    assert onnx_engine.ocr(encode(Image.new("RGB", (1, 1), (0, 0, 0)), "PNG")).lines == []
    assert onnx_engine.ocr_array(np.zeros((3, 500, 3), np.uint8)).lines == []


def test_warm_up_runs(onnx_engine: OcrEngine) -> None:
    onnx_engine.warm_up()


def test_both_backends_read_the_same(onnx_engine: OcrEngine, paddle_engine: OcrEngine) -> None:
    # The whole eval corpus runs on both backends in test_conformance; this is the quick check.
    for page in (rendered_page(), cv2.rotate(rendered_page(("ROTATED TEXT", "upside down")),
                                             cv2.ROTATE_180)):
        ours = onnx_engine.ocr_array(page)
        theirs = paddle_engine.ocr_array(page)
        assert [line.text for line in ours.lines] == [line.text for line in theirs.lines]
        for mine, other in zip(ours.lines, theirs.lines, strict=True):
            assert np.abs(np.array(mine.box) - np.array(other.box)).max() <= 2
            assert math.isclose(mine.confidence, other.confidence, abs_tol=1e-3)


def test_both_backends_use_the_same_dictionary(onnx_engine: OcrEngine,
                                               paddle_engine: OcrEngine) -> None:
    # ONNX carries it as metadata, the Paddle set as ppocr_keys_v1.txt: 6623 + blank + space.
    assert onnx_engine.charset == paddle_engine.charset
    assert len(onnx_engine.charset) == 6625


# ---------------------------------------------------------------- process-wide settings

def test_building_an_engine_changes_nothing_process_wide(onnx_engine: OcrEngine) -> None:
    threads, environment = cv2.getNumThreads(), dict(os.environ)
    cv2.setNumThreads(3)
    try:
        OcrEngine(EngineConfig(onnx_engine.config.models, threads=1))
        assert cv2.getNumThreads() == 3 and dict(os.environ) == environment
    finally:
        cv2.setNumThreads(threads)


SETUP_CHECK = """
import os, cv2
from ocr_engine import BackendSetupError, EngineConfig, OcrEngine, resolve_model_set
from ocr_engine.backends import setup_process
try:
    OcrEngine(EngineConfig(resolve_model_set("ppocr-v4", "paddle")))
except BackendSetupError as error:
    print("refused:", error)
setup_process("paddle", 3)
print(os.environ["FLAGS_enable_pir_api"], os.environ["OMP_NUM_THREADS"], cv2.getNumThreads())
"""


def test_paddle_needs_its_process_setup_and_says_so() -> None:
    """In a fresh process: a paddle engine built without setup_process is refused with a
    message that names the call (PIR would crash it later); the setup sets what it must."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("FLAGS_enable_pir_api", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", SETUP_CHECK], capture_output=True, text=True,
                          env=environment, cwd=TESTS_DIR.parent, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    refused, settings_line = done.stdout.strip().splitlines()[-2:]
    assert refused.startswith("refused:") and "setup_process('paddle'" in refused
    assert settings_line.split() == ["0", "3", "3"]
