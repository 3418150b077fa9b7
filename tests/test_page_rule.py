"""The page preset's detection rule: A4 pages of real text (6-16 pt, Chinese and English) rendered
at 100, 150, 200 and 300 dpi are read line for line through the real engine with the page rule,
while PaddleOCR's max/960 loses lines of small print on at least one of them (so the rule is
what makes the difference), and the rule's sizes stay within EngineLimits like the others.

The pages and the scoring are bench/page_rule.py's, where the rules are timed side by side.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.page_rule import DPIS, READ_CER, Page, line_cers, lines_read, render_page
from ocr_engine import EngineLimits, OcrEngine, OcrOptions
from ocr_engine.limits import detection_size
from ocr_engine.presets import PRESETS, apply_preset

LIMITS = EngineLimits()
PAGE_SIDE = PRESETS["page"].changes["det_limit_side_len"]


# ---------------------------------------------------------------- the rule's sizes

@pytest.mark.parametrize(("size", "expected"), [
    ((1169, 827), (1184, 832)),    # A4 at 100 dpi: its own size (rounded to 32)
    ((1754, 1240), (1280, 896)),   # 150 dpi: the longer side down to 1280
    ((3508, 2480), (1280, 896)),   # 300 dpi: the same detection input
    ((700, 1000), (704, 992)),     # smaller than the limit: never enlarged
    ((503, 1890), (352, 1280)),
])
def test_page_sizes(size, expected) -> None:
    assert detection_size(*size, PAGE_SIDE, "page", LIMITS) == expected


@settings(max_examples=200, deadline=None)
@given(height=st.integers(1, 40_000_000), width=st.integers(1, 40_000_000),
       limit=st.integers(32, 4096), max_side=st.integers(32, 5000),
       area_factor=st.integers(32, 400))
def test_page_sizes_are_within_any_limits(height, width, limit, max_side, area_factor) -> None:
    limits = EngineLimits(det_max_side=max_side, det_max_pixels=area_factor * max_side)
    out_h, out_w = detection_size(height, width, limit, "page", limits)
    assert out_h % 32 == 0 and out_w % 32 == 0 and min(out_h, out_w) >= 32
    assert max(out_h, out_w) <= max(max_side, 32)
    assert out_h * out_w <= limits.det_max_pixels


# ---------------------------------------------------------------- the rendered pages

@pytest.fixture(scope="module")
def pages() -> dict[int, Page]:
    return {dpi: render_page(dpi) for dpi in DPIS}


def test_the_pages_are_a4_with_small_print(pages) -> None:
    sizes = {dpi: page.image.shape[:2] for dpi, page in pages.items()}
    assert sizes == {100: (1169, 827), 150: (1754, 1240), 200: (2339, 1654),
                     300: (3508, 2480)}
    for page in pages.values():
        assert len(page.lines) == 40
        assert {line.points for line in page.lines} == {16.0, 10.5, 9.0, 8.0, 7.0, 6.0}
        assert any(any("\u4e00" <= char <= "\u9fff" for char in line.text)
                   for line in page.lines)
        assert any(sum(char.isascii() and char.isalpha() for char in line.text) > 20
                   for line in page.lines)
    # The same text in the same place at every resolution.
    assert len({tuple(line.text for line in page.lines) for page in pages.values()}) == 1


def test_the_scoring_counts_lost_and_misread_lines(pages) -> None:
    page = pages[150]
    truth = [(line.text, box_points(line.box)) for line in page.lines]
    assert line_cers(page, truth) == [0.0] * 40
    assert lines_read(line_cers(page, [])) == 0  # nothing found: every line lost
    cut = [(text[: len(text) // 2] if index == 7 else text, box)
           for index, (text, box) in enumerate(truth)]
    cers = line_cers(page, cut)
    assert cers[7] > READ_CER and lines_read(cers) == 39


def box_points(box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    left, top, right, bottom = box
    return [(left, top), (right, top), (right, bottom), (left, bottom)]


def read_page(engine: OcrEngine, page: Page, options: OcrOptions) -> list[float]:
    result = engine.ocr_array(page.image, options)
    return line_cers(page, [(line.text, line.box) for line in result.lines])


def page_options(engine: OcrEngine, **changes) -> OcrOptions:
    # The page preset as a request gets it: the direction classifier on, long lines read by
    # it in windows (cls_long_lines), detection by the page rule.
    options = apply_preset("page", engine.config.defaults)
    assert options.use_angle_cls and options.cls_long_lines == "windows"
    return options.replace(**changes)


def test_the_page_rule_reads_every_line_where_max_960_does_not(onnx_engine, pages) -> None:
    def lost(page: Page, options: OcrOptions) -> list[tuple[int, float, float]]:
        return [(i, page.lines[i].points, round(cer, 3))
                for i, cer in enumerate(read_page(onnx_engine, page, options)) if cer > READ_CER]

    lost_by_page_rule = {dpi: lost(page, page_options(onnx_engine))
                         for dpi, page in pages.items()}
    assert all(not lines for lines in lost_by_page_rule.values()), lost_by_page_rule
    # The rule is what reads them: PaddleOCR's default loses small print. Checked on the
    # issue's page (A4 at 150 dpi, 1240x1754); bench/page_rule.py measures it at every dpi
    # (33-35 of 40 lines read).
    lost_by_max_960 = lost(pages[150], page_options(onnx_engine, det_limit_type="max",
                                                    det_limit_side_len=960))
    assert len(lost_by_max_960) >= 1, lost_by_max_960
    assert all(points <= 7.0 for _, points, _ in lost_by_max_960)


def test_squeezed_into_the_classifier_long_lines_come_out_turned(onnx_engine, pages) -> None:
    # Why the page preset reads long lines in windows: squeezed whole into 48x192 (PaddleOCR's
    # way), full-width lines of a page read as upside down, and are lost (at every dpi in
    # bench/page_rule.py; checked here at 150).
    cers = read_page(onnx_engine, pages[150], page_options(onnx_engine, cls_long_lines="squeeze"))
    assert sum(cer > READ_CER for cer in cers) >= 1, cers
