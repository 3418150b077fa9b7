"""Turning an HTTP request into an OCR job: fields, image bytes and options.

Three steps, so that nothing slow happens on the IOLoop:

- `read_fields(content_type, body, query)` parses the body (JSON, form or multipart) into text
  fields and uploaded files;
- `parse_request(fields, files, policy)` validates every field and decodes an upload or a
  base64 image (cheap, in memory); for file_type=filename it only records the name;
- `await load_image(request, policy)` returns the image bytes, reading a server-side file
  (file_type=filename) in the loop's default executor.

Every request field is declared once, as a `FieldSpec` (name, type, default, choices or range,
description): the control fields in `CONTROL_SPECS` here, the OCR options in
`ocr_engine.options.OPTION_SPECS`. Parsing, `fields_table_markdown()` (README) and
`field_schemas()` (OpenAPI) all derive from those declarations, and every value goes through
the one coercion of its type (`FieldSpec.coerce`).

An empty value (a string that is empty or only whitespace) for any field means "not given":
the default applies. HTML forms send their empty inputs that way.

Pure functions of the request's parts (plus the sandboxed file read), so they are tested
directly (hypothesis included) without a server. Every failure is an ApiError with a 4xx status
whose message names the field or the problem and never echoes more than a short, sanitised
piece of the input, a library's internal text or an object's repr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from ocr_engine import InvalidOptionError, OcrOptions, parse_options
from ocr_engine.options import OPTION_NAMES, OPTION_SPECS, FieldSpec, describe_value
from ocr_engine.presets import PRESET_NAMES, apply_preset

from .config import MAX_DPI, MIN_DPI, RESPONSE_FORMATS
from .errors import ApiError, ErrorInfo, clip, error_info
from .sandbox import read_sandboxed

FILE_TYPES = ("file", "filename", "base64")
PDF_TEXT_MODES = ("ocr", "auto", "only")

# The control fields: how the image is sent, whether to wait, which model set.
CONTROL_SPECS: tuple[FieldSpec, ...] = (
    FieldSpec("file_type", str, None, "how the image is sent: file (multipart field 'file'), "
              "filename (a path on the server, in 'filename'), base64 (in 'img_src'); "
              "default: file when a file is uploaded, else base64 when img_src is given",
              choices=FILE_TYPES),
    FieldSpec("block_flag", bool, True, "true waits for the result; false answers 202 at once "
              "with a task id to poll"),
    FieldSpec("file", bytes, None, "file_type=file: the image, as a multipart file upload"),
    FieldSpec("img_src", str, None, "file_type=base64: the image as base64 (standard or "
              "URL-safe alphabet, padding optional) or a data:image/...;base64, URL; "
              "file_type=filename: the path, when 'filename' is not given; a JSON list of "
              "these reads a batch (up to service.max_batch)"),
    FieldSpec("filename", str, None, "file_type=filename: a path on the server, relative to "
              "or inside one of service.filename_roots"),
    FieldSpec("model", str, None, "the loaded model set to read with; default: "
              "ocr.predict_system.model"),
    FieldSpec("preset", str, None, "a named bundle of options (README, Presets): page reads "
              "small print on large pages, paddleocr is PaddleOCR 2.x's defaults, line one "
              "text line, plate licence plates; option fields still override it; default: "
              "ocr.predict_system.preset", choices=PRESET_NAMES),
    FieldSpec("pages", str, None, "PDF or TIFF: the pages to read, 1-based, e.g. 1-3,7 (5- "
              "means 5 to the end); default: every page"),
    FieldSpec("dpi", int, 200, "PDF: the resolution pages are rendered at; default: "
              "ocr.predict_system.dpi", low=MIN_DPI, high=MAX_DPI),
    FieldSpec("pdf_text", str, "ocr", "PDF: ocr reads the rendered page; auto takes a page's "
              "text layer where it has one and reads the others; only takes the text layer",
              choices=PDF_TEXT_MODES),
    FieldSpec("password", str, None, "PDF: the password of an encrypted document"),
    FieldSpec("response_format", str, None, "lines (our JSON object) or original (the original "
              "server's bare list [[box, [text, score]], ...]); default: "
              "service.response_format", choices=RESPONSE_FORMATS),
)
CONTROL_FIELDS = tuple(spec.name for spec in CONTROL_SPECS)
# The per-request options: PaddleOCR's names (use_det is our extension for line crops).
REQUEST_OPTIONS = OPTION_NAMES
# Every request field, control fields first: what the README table and OpenAPI list.
REQUEST_SPECS: tuple[FieldSpec, ...] = CONTROL_SPECS + OPTION_SPECS
REQUEST_FIELDS = tuple(spec.name for spec in REQUEST_SPECS)
_SPECS = {spec.name: spec for spec in REQUEST_SPECS}
_CONTROL = {spec.name: spec for spec in CONTROL_SPECS}

# Longest `pages` value read (a spec longer than this is not a page selection anyone means).
_MAX_PAGES_TEXT = 1000
_PAGE_RANGE = re.compile(r"^\s*([0-9]{1,9})\s*(?:(-)\s*([0-9]{1,9})?\s*)?$")
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,", re.I)
# Nothing a request needs is a big integer; Python refuses to convert over 4300 digits anyway.
_MAX_JSON_INT_DIGITS = 100
_FORM_TYPES = ("", "application/x-www-form-urlencoded", "multipart/form-data")
# Tornado's form/multipart errors, in our words (matched against its message, in order).
_FORM_ERRORS = (
    ("Max number of fields", "the form has too many fields"),
    ("too many parts", "the multipart body has too many parts"),
    ("missing name", "a multipart part has no name (Content-Disposition: form-data; "
     "name=\"...\")"),
    ("codec can't decode", "a multipart part's headers are not valid UTF-8"),
    ("no final boundary", "the multipart body has no final boundary (--BOUNDARY--)"),
    ("boundary not found", "the multipart Content-Type has no boundary parameter"),
    ("missing headers", "a multipart part has no headers"),
    ("header too large", "a multipart part's headers are too large"),
    ("Invalid content type", "the Content-Type is not multipart/form-data"),
    ("Invalid multipart", "a multipart part is malformed (it needs Content-Disposition: "
     "form-data and must end with CRLF before the next boundary)"),
)


@dataclass(frozen=True)
class RequestPolicy:
    """What the server accepts, fixed at start: built once, shared by every request.

    `filename_roots` are real (resolved) paths; empty means file_type=filename is refused.
    `max_body_size` bounds the decoded image and a file read from disk as well as the body.
    Documents and batches: `default_dpi` renders PDF pages, `max_pages` pages at most per
    document, `max_batch` items at most per request, `max_pixels` per rendered page.
    """

    defaults: OcrOptions
    default_model: str
    models: tuple[str, ...]
    filename_roots: tuple[Path, ...]
    max_body_size: int
    default_dpi: int = 200
    max_pages: int = 200
    max_batch: int = 32
    max_pixels: int = 40_000_000
    response_format: str = "lines"  # service.response_format
    # (model, preset or None) -> the options a request starts from (option_bases); a pair
    # missing here starts from `defaults`.
    bases: Mapping[tuple[str, str | None], OcrOptions] = field(default_factory=dict)

    def base_options(self, model: str, preset: str | None) -> OcrOptions:
        base = self.bases.get((model, preset))
        if base is None:
            return self.defaults if preset is None else apply_preset(preset, self.defaults)
        return base

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "filename_roots", tuple(Path(p) for p in self.filename_roots))
        if self.default_model not in self.models:
            raise ValueError(f"default model {self.default_model!r} is not among the loaded "
                             f"models {self.models}")
        if self.max_body_size < 1:
            raise ValueError("max_body_size must be positive")


@dataclass(frozen=True)
class DocumentOptions:
    """How a PDF or TIFF is read. `pages` holds the selected ranges, (first, last) with last
    None for "to the end", or None for every page; they are checked against the document's
    page count once a worker has counted them (`select_pages`)."""

    pages: tuple[tuple[int, int | None], ...] | None = None
    dpi: int = 200
    pdf_text: str = "ocr"
    password: str | None = None


@dataclass(frozen=True)
class BatchItem:
    """One image or document of a batch: its bytes, or the server path to read them from, or
    the reason it was refused (that item alone fails; the others are read)."""

    image: bytes | None = None
    filename: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class OcrRequest:
    """A validated request. `image` is None until `load_image` reads `filename`. A batch
    (several files, or a JSON list in img_src) has `batch` instead of an image or filename."""

    file_type: str
    image: bytes | None
    filename: str | None
    options: OcrOptions
    model: str
    block: bool
    document: DocumentOptions = DocumentOptions()
    batch: tuple[BatchItem, ...] | None = None
    response_format: str = "lines"  # RESPONSE_FORMATS


# ---------------------------------------------------------------- reading the body

def read_fields(content_type: str, body: bytes, query: Mapping[str, list[bytes]]
                ) -> tuple[dict[str, Any], dict[str, list[HTTPFile]]]:
    """The request's fields (JSON body, or form/multipart body plus query string) and files.

    A JSON body's values keep their JSON types (its query string is ignored); form and query
    values are text. A field given twice (in the body, or in the query and the body) is
    refused: which one was meant cannot be known.
    """
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type == "application/json":
        return _read_json(body), {}
    if media_type not in _FORM_TYPES:
        raise ApiError("unsupported_media_type",
                       f"content type {clip(media_type, 60)} is not supported; send "
                       "multipart/form-data, application/x-www-form-urlencoded or "
                       "application/json")
    raw: dict[str, list[bytes]] = {}
    _add_values(raw, query, latin1_names=True)
    files: dict[str, list[HTTPFile]] = {}
    if body and media_type:
        parsed: dict[str, list[bytes]] = {}
        try:
            parse_body_arguments(f"{media_type};{parameters}", body, parsed, files)
        except HTTPInputError as exc:
            raise ApiError("bad_request", _form_error(exc)) from None
        if media_type == "multipart/form-data" and not parsed and not files:
            raise ApiError("bad_request", "the multipart body has no parts (check the "
                           "boundary and the parts)")
        # Tornado reads urlencoded names as latin-1, multipart names as UTF-8.
        _add_values(raw, parsed, latin1_names=media_type != "multipart/form-data")
    fields: dict[str, Any] = {}
    for name, values in raw.items():
        if len(values) > 1:
            raise ApiError("invalid_field", f"field {clip(name, 40)} is given more than once")
        try:
            fields[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError("invalid_field",
                           f"field {clip(name, 40)} is not valid UTF-8") from None
    for name, uploads in files.items():
        # Repeated 'file' parts are a batch (parse_request); any other repeat is ambiguous.
        if (len(uploads) > 1 and name != "file") or name in fields:
            raise ApiError("invalid_field", f"field {clip(name, 40)} is given more than once")
    return fields, files


def _read_json(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ApiError("bad_request", f"the JSON body is not valid UTF-8 (at byte "
                       f"{exc.start})") from None
    start = text.lstrip(" \t\r\n")[:1]
    if not start:
        raise ApiError("bad_request", "the JSON body is empty")
    if start != "{":
        # Refused before parsing: a huge array is not worth building to be told it is wrong.
        raise ApiError("bad_request", "the JSON body must be an object ({\"field\": value})")
    try:
        data = json.loads(text, object_pairs_hook=_json_object, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise ApiError("bad_request", f"the body is not valid JSON: {exc.msg} (line "
                       f"{exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ApiError("bad_request", "the JSON body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError("bad_request", "the JSON body must be an object")
    return data


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ApiError("invalid_field", f"the JSON body gives {clip(name, 40)} more "
                               "than once")
            seen.add(name)
    return data


def _json_int(text: str) -> int:
    if len(text) > _MAX_JSON_INT_DIGITS:
        raise ApiError("bad_request", f"the JSON body has an integer of {len(text)} digits; "
                       f"at most {_MAX_JSON_INT_DIGITS} are accepted")
    return int(text)


def _add_values(raw: dict[str, list[bytes]], values: Mapping[str, list[bytes]], *,
                latin1_names: bool) -> None:
    for name, items in values.items():
        if latin1_names:
            try:
                name = name.encode("latin-1").decode("utf-8")
            except UnicodeEncodeError:
                pass  # not latin-1: already real text
            except UnicodeDecodeError:
                readable = name.encode("latin-1").decode("utf-8", "replace")
                raise ApiError("invalid_field", f"field name {clip(readable, 40)} is not "
                               "valid UTF-8") from None
        raw.setdefault(name, []).extend(items)


def _form_error(exc: HTTPInputError) -> str:
    text = f"{exc} {exc.__cause__ or ''}"
    for needle, message in _FORM_ERRORS:
        if needle in text:
            return message
    return "the form body could not be parsed"


# ---------------------------------------------------------------- validating the fields

def parse_request(fields: Mapping[str, Any], files: Mapping[str, list[HTTPFile]],
                  policy: RequestPolicy) -> OcrRequest:
    """Validates every field and decodes an upload or base64 image; cheap, no I/O.

    For file_type=filename the image is not read: `request.image` is None and
    `load_image` reads `request.filename`. An empty string for any field means the field is
    not given (its default applies), as HTML forms send empty inputs. Unknown fields are
    refused, listing the known ones.
    """
    unknown = [name for name in fields if name not in _SPECS]
    unknown += [name for name in files if name != "file"]
    if unknown:
        raise ApiError("invalid_field", f"unknown field {clip(str(unknown[0]), 40)}; "
                       f"fields: {', '.join(REQUEST_FIELDS)}")
    given = {name: value for name, value in fields.items() if not _is_empty(value)}
    uploads = files.get("file") or []
    file_type = _control(given, "file_type")
    if file_type is None:
        # Friendly default: an upload or a base64 string says what it is.
        file_type = "file" if uploads else "base64" if "img_src" in given else None
    if file_type is None:
        raise ApiError("missing_field", "file_type must be one of file, filename, base64 "
                       "(or upload a 'file', or give 'img_src')")
    _control(given, "file")  # a text field named 'file' is not an upload
    block = _control(given, "block_flag")
    model = loaded_model(_control(given, "model"), policy)
    options = given_options(given, policy, model)
    document = _document_options(given, policy)
    block = _CONTROL["block_flag"].default if block is None else block
    response_format = _control(given, "response_format") or policy.response_format
    image: bytes | None = None
    filename: str | None = None
    if file_type == "file":
        if not uploads:
            raise ApiError("missing_field", "file_type=file needs a multipart file field "
                           "named 'file'")
        if len(uploads) > 1:
            _check_batch_size(len(uploads), "'file' parts", policy)
            items = tuple(_batch_item(lambda body=upload["body"]: _sized(body, policy))
                          for upload in uploads)
            return OcrRequest(file_type, None, None, options, model, block, document, items,
                              response_format)
        image = uploads[0]["body"]
    elif file_type == "base64":
        source = given.get("img_src")
        if isinstance(source, list):
            items = tuple(_batch_item(lambda value=value: _sized(decode_base64(value), policy))
                          for value in _batch_list(source, "img_src", policy))
            return OcrRequest(file_type, None, None, options, model, block, document, items,
                              response_format)
        image = decode_base64(source)
    else:
        source = "filename" if "filename" in given else "img_src"
        if source == "img_src" and isinstance(given.get(source), list):
            items = tuple(BatchItem(filename=name)
                          for name in _batch_list(given[source], source, policy))
            return OcrRequest(file_type, None, None, options, model, block, document, items,
                              response_format)
        filename = given.get(source)
        if not isinstance(filename, str):
            raise ApiError("missing_field", "file_type=filename needs the path in 'filename'")
        _control(given, source)
    if image is not None:
        _check_size(image, policy)
    return OcrRequest(file_type, image, filename, options, model, block, document,
                      response_format=response_format)


async def load_image(request: OcrRequest, policy: RequestPolicy) -> bytes:
    """The request's image bytes; a server-side file is read in the loop's default executor."""
    if request.image is not None:
        return request.image
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _read_file, request.filename, policy)


async def load_item(item: BatchItem, policy: RequestPolicy) -> bytes:
    """A batch item's bytes, as `load_image` reads them; its own refusal raises as ApiError."""
    if item.error is not None:
        raise ApiError.from_info(item.error)
    if item.image is not None:
        return item.image
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _read_file, item.filename, policy)


