"""Per-call OCR options, with PaddleOCR's names and defaults (its PP-OCRv4 CLI defaults).

Options are plain call arguments: the engine never stores them, so one call cannot change the
next. Each option is declared once, as a field of `OcrOptions` whose metadata gives its range or
choices and a one-line description; `OPTION_SPECS` exposes those declarations as `FieldSpec`s,
and everything else derives from them: construction-time validation (`OcrOptions.__post_init__`),
`parse_options` (loosely typed input: form fields are strings), the server's request fields,
its config keys and its documentation. `OcrOptions.cache_key` gives a canonical string for
caching.

`FieldSpec` is also what the server declares its own request fields with, so there is exactly
one coercion per type (`FieldSpec.coerce`): booleans, integers, numbers and strings are read
the same way whichever field they arrive in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidOptionError

LIMIT_TYPES = ("max", "min", "page")
SCORE_MODES = ("fast", "slow")
TEXT_GRAMMARS = ("none", "plate")
CLS_LONG_LINES = ("squeeze", "windows")
MIN_LIMIT_SIDE = 32
MAX_LIMIT_SIDE = 4096

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# ASCII only: str.isdigit() and float() also accept other scripts' digits, '²' and '1_000'.
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,12}")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_MAX_NUMBER_TEXT = 32


class _Invalid(Exception):
    """A value does not fit a type; FieldSpec adds the field's name."""


@dataclass(frozen=True)
class FieldSpec:
    """One declared field: what it is called, its type, default, allowed values and meaning.

    `type` is one of bool, int, float, str (bytes for a file upload); `low`/`high` bound
    numbers (inclusive, None = unbounded); `choices` lists the allowed strings, matched after
    trimming and lower-casing. `description` is one line, for the README and OpenAPI.
    """

    name: str
    type: type
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    def coerce(self, raw: Any) -> Any:
        """`raw` (a form string or a JSON value) as this field's type, then `check`ed.

        Booleans: true/false, 1/0, yes/no, on/off (any case) or a JSON boolean, 0 or 1.
        Integers: a JSON integer, an integral JSON number, or up to 12 ASCII digits.
        Numbers: a JSON number or decimal text; never NaN or infinite. Raises
        InvalidOptionError naming the field. An empty string is an error here: treating it as
        "not given" is the caller's decision (the HTTP layer does, for HTML forms).
        """
        try:
            value = _COERCE[self.type](raw)
        except _Invalid as exc:
            raise InvalidOptionError(self.name, f"{exc}; got {describe_value(raw)}") from None
        if self.choices is not None:
            value = value.strip().lower()
        return self.check(value)

    def check(self, value: Any) -> Any:
        """`value`, already of this field's type, checked against the range or choices.

        Returns it (an int for a float field as a float). Raises InvalidOptionError.
        """
        try:
            value = _CHECK_TYPE[self.type](value)
        except _Invalid as exc:
            raise InvalidOptionError(self.name, f"{exc}; got {describe_value(value)}") from None
        if self.choices is not None and value not in self.choices:
            raise InvalidOptionError(self.name, f"must be one of {', '.join(self.choices)}; "
                                     f"got {describe_value(value)}")
        too_low = self.low is not None and value < self.low
        if too_low or (self.high is not None and value > self.high):
            raise InvalidOptionError(self.name, f"{self.range_text()}; got "
                                     f"{describe_value(value)}")
        return value

    @property
    def json_type(self) -> str:
        """The JSON-schema type name: boolean, integer, number or string."""
        return _JSON_TYPES[self.type]

    def range_text(self) -> str:
        """'must be between 0 and 1', 'must be one of max, min', or '' when unconstrained."""
        if self.choices is not None:
            return f"must be one of {', '.join(self.choices)}"
        if self.low is not None and self.high is not None:
            return f"must be between {_number(self.low)} and {_number(self.high)}"
        if self.low is not None:
            return f"must be at least {_number(self.low)}"
        if self.high is not None:
            return f"must be at most {_number(self.high)}"
        return ""

    def schema(self) -> dict[str, Any]:
        """A JSON-schema dict for this field (type, default, bounds, enum, description)."""
        schema: dict[str, Any] = {"type": self.json_type, "description": self.description}
        if self.type is bytes:
            schema["format"] = "binary"
        if self.default is not None:
            schema["default"] = self.default
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.low is not None:
            schema["minimum"] = self.low
        if self.high is not None:
            schema["maximum"] = self.high
        return schema


def _option(default: Any, description: str, *, low: float | None = None,
            high: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={
        "description": description, "low": low, "high": high, "choices": choices})


