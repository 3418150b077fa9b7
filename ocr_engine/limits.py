"""Caps on every tensor a request can make the engine build, and the detection clamp.

Images and options are untrusted. Unbounded, `det_limit_type=min` with a side of 4096 asks for a
4096 x 8192 detection input from a 100 x 200 image (6.8 GB in one worker), and a 20,000 x 20
image read as one line asks the recogniser for ~48,000 columns, whose attention layers grow with
the square of the width (3.1 GB). Each limit caps one tensor, and the stages shrink their work to
fit instead of refusing the input: detection is scaled down (as PaddleOCR 3.x clamps it to 4000
px), a line wider than the recogniser's cap is read in overlapping pieces (rec.py), a batch is cut
before its padded area passes the cap. So the worst case per worker is a known figure, measured
with the defaults below (README), whatever the request.

The defaults never bind on PaddleOCR's own settings (det max/960, batches of 6): the text read on
ordinary pages is what it was before the limits existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

# Detection inputs are multiples of 32 (the DB model downsamples 5 times).
DET_MULTIPLE = 32


@dataclass(frozen=True)
class EngineLimits:
    """Per-engine caps; every field is a count of pixels (per channel) or columns.

    det_max_side: longest side of the detection input (PaddleOCR 3.x's max_side_limit).
    det_max_pixels: area of the detection input; with PP-OCRv4 on onnxruntime the detector's
        peak is ~160 bytes per input pixel (9 Mpx: ~1.4 GB).
    rec_max_width: widest recognition input, in columns at the model's height (48); wider
        lines are read in overlapping pieces of this width. PaddleOCR 3.x caps at 3200 too
        (PaddleX's OCRReisizeNormImg.max_imgW) but squeezes the line into it: eval lines
        joined into 15,500 columns read CER 1.0 squeezed, 0.08 in pieces, 0.07 in one
        unbounded pass (3 GB at 48,000 columns: attention grows with the width squared).
    rec_max_line_width: the most columns one line is read at, summed over its pieces; a longer
        line is squeezed to this width first. Bounds the time one absurd line can take (a
        40,000,000 x 1 image read as one line would be 1.9e9 columns); 1000:1 lines such as a
        20,000 x 20 image are read unsqueezed.
    rec_max_batch_pixels: batch x height x padded width of one recognition batch.
    cls_max_batch_pixels: batch x 48 x 192 of one direction-classifier batch.
    """

    det_max_side: int = 4000
    det_max_pixels: int = 9_000_000
    rec_max_width: int = 3200
    rec_max_line_width: int = 50_000
    rec_max_batch_pixels: int = 6 * 48 * 3200
    cls_max_batch_pixels: int = 64 * 48 * 192

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field.name}: must be a positive integer, got {value!r}")
        if self.det_max_side < DET_MULTIPLE:
            raise ValueError(f"det_max_side: must be at least {DET_MULTIPLE}")
        # The 32-px floor of the short side must not break the area cap.
        if self.det_max_pixels < DET_MULTIPLE * self.det_max_side:
            raise ValueError(f"det_max_pixels: must be at least {DET_MULTIPLE} x det_max_side "
                             f"= {DET_MULTIPLE * self.det_max_side}")
        if self.rec_max_width < 320 or self.rec_max_width % DET_MULTIPLE:
            raise ValueError("rec_max_width: must be a multiple of 32, at least 320 (the "
                             "recogniser's base width)")
        if self.rec_max_line_width < self.rec_max_width:
            raise ValueError("rec_max_line_width: must be at least rec_max_width")


def detection_size(height: int, width: int, limit_side_len: int, limit_type: str,
                   limits: EngineLimits) -> tuple[int, int]:
    """(height, width) of the detection input for an image of `height` x `width`.

    First PaddleOCR 2.10's DetResizeForTest type 0: the limited side is brought to
    `limit_side_len` ("max": the longer side down to it, "min": the shorter side up to it), both
    sides rounded to multiples of 32, at least 32. "page" is the page preset's rule: the
    image's own resolution, as PaddleOCR 3.x keeps it, with the longer side brought down to
    `limit_side_len` where it is larger (the preset's 1280; the arithmetic of "max", under a
    name of its own so that the default rule can be tuned without changing what "max" means).
    When that exceeds the limits, the scale is reduced until it fits (both sides then rounded
    down, so the result is within the limits by construction); the aspect ratio is kept except
    where a side meets the 32-px floor.
    """
    if limit_type in ("max", "page"):
        # Page: 6 pt print on an A4 page squeezed to 960 px is ~7 px high and the detector
        # loses some of its lines (at 100, 150 and 300 dpi); at 1280 (or the page's own 1169
        # px at 100 dpi) every line is read. PaddleOCR 3.x's unbounded min/64 reads them too,
        # at 2.1x the page rule's time on the 300 dpi page (bench/page_rule.py).
        longer = max(height, width)
        ratio = limit_side_len / longer if longer > limit_side_len else 1.0
    else:
        shorter = min(height, width)
        ratio = limit_side_len / shorter if shorter < limit_side_len else 1.0
    resize_h = _round_to_multiple(int(height * ratio))
    resize_w = _round_to_multiple(int(width * ratio))
    if (max(resize_h, resize_w) <= limits.det_max_side
            and resize_h * resize_w <= limits.det_max_pixels):
        return resize_h, resize_w
    scaled_h, scaled_w = height * ratio, width * ratio
    shrink = min(limits.det_max_side / max(scaled_h, scaled_w),
                 math.sqrt(limits.det_max_pixels / (scaled_h * scaled_w)))
    resize_h = _floor_to_multiple(scaled_h * shrink)
    resize_w = _floor_to_multiple(scaled_w * shrink)
    # Only a side held at the 32-px floor can leave the area over the cap: take it from the
    # other side (det_max_pixels >= 32 x det_max_side keeps this above the floor).
    while resize_h * resize_w > limits.det_max_pixels:
        if resize_h >= resize_w:
            resize_h -= DET_MULTIPLE
        else:
            resize_w -= DET_MULTIPLE
    return resize_h, resize_w


def _round_to_multiple(value: int) -> int:
    return max(int(round(value / DET_MULTIPLE) * DET_MULTIPLE), DET_MULTIPLE)


def _floor_to_multiple(value: float) -> int:
    return max(int(value) // DET_MULTIPLE * DET_MULTIPLE, DET_MULTIPLE)