def parse_pages(value: Any) -> tuple[tuple[int, int | None], ...]:
    """The `pages` field: comma-separated pages and ranges, 1-based ("1-3,7", "5-" to the
    end). Raises ApiError naming the field and the piece that is wrong."""
    spec = _CONTROL["pages"]
    try:
        text = spec.coerce(value)
    except InvalidOptionError as exc:
        raise ApiError("invalid_field", str(exc)) from None
    if len(text) > _MAX_PAGES_TEXT:
        raise ApiError("invalid_field", f"pages: at most {_MAX_PAGES_TEXT} characters; got "
                       f"{len(text)}")
    ranges = []
    for piece in text.split(","):
        match = _PAGE_RANGE.match(piece)
        if match is None:
            raise ApiError("invalid_field", f"pages: {clip(piece.strip(), 30)} is not a page "
                           "or a range (use e.g. 1-3,7 or 5-)")
        first = int(match.group(1))
        last = None if match.group(2) and match.group(3) is None else \
            int(match.group(3) or first)
        if first < 1:
            raise ApiError("invalid_field", "pages: pages are numbered from 1; got 0")
        if last is not None and last < first:
            raise ApiError("invalid_field", f"pages: the range {first}-{last} ends before it "
                           "starts")
        ranges.append((first, last))
    return tuple(ranges)


