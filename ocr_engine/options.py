"""Per-call OCR options, with PaddleOCR's names and defaults (its PP-OCRv4 CLI defaults).

Options are plain call arguments: the engine never stores them, so one call cannot change the
next. `parse_options` turns loosely typed input (form fields are strings) into a validated
`OcrOptions`; `OcrOptions.cache_key` gives a canonical string for caching.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidOptionError

LIMIT_TYPES = ("max", "min")
SCORE_MODES = ("fast", "slow")
MIN_LIMIT_SIDE = 32
MAX_LIMIT_SIDE = 4096


@dataclass(frozen=True)
class OcrOptions:
    use_angle_cls: bool = True
    # Extension: False reads the whole image as one text line (word crops, licence plates).
    use_det: bool = True
    det_limit_side_len: int = 960
    det_limit_type: str = "max"
    det_db_thresh: float = 0.3
    det_db_box_thresh: float = 0.6
    det_db_unclip_ratio: float = 1.5
    use_dilation: bool = False
    det_db_score_mode: str = "fast"
    cls_thresh: float = 0.9
    drop_score: float = 0.5

    def __post_init__(self) -> None:
        _check_range("det_limit_side_len", self.det_limit_side_len, MIN_LIMIT_SIDE, MAX_LIMIT_SIDE)
        _check_choice("det_limit_type", self.det_limit_type, LIMIT_TYPES)
        _check_choice("det_db_score_mode", self.det_db_score_mode, SCORE_MODES)
        for name in ("det_db_thresh", "det_db_box_thresh", "cls_thresh", "drop_score"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        # 0 would give boxes no area; above 10 a box swallows its neighbours.
        _check_range("det_db_unclip_ratio", self.det_db_unclip_ratio, 0.1, 10.0)

    def cache_key(self) -> str:
        """A canonical, order-independent text form of every option."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes: Any) -> OcrOptions:
        return dataclasses.replace(self, **changes)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(OcrOptions))
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(OcrOptions)}


def parse_options(values: Mapping[str, Any], defaults: OcrOptions | None = None) -> OcrOptions:
    """Builds options from `values` (strings, numbers or booleans) over `defaults`.

    Unknown names are rejected rather than ignored: a misspelt option silently ignored is a
    wrong result the caller never notices.
    """
    base = defaults or OcrOptions()
    changes: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in _FIELD_TYPES:
            raise InvalidOptionError(name, "unknown option")
        changes[name] = _coerce(name, _FIELD_TYPES[name], raw)
    return dataclasses.replace(base, **changes) if changes else base


def _coerce(name: str, type_name: str, raw: Any) -> Any:
    if type_name == "bool":
        return _to_bool(name, raw)
    if type_name == "int":
        return _to_int(name, raw)
    if type_name == "float":
        return _to_float(name, raw)
    if not isinstance(raw, str):
        raise InvalidOptionError(name, "must be a string")
    return raw.strip().lower()


def _to_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise InvalidOptionError(name, "must be a boolean (true or false)")


def _to_int(name: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise InvalidOptionError(name, "must be an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and raw.strip().lstrip("+-").isdigit() and len(raw) <= 12:
        return int(raw)
    raise InvalidOptionError(name, "must be an integer")


def _to_float(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise InvalidOptionError(name, "must be a number")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str) and len(raw) <= 32:
        try:
            value = float(raw)
        except ValueError:
            raise InvalidOptionError(name, "must be a number") from None
    else:
        raise InvalidOptionError(name, "must be a number")
    if not math.isfinite(value):
        raise InvalidOptionError(name, "must be a finite number")
    return value


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptionError(name, "must be a number")
    if not low <= value <= high:
        raise InvalidOptionError(name, f"must be between {low} and {high}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidOptionError(name, f"must be one of {', '.join(choices)}")
