"""Named option bundles: what a request's `preset` (and config's default preset) stands for.

A preset is a partial set of options applied over a base (the server's configured defaults);
the request's own option fields are applied after it by the caller (server/request.py
option_bases). A preset names only what it is about, so an operator's other settings survive
it, except `paddleocr`, which is a whole reference configuration and sets every option.

Why each one, measured (docs/BENCHMARKS.md, "The page preset's detection rule"; DESIGN.md):
- `page` (the default): PaddleOCR's max/960 loses lines of 6 pt print on A4 pages (the page
  is squeezed until that print is ~7 px high); the page rule reads every line at 100 to 300
  dpi for a bounded cost on ordinary images.
- `paddleocr`: PaddleOCR 2.x's exact defaults, what the conformance and differential suites
  compare against.
- `line`: a crop that holds one line needs no detection (not measured here; the plate study in
  DESIGN.md, 98% exact on 94x24 crops, reads its crops without it).
- `plate`: licence plates through the plate grammar (ocr_engine/plates.py): a plate crop is
  read whole, a photo is detected with min/736 and dilation, so the 7-8 characters of a plate
  a few percent of the frame wide stay tall enough to detect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InvalidOptionError
from .options import OPTION_NAMES, OcrOptions, describe_value, option_spec
from .plates import PLATE_DETECTION


@dataclass(frozen=True)
class Preset:
    """One bundle: its name, a one-line description (README, OpenAPI) and the options it sets."""

    name: str
    description: str
    changes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.changes) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(f"preset {self.name}: unknown options {', '.join(unknown)}")
        for option, value in self.changes.items():
            option_spec(option).check(value)  # a wrong value fails at import, not per request
        # Frozen all the way down: a preset is shared by every request that names it.
        object.__setattr__(self, "changes", MappingProxyType(dict(self.changes)))


# PaddleOCR 2.x's defaults for PP-OCRv4 (tools/infer/utility.py, predict_system.py; DESIGN.md
# "Reference behaviour"), every option set so that the preset means the same over any base.
# use_det and text_grammar are ours: PaddleOCR always detects and decodes freely.
_PADDLEOCR = {
    "use_angle_cls": True, "use_det": True, "det_limit_side_len": 960, "det_limit_type": "max",
    "det_db_thresh": 0.3, "det_db_box_thresh": 0.6, "det_db_unclip_ratio": 1.5,
    "use_dilation": False, "det_db_score_mode": "fast", "cls_thresh": 0.9, "drop_score": 0.5,
    "text_grammar": "none", "cls_long_lines": "squeeze",
}

# The page rule (limits.detection_size, type "page"): the image's own resolution, its longer
# side brought down to at most 1280 px, and the direction classifier reading long lines in
# windows. Measured on A4 pages of 6-16 pt print rendered at 100, 150, 200 and 300 dpi
# (bench/page_rule.py, classifier on): all 40 lines read at every resolution. Squeezed into
# the classifier's 48x192 input (PaddleOCR's way), a page's full-width lines (35:1) come out
# turned 180 degrees and are lost (27-37 of 40 read, whatever the detection rule); with the
# classifier off, max/960 still loses a 6 pt line at 100, 150 and 300 dpi. PaddleOCR 3.x's
# resolution-preserving min/64 costs 12x max/960 on a 12 Mpx photo, this 1.4x. On the shared
# eval images the preset costs +7.5% CPU over max/960 (docs/BENCHMARKS.md).
_PAGE = {"det_limit_type": "page", "det_limit_side_len": 1280, "cls_long_lines": "windows"}

PRESETS: Mapping[str, Preset] = MappingProxyType({preset.name: preset for preset in (
    Preset("page", "reads small print on large pages (6 pt at 100-300 dpi) for a bounded "
           "cost on other images: the default", _PAGE),
    Preset("paddleocr", "PaddleOCR 2.x's exact defaults (det max/960): the conformance "
           "suite's settings", _PADDLEOCR),
    Preset("line", "the image is one text line: no detection", {"use_det": False}),
    Preset("plate", "Chinese licence plates: plate grammar, crops read whole, photos "
           "detected at min/736 with dilation", {**PLATE_DETECTION, "text_grammar": "plate"}),
)})
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
DEFAULT_PRESET = "page"


def apply_preset(name: str, base: OcrOptions) -> OcrOptions:
    """`base` with preset `name`'s options over it; raises InvalidOptionError("preset", ...)
    for a name that is not one of PRESET_NAMES."""
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        raise InvalidOptionError("preset", f"must be one of {', '.join(PRESET_NAMES)}; got "
                                 f"{describe_value(name)}")
    return base.replace(**preset.changes)