def select_pages(ranges: tuple[tuple[int, int | None], ...] | None, page_count: int,
                 max_pages: int) -> list[int]:
    """The pages `ranges` select from a document of `page_count` pages, in order, each once
    (every page when `ranges` is None). Raises ApiError: a range past the end (400), more than
    `max_pages` pages (413); nothing is expanded before it is checked."""
    if ranges is None:
        if page_count > max_pages:
            raise ApiError("too_many_pages", f"the document has {page_count} pages; at most "
                           f"{max_pages} are read per request (select some with 'pages')")
        return list(range(1, page_count + 1))
    bounded = []
    for first, last in ranges:
        end = page_count if last is None else last
        if first > page_count or end > page_count:
            shown = f"{first}-" if last is None else f"{first}" if first == last \
                else f"{first}-{last}"
            raise ApiError("invalid_field", f"pages: {shown} is past the end; the document has "
                           f"{page_count} page{'s' if page_count != 1 else ''}")
        bounded.append((first, end))
    bounded.sort()
    merged: list[list[int]] = []
    for first, end in bounded:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([first, end])
    selected = sum(end - first + 1 for first, end in merged)
    if selected > max_pages:
        raise ApiError("too_many_pages", f"pages selects {selected} pages; at most {max_pages} "
                       "are read per request")
    return [page for first, end in merged for page in range(first, end + 1)]