@dataclass(frozen=True)
class OcrOptions:
    use_angle_cls: bool = _option(True, "run the direction classifier, which turns lines "
                                  "that read upside down")
    # Extension: False reads the whole image as one text line (word crops, licence plates).
    use_det: bool = _option(True, "false skips detection and reads the whole image as one "
                            "text line (word crops, licence plates)")
    det_limit_side_len: int = _option(960, "detection resize target in pixels (see "
                                      "det_limit_type)", low=MIN_LIMIT_SIDE, high=MAX_LIMIT_SIDE)
    # page: the page preset's rule (limits.detection_size), the default through that preset.
    det_limit_type: str = _option("max", "max: longest side at most det_limit_side_len; min: "
                                  "shortest side at least; page: the image's own size, "
                                  "longest side at most det_limit_side_len (the page preset)",
                                  choices=LIMIT_TYPES)
    det_db_thresh: float = _option(0.3, "DB pixel threshold", low=0.0, high=1.0)
    det_db_box_thresh: float = _option(0.6, "DB box score threshold", low=0.0, high=1.0)
    # 0 would give boxes no area; above 10 a box swallows its neighbours.
    det_db_unclip_ratio: float = _option(1.5, "DB box expansion ratio", low=0.1, high=10.0)
    use_dilation: bool = _option(False, "dilate the DB bitmap before finding boxes")
    det_db_score_mode: str = _option("fast", "DB box score: fast (box) or slow (polygon)",
                                     choices=SCORE_MODES)
    cls_thresh: float = _option(0.9, "classifier score needed to turn a line 180 degrees",
                                low=0.0, high=1.0)
    drop_score: float = _option(0.5, "lines scoring below this are dropped", low=0.0, high=1.0)
    # Extension: PaddleOCR squeezes every line into the classifier's 48x192 input, which on
    # long lines (a page's full-width lines, 35:1) gets the direction wrong.
    cls_long_lines: str = _option("squeeze", "how the direction classifier reads a line "
                                  "longer than 4:1: squeeze (whole, PaddleOCR's way) or "
                                  "windows (up to 4 pieces of 4:1, probabilities averaged; "
                                  "the page preset)", choices=CLS_LONG_LINES)
    # Extension: a grammar the text must follow (ocr_engine/plates.py). Plate mode picks the
    # plate decoder and, by the image's shape, reads it whole or detects with its own settings.
    text_grammar: str = _option("none", "plate: read Chinese licence plates only (a plate crop "
                                "is read whole; in a photo, detection uses min/736, dilation "
                                "and unclip 2.0, and lines that are not plates are dropped)",
                                choices=TEXT_GRAMMARS)

    def __post_init__(self) -> None:
        for spec in OPTION_SPECS:
            value = getattr(self, spec.name)
            checked = spec.check(value)
            if checked is not value:
                # An int given for a float field is stored as a float: one cache key per value.
                object.__setattr__(self, spec.name, checked)

    def cache_key(self) -> str:
        """A canonical, order-independent text form of every option."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes: Any) -> OcrOptions:
        return dataclasses.replace(self, **changes)


_TYPE_NAMES = {"bool": bool, "int": int, "float": float, "str": str}
# Every option, in declaration order: name, type, default, low/high or choices, description.
OPTION_SPECS: tuple[FieldSpec, ...] = tuple(
    FieldSpec(name=f.name, type=_TYPE_NAMES[str(f.type)], default=f.default, **f.metadata)
    for f in dataclasses.fields(OcrOptions))
OPTION_NAMES = tuple(spec.name for spec in OPTION_SPECS)
_SPECS = {spec.name: spec for spec in OPTION_SPECS}


def option_spec(name: str) -> FieldSpec:
    """The declaration of option `name` (KeyError when there is no such option)."""
    return _SPECS[name]


def parse_options(values: Mapping[str, Any], defaults: OcrOptions | None = None) -> OcrOptions:
    """Builds options from `values` (strings, numbers or booleans) over `defaults`.

    Unknown names are rejected rather than ignored: a misspelt option silently ignored is a
    wrong result the caller never notices.
    """
    base = defaults or OcrOptions()
    changes: dict[str, Any] = {}
    for name, raw in values.items():
        spec = _SPECS.get(name)
        if spec is None:
            raise InvalidOptionError(name, "unknown option")
        changes[name] = spec.coerce(raw)
    return dataclasses.replace(base, **changes) if changes else base


def describe_value(value: Any) -> str:
    """A short rendering of an untrusted value for messages: never a repr of a container,
    never more than ~40 characters, never a conversion that can fail (huge integers)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 64:
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = "".join(ch if ch.isprintable() else "?" for ch in value[:40])
        return repr(text + ("..." if len(value) > 40 else ""))
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    return "a value of another type"


def _number(value: float) -> str:
    return f"{value:g}"


# ---------------------------------------------------------------- one coercion per type

def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid("must be a boolean (true or false)")


def _to_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise _Invalid("must be an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip()):
        return int(raw.strip())
    raise _Invalid("must be an integer")


def _to_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise _Invalid("must be a number")
    if isinstance(raw, (int, float)):
        return _finite(raw)
    if isinstance(raw, str) and len(raw) <= _MAX_NUMBER_TEXT:
        text = raw.strip()
        if _FLOAT_TEXT.fullmatch(text):
            return _finite(float(text))
        if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise _Invalid("must be a finite number")
    raise _Invalid("must be a number")


def _finite(value: float) -> float:
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        raise _Invalid("must be a finite number") from None
    if not math.isfinite(number):
        raise _Invalid("must be a finite number")
    return number


def _to_text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Invalid("must be a string")
    return _check_text(raw)


def _to_upload(raw: Any) -> bytes:
    if not isinstance(raw, (bytes, bytearray)):
        raise _Invalid("must be a multipart file upload (a part with a filename)")
    return bytes(raw)


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be a boolean (true or false)")
    return value


def _check_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid("must be an integer")
    return value


def _check_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid("must be a number")
    number = _finite(value)
    return value if type(value) is float else number


def _check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a string")
    if "\0" in value:
        raise _Invalid("must not contain NUL characters")
    return value


_COERCE: dict[type, Callable[[Any], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: _to_text, bytes: _to_upload}
_CHECK_TYPE: dict[type, Callable[[Any], Any]] = {
    bool: _check_bool, int: _check_int, float: _check_float, str: _check_text,
    bytes: _to_upload}
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
               bytes: "string"}
