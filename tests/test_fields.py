"""Request fields declared once: the declarations, the one coercion per type, empty values,
the request policy and image loading, and hostile bodies (hypothesis included)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr_engine import InvalidOptionError, OcrOptions
from ocr_engine.options import OPTION_NAMES, OPTION_SPECS, option_spec
from server import request as request_module
from server.errors import ApiError
from server.request import (
    CONTROL_FIELDS,
    REQUEST_FIELDS,
    REQUEST_SPECS,
    RequestPolicy,
    field_schemas,
    fields_table_markdown,
    load_image,
    parse_request,
    read_fields,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGE = b"\x89PNG fake bytes"
B64 = base64.b64encode(IMAGE).decode()
UPLOAD = {"file": [{"body": IMAGE, "filename": "a.png", "content_type": "image/png"}]}
POLICY = RequestPolicy(OcrOptions(), "ppocr-v4", ("ppocr-v4", "other"), (), 1 << 20)
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def parse(fields, files=None, policy=POLICY):
    return parse_request(fields, files or {}, policy)


def refusal(call, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


def body_refusal(content_type: str, body: bytes) -> ApiError:
    def both():
        fields, files = read_fields(content_type, body, {})
        parse(fields, files)
    return refusal(both)


def assert_clean(error: ApiError) -> None:
    """A client error whose message is ours: short, no library text, no repr."""
    assert 400 <= error.status < 500, error.code
    assert len(error.message) < 400
    for leak in ("set_int_max_str_digits", "Traceback", "object at 0x", "HTTPFile", "codec",
                 "Exceeds the limit", "maximum recursion"):
        assert leak not in error.message, error.message


# ---------------------------------------------------------------- one declaration per field

def test_option_specs_are_the_dataclass_fields():
    assert OPTION_NAMES == tuple(f.name for f in dataclasses.fields(OcrOptions))
    defaults = OcrOptions()
    for spec in OPTION_SPECS:
        assert spec.default == getattr(defaults, spec.name)
        assert isinstance(spec.default, spec.type) and spec.description
        assert option_spec(spec.name) is spec
    assert option_spec("det_limit_side_len").low == 32
    assert option_spec("det_limit_type").choices == ("max", "min", "page")


@pytest.mark.parametrize("spec", [s for s in OPTION_SPECS if s.low is not None],
                         ids=lambda s: s.name)
def test_construction_enforces_the_declared_range(spec):
    for inside in (spec.low, spec.high):
        assert getattr(OcrOptions(**{spec.name: spec.type(inside)}), spec.name) == inside
    step = 1 if spec.type is int else 0.01
    for outside in (spec.low - step, spec.high + step):
        with pytest.raises(InvalidOptionError) as error:
            OcrOptions(**{spec.name: spec.type(outside)})
        assert error.value.name == spec.name and spec.range_text() in str(error.value)


def test_construction_checks_types_and_stores_floats_as_floats():
    with pytest.raises(InvalidOptionError, match="use_dilation"):
        OcrOptions(use_dilation="yes")
    with pytest.raises(InvalidOptionError, match="det_limit_side_len"):
        OcrOptions(det_limit_side_len=960.0)
    assert type(OcrOptions(drop_score=1).drop_score) is float
    assert OcrOptions(drop_score=1).cache_key() == OcrOptions(drop_score=1.0).cache_key()


def test_request_fields_are_control_fields_then_options():
    assert REQUEST_FIELDS == CONTROL_FIELDS + OPTION_NAMES
    assert set(CONTROL_FIELDS) == {"file_type", "block_flag", "file", "img_src", "filename",
                                   "model", "preset", "pages", "dpi", "pdf_text", "password",
                                   "response_format"}
    error = refusal(parse, {"colour": "blue"})
    assert error.code == "invalid_field" and "colour" in error.message
    assert all(name in error.message for name in REQUEST_FIELDS)


def test_fields_table_has_one_row_per_declared_field():
    lines = fields_table_markdown().splitlines()
    assert lines[0].startswith("| field |") and len(lines) == 2 + len(REQUEST_SPECS)
    for line, spec in zip(lines[2:], REQUEST_SPECS):
        assert line.startswith(f"| `{spec.name}` |") and line.count(" | ") == 4
        assert spec.description in line.replace("\\|", "|")
    assert "32 to 4096" in lines[2 + REQUEST_FIELDS.index("det_limit_side_len")]
    assert "`max`, `min`" in lines[2 + REQUEST_FIELDS.index("det_limit_type")]


def test_field_schemas_follow_the_declarations_and_the_policy():
    schemas = field_schemas()
    assert list(schemas) == list(REQUEST_FIELDS)
    assert schemas["block_flag"] == {"type": "boolean", "default": True,
                                     "description": schemas["block_flag"]["description"]}
    assert schemas["det_limit_side_len"]["minimum"] == 32
    assert schemas["file_type"]["enum"] == ["file", "filename", "base64"]
    assert schemas["file"]["format"] == "binary"
    json.dumps(schemas)  # plain data
    policy = dataclasses.replace(POLICY, defaults=OcrOptions(drop_score=0.25))
    served = field_schemas(policy)
    assert served["drop_score"]["default"] == 0.25
    assert served["model"] == {**served["model"], "default": "ppocr-v4",
                               "enum": ["ppocr-v4", "other"]}
    assert field_schemas()["drop_score"]["default"] == 0.5  # not mutated by the above


def test_readme_mentions_every_field():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [name for name in REQUEST_FIELDS if f"`{name}`" not in readme] == []


# ---------------------------------------------------------------- one coercion per type

BOOLEANS = [("true", True), ("TRUE", True), (" yes ", True), ("on", True), ("1", True),
            (True, True), (1, True), ("false", False), ("0", False), ("no", False),
            ("Off", False), (False, False), (0, False)]
NOT_BOOLEANS = ["maybe", "2", 2, -1, 0.5, None, [True], {"a": 1}, "tru\0e"]


@pytest.mark.parametrize(("raw", "value"), BOOLEANS)
def test_block_flag_and_boolean_options_read_booleans_alike(raw, value):
    request = parse({"file_type": "file", "block_flag": raw, "use_angle_cls": raw,
                     "use_dilation": raw}, UPLOAD)
    assert request.block is value
    assert request.options.use_angle_cls is value and request.options.use_dilation is value


@pytest.mark.parametrize("raw", NOT_BOOLEANS)
def test_block_flag_and_boolean_options_refuse_the_same_values(raw):
    control = refusal(parse, {"file_type": "file", "block_flag": raw}, UPLOAD)
    option = refusal(parse, {"file_type": "file", "use_angle_cls": raw}, UPLOAD)
    assert (control.code, option.code) == ("invalid_field", "invalid_option")
    assert control.message.startswith("block_flag: must be a boolean")
    assert option.message.startswith("use_angle_cls: must be a boolean")
    assert_clean(control)


@pytest.mark.parametrize(("name", "raw"), [
    ("det_limit_side_len", "²"), ("det_limit_side_len", "٣٢٠"), ("det_limit_side_len", "1_000"),
    ("drop_score", "1_0"), ("drop_score", " infinity"), ("drop_score", float("inf")),
    ("drop_score", 10 ** 400), ("det_limit_side_len", 10 ** 400), ("det_limit_side_len", 1e300),
    ("det_limit_type", ["max"]), ("det_db_score_mode", "fa\0st"),
])
def test_numbers_and_strings_are_strict(name, raw):
    error = refusal(parse, {"file_type": "file", name: raw}, UPLOAD)
    assert error.code == "invalid_option" and error.message.startswith(f"{name}: ")
    assert_clean(error)


def test_choices_are_matched_without_case_or_spaces():
    assert parse({"file_type": " FILE "}, UPLOAD).file_type == "file"
    assert parse({"file_type": "file", "det_limit_type": "MIN"}, UPLOAD).options \
        .det_limit_type == "min"
    error = refusal(parse, {"file_type": "pdf"})
    assert error.code == "invalid_field" and "file, filename, base64" in error.message


# ---------------------------------------------------------------- empty values

@pytest.mark.parametrize("name", [n for n in REQUEST_FIELDS if n not in ("file_type", "file")])
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_value_means_not_given(name, empty):
    request = parse({"file_type": "file", name: empty}, UPLOAD)
    assert request == parse({"file_type": "file"}, UPLOAD)
    assert (request.block, request.model, request.options) == (True, "ppocr-v4", OcrOptions())


def test_empty_file_type_and_file_fall_back_to_what_was_sent():
    # An HTML form's empty file input arrives as an empty text field named 'file'.
    assert parse({"file_type": "", "file": ""}, UPLOAD).file_type == "file"
    assert parse({"file_type": "", "img_src": B64}).file_type == "base64"
    assert refusal(parse, {"file_type": "", "img_src": ""}).code == "missing_field"
    assert refusal(parse, {"file_type": "file", "file": "bytes as text"}, UPLOAD).code \
        == "invalid_field"


def test_server_defaults_apply_to_empty_and_missing_options():
    policy = dataclasses.replace(POLICY, defaults=OcrOptions(drop_score=0.1))
    assert parse({"file_type": "file", "drop_score": ""}, UPLOAD, policy).options.drop_score \
        == 0.1


# ---------------------------------------------------------------- policy, request, image

def test_policy_is_frozen_and_checked():
    policy = RequestPolicy(OcrOptions(), "a", ["a", "b"], ["/srv"], 10)
    assert policy.models == ("a", "b") and policy.filename_roots == (Path("/srv"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.default_model = "b"
    with pytest.raises(ValueError, match="'c'"):
        RequestPolicy(OcrOptions(), "c", ("a",), (), 10)


def test_upload_and_base64_are_decoded_at_parse_time():
    for request in (parse({}, UPLOAD), parse({"img_src": B64}),
                    parse({"file_type": "base64", "img_src": "data:image/png;base64," + B64})):
        assert (request.image, request.filename) == (IMAGE, None)
        assert asyncio.run(load_image(request, POLICY)) == IMAGE
    assert refusal(parse, {}, {"file": [{"body": b""}]}).code == "invalid_image"
    small = dataclasses.replace(POLICY, max_body_size=len(IMAGE) - 1)
    assert refusal(parse, {}, UPLOAD, small).status == 413


def test_filename_mode_records_the_name_and_reads_it_off_the_loop(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(IMAGE)
    policy = dataclasses.replace(POLICY, filename_roots=(tmp_path.resolve(),))
    request = parse({"file_type": "filename", "filename": "a.png", "model": "other"},
                    policy=policy)
    assert (request.image, request.filename, request.model) == (None, "a.png", "other")
    assert parse({"file_type": "filename", "img_src": "a.png"}, policy=policy).filename \
        == "a.png"  # the original's spelling
    threads = []
    real = request_module.read_sandboxed

    def recording(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(request_module, "read_sandboxed", recording)
    assert asyncio.run(load_image(request, policy)) == IMAGE
    assert threads and threads[0] is not threading.main_thread()
    (tmp_path / "empty.png").write_bytes(b"")
    empty = parse({"file_type": "filename", "filename": "empty.png"}, policy=policy)
    with pytest.raises(ApiError) as error:
        asyncio.run(load_image(empty, policy))
    assert error.value.code == "invalid_image"


def test_filename_mode_validates_the_name_without_touching_the_disk():
    # No roots: parsing still succeeds (the sandbox refuses at load time, with 403).
    request = parse({"file_type": "filename", "filename": "/etc/passwd"})
    assert request.filename == "/etc/passwd"
    with pytest.raises(ApiError) as error:
        asyncio.run(load_image(request, POLICY))
    assert error.value.status == 403
    assert refusal(parse, {"file_type": "filename", "filename": ["a"]}).code == "missing_field"
    nul = refusal(parse, {"file_type": "filename", "filename": "a\0.png"})
    assert nul.code == "invalid_field" and "NUL" in nul.message


def test_model_is_checked_against_the_policy():
    assert refusal(parse, {"file_type": "file", "model": "ppocr-v9"}, UPLOAD).code \
        == "unknown_model"
    assert refusal(parse, {"file_type": "file", "model": 4}, UPLOAD).code == "invalid_field"


# ---------------------------------------------------------------- hostile bodies

def nested(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return ('{"file_type": "file", "drop_score": ' + opener * depth + closer * depth
            + "}").encode()


@pytest.mark.parametrize(("body", "code", "words"), [
    (nested(100_000), "bad_request", "nested too deeply"),
    (nested(100_000, '{"a":', "}").replace(b"{}", b"1}", 1), "bad_request", "nested"),
    (b'{"drop_score": ' + b"9" * 5000 + b"}", "bad_request", "5000 digits"),
    (b'{"x": {"y": [1, -' + b"9" * 5000 + b"]}}", "bad_request", "5001 digits"),
    (b'{"file_type": "file", "drop_score": 1e999}', "invalid_option", "drop_score"),
    (b'{"file_type": "file", "det_limit_side_len": -1e999}', "invalid_option",
     "det_limit_side_len"),
    (b'{"file_type": "file", "cls_thresh": NaN}', "invalid_option", "cls_thresh"),
    (b"[" + b"0," * 200_000 + b"0]", "bad_request", "must be an object"),
    (b"  \r\n ", "bad_request", "empty"),
    (b'"text"', "bad_request", "must be an object"),
    (b'{"file_type": "fi\\u0000le"}', "invalid_field", "NUL"),
    (b'{"file_type": "file", "model": "a\\u0000"}', "invalid_field", "NUL"),
    (b'{"file_type": "file", "drop_score": "0.5\\u0000"}', "invalid_option", "drop_score"),
    (b'{"file_type": "base64", "file_type": "file"}', "invalid_field", "more than once"),
    (b'{"file_type": "file", "model": {"a": 1}}', "invalid_field", "an object"),
    (b'\xff{"a": 1}', "bad_request", "UTF-8"),
    (b'{"a": "\\ud800"}', "invalid_field", "unknown field"),
    (b'{"a": 1,}', "bad_request", "not valid JSON"),
])
def test_hostile_json(body, code, words):
    error = body_refusal(JSON, body)
    assert error.code == code and words in error.message, error.message
    assert_clean(error)


def test_json_with_a_byte_order_mark_is_read():
    fields, _ = read_fields(JSON, b'\xef\xbb\xbf{"img_src": "' + B64.encode() + b'"}', {})
    assert parse(fields).image == IMAGE


def part(headers: bytes, value: bytes = b"v") -> bytes:
    return b"--b\r\n" + headers + b"\r\n\r\n" + value + b"\r\n"


MULTIPART = "multipart/form-data; boundary=b"
END = b"--b--\r\n"


@pytest.mark.parametrize(("body", "code", "words"), [
    (part(b"Content-Disposition: form-data") + END, "bad_request", "no name"),
    (part(b'Content-Disposition: form-data; name=""') + END, "bad_request", "no name"),
    (part(b'Content-Disposition: form-data; name="\xff\xfe"') + END, "bad_request", "UTF-8"),
    (part(b'Content-Disposition: form-data; name="model"') * 2 + END, "invalid_field",
     "more than once"),
    (part(b'Content-Disposition: form-data; name="image"; filename="a"') + END,
     "invalid_field", "unknown field 'image'"),
    (part(b'Content-Disposition: form-data; name="model"', b"\xff") + END, "invalid_field",
     "not valid UTF-8"),
    (part(b'Content-Disposition: attachment; name="model"') + END, "bad_request",
     "malformed"),
    (b"--b\r\ngarbage", "bad_request", "final boundary"),
    (END, "bad_request", "no parts"),
    (b"--b\r\n" * 200 + END, "bad_request", "too many parts"),
])
def test_hostile_multipart(body, code, words):
    error = body_refusal(MULTIPART, body)
    assert error.code == code and words in error.message, error.message
    assert_clean(error)


@pytest.mark.parametrize(("body", "query", "code", "words"), [
    (b"%ff%fe=1", {}, "invalid_field", "field name"),
    (b"model=%ff", {}, "invalid_field", "not valid UTF-8"),
    (b"model=a&model=b", {}, "invalid_field", "more than once"),
    (b"model=a", {"model": [b"b"]}, "invalid_field", "more than once"),
    (b"file_type=file&drop_score=%00", {}, "invalid_option", "drop_score"),
    (b"file_type=base64&img_src=AAAA%00", {}, "invalid_field", "base64"),
    (b"&".join(b"a%d=1" % i for i in range(2000)), {}, "bad_request", "too many fields"),
    (b"%C3%A9t%C3%A9=1", {}, "invalid_field", "unknown field '\u00e9t\u00e9'"),
])
def test_hostile_forms(body, query, code, words):
    def both():
        fields, files = read_fields(FORM, body, query)
        parse(fields, files)
    error = refusal(both)
    assert error.code == code and words in error.message, error.message
    assert_clean(error)


def test_form_names_and_values_are_utf8_text():
    fields, _ = read_fields(FORM, "img_src=" + urllib.parse.quote(B64) + "&model=%C3%A9", {})
    assert fields == {"img_src": B64, "model": "\u00e9"}
    fields, _ = read_fields(FORM + "; charset=utf-8", b"block_flag=0", {"img_src": [B64.encode()]})
    assert parse(fields).block is False


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                         st.text(max_size=30), st.sampled_from(["", " ", "true", "file",
                                                                "base64", B64, "ppocr-v4"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
FIELD_NAMES = st.one_of(st.sampled_from(REQUEST_FIELDS), st.text(max_size=12))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=8))
def test_any_json_document_gives_a_request_or_a_4xx(document):
    try:
        fields, files = read_fields(JSON, json.dumps(document).encode(), {})
        request = parse(fields, files)
    except ApiError as error:
        assert_clean(error)
    else:
        assert request.image or request.filename or request.batch


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 100_000), st.sampled_from([("[", "]"), ('{"a":', "}")]),
       st.sampled_from(REQUEST_FIELDS + ("unknown",)), st.sampled_from(["1", '"x"', "[]"]))
def test_deep_json_gives_a_4xx(depth, brackets, name, leaf):
    opener, closer = brackets
    body = f'{{"{name}": {opener * depth}{leaf}{closer * depth}}}'.encode()
    try:
        fields, files = read_fields(JSON, body, {})
        parse(fields, files)
    except ApiError as error:
        assert_clean(error)
    else:  # the one valid shape among these: img_src as a flat list of strings (a batch)
        assert (name, depth, opener, leaf) == ("img_src", 1, "[", '"x"')


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.sampled_from(REQUEST_FIELDS), st.binary(max_size=10)),
                          st.one_of(st.binary(max_size=20), st.sampled_from(
                              [b"", b"file", b"base64", b"filename", B64.encode()]))),
                max_size=6),
       st.dictionaries(st.text(max_size=8), st.lists(st.binary(max_size=8), min_size=1,
                                                     max_size=2), max_size=2))
def test_any_form_body_gives_a_request_or_a_4xx(pairs, query):
    body = "&".join(urllib.parse.quote_from_bytes(name if isinstance(name, bytes)
                                                  else name.encode())
                    + "=" + urllib.parse.quote_from_bytes(value) for name, value in pairs)
    try:
        fields, files = read_fields(FORM, body.encode(), query)
        parse(fields, files)
    except ApiError as error:
        assert_clean(error)


HEADER_LINES = st.one_of(
    st.builds(lambda n: b'Content-Disposition: form-data; name="' + n + b'"',
              st.one_of(st.sampled_from([f.encode() for f in REQUEST_FIELDS]),
                        st.binary(max_size=8))),
    st.builds(lambda n, f: b'Content-Disposition: form-data; name="' + n + b'"; filename="'
              + f + b'"', st.sampled_from([b"file", b"img_src", b"x"]), st.binary(max_size=6)),
    st.just(b"Content-Disposition: form-data"),
    st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(HEADER_LINES, min_size=0, max_size=2),
                          st.one_of(st.binary(max_size=30), st.just(IMAGE))), max_size=5),
       st.booleans())
def test_any_multipart_body_gives_a_request_or_a_4xx(parts, final):
    body = b"".join(b"--b\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + value + b"\r\n"
                    for headers, value in parts) + (END if final else b"")
    try:
        fields, files = read_fields(MULTIPART, body, {})
        parse(fields, files)
    except ApiError as error:
        assert_clean(error)