def _document_options(given: Mapping[str, Any], policy: RequestPolicy) -> DocumentOptions:
    dpi = _control(given, "dpi")
    pdf_text = _control(given, "pdf_text")
    return DocumentOptions(
        pages=parse_pages(given["pages"]) if "pages" in given else None,
        dpi=policy.default_dpi if dpi is None else dpi,
        pdf_text=_CONTROL["pdf_text"].default if pdf_text is None else pdf_text,
        password=_control(given, "password"))


def _check_batch_size(count: int, what: str, policy: RequestPolicy) -> None:
    if count > policy.max_batch:
        raise ApiError("batch_too_large", f"the request sends {count} {what}; at most "
                       f"{policy.max_batch} are read per request")


def _batch_list(values: list, name: str, policy: RequestPolicy) -> list[str]:
    """A JSON list of images or paths: not empty, within max_batch, strings only."""
    if not values:
        raise ApiError("invalid_field", f"{name} is an empty list; give at least one image")
    _check_batch_size(len(values), f"items in {name}", policy)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise ApiError("invalid_field", f"{name}[{index}] must be a string; got "
                           f"{describe_value(value)}")
    return values


def _batch_item(read: Any) -> BatchItem:
    """A batch item from `read()` (its bytes), or the refusal it raised: one bad item must not
    fail the others."""
    try:
        return BatchItem(image=read())
    except ApiError as exc:
        return BatchItem(error=error_info(exc))


def _sized(image: bytes, policy: RequestPolicy) -> bytes:
    _check_size(image, policy)
    return image



def _read_file(name: str | None, policy: RequestPolicy) -> bytes:
    image = read_sandboxed(name, policy.filename_roots, policy.max_body_size)
    _check_size(image, policy)
    return image


def _check_size(image: bytes, policy: RequestPolicy) -> None:
    if not image:
        raise ApiError("invalid_image", "the image is empty (0 bytes)")
    if len(image) > policy.max_body_size:
        raise ApiError("too_large", f"the image is {len(image)} bytes; the limit is "
                       f"{policy.max_body_size}")


def _is_empty(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def loaded_model(model: str | None, policy: RequestPolicy) -> str:
    """`model` if it is loaded, the default model when None; ApiError unknown_model else."""
    if model is None:
        return policy.default_model
    if model not in policy.models:
        raise ApiError("unknown_model", f"model {clip(model, 40)} is not loaded; "
                       f"loaded: {', '.join(policy.models)}")
    return model


def request_spec(name: str) -> FieldSpec:
    """The declaration of request field `name` (other endpoints reuse it)."""
    return _SPECS[name]


def given_options(given: Mapping[str, Any], policy: RequestPolicy,
                  model: str | None = None) -> OcrOptions:
    """The OCR options among the `given` fields (a `preset`, then option fields) over the
    server's defaults for `model` (other fields are left to the caller); ApiError
    invalid_option naming the first wrong one."""
    preset = _control(given, "preset")
    try:
        return parse_options({k: v for k, v in given.items() if k in REQUEST_OPTIONS},
                             policy.base_options(model or policy.default_model, preset))
    except InvalidOptionError as exc:
        raise ApiError("invalid_option", str(exc)) from None


def option_bases(models: Mapping[str, Mapping[str, Any]], configured: Mapping[str, Any],
                 default_preset: str) -> dict[tuple[str, str | None], OcrOptions]:
    """The options a request starts from, per (model, the request's preset or None).

    `models`: each loaded set's own detection defaults (where its upstream differs from
    PaddleOCR's); `configured`: the option keys config.json sets explicitly. Precedence, low to
    high: the built-in defaults, the set's, then either the server's default preset and
    config.json's keys over it (the operator's choice for every request that names no preset),
    or, for a request that names a preset, config.json's keys and that preset over them (the
    client asked for the bundle); the request's own option fields come last (given_options).
    """
    bases: dict[tuple[str, str | None], OcrOptions] = {}
    for model, set_defaults in models.items():
        own = OcrOptions().replace(**set_defaults)
        bases[model, None] = apply_preset(default_preset, own).replace(**configured)
        for preset in PRESET_NAMES:
            bases[model, preset] = apply_preset(preset, own.replace(**configured))
    return bases


def _control(given: Mapping[str, Any], name: str) -> Any:
    """A control field's value, coerced by its declaration; None when not given."""
    if name not in given:
        return None
    try:
        return _CONTROL[name].coerce(given[name])
    except InvalidOptionError as exc:
        raise ApiError("invalid_field", str(exc)) from None


# ---------------------------------------------------------------- documentation

def fields_table_markdown() -> str:
    """The README's request-fields table (header and one row per field), from the
    declarations. Option defaults are the built-in ones; config.json can change them."""
    rows = ["| field | type | default | values | meaning |", "|---|---|---|---|---|"]
    for spec in REQUEST_SPECS:
        kind = "file" if spec.type is bytes else spec.json_type
        default = "" if spec.default is None else f"`{json.dumps(spec.default)}`"
        rows.append(f"| `{spec.name}` | {kind} | {default} | {_values_text(spec)} | "
                    f"{_cell(spec.description)} |")
    return "\n".join(rows) + "\n"


def field_schemas(policy: RequestPolicy | None = None) -> dict[str, dict[str, Any]]:
    """A JSON-schema dict per request field (name -> schema), for the OpenAPI document.

    With a `policy`, defaults are the server's (its option defaults, default model and dpi)
    and `model` lists the loaded model sets.
    """
    schemas = {spec.name: spec.schema() for spec in REQUEST_SPECS}
    if policy is not None:
        for name in OPTION_NAMES:
            schemas[name]["default"] = getattr(policy.defaults, name)
        schemas["model"]["default"] = policy.default_model
        schemas["model"]["enum"] = list(policy.models)
        schemas["dpi"]["default"] = policy.default_dpi
    return schemas


def _values_text(spec: FieldSpec) -> str:
    if spec.choices is not None:
        return ", ".join(f"`{choice}`" for choice in spec.choices)
    if spec.low is not None and spec.high is not None:
        return f"{spec.low:g} to {spec.high:g}"
    if spec.low is not None:
        return f"at least {spec.low:g}"
    if spec.high is not None:
        return f"at most {spec.high:g}"
    if spec.type is bool:
        return "`true`, `false`"
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# ---------------------------------------------------------------- the image's sources

def decode_base64(value: Any) -> bytes:
    """Raw base64 (standard or URL-safe alphabet, padding optional) or a data: URL."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError("missing_field", "file_type=base64 needs the base64 image in "
                       "'img_src'")
    text = value.strip()
    match = _DATA_URL.match(text)
    if match:
        media_type = (match.group(1) or "text/plain").lower()
        if not (media_type.startswith("image/") or media_type == "application/pdf"):
            raise ApiError("invalid_image", f"the data URL says {clip(media_type, 40)}, "
                           "not an image type or application/pdf")
        if not match.group(3):
            raise ApiError("invalid_field", "the data URL must be base64-encoded")
        text = text[match.end():]
    compact = re.sub(r"\s+", "", text)
    compact += "=" * (-len(compact) % 4)
    try:
        if "-" in compact or "_" in compact:
            return base64.b64decode(compact, altchars=b"-_", validate=True)
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("invalid_field", "img_src is not valid base64") from None
