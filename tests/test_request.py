"""Request parsing, including property-based tests (hypothesis); the path sandbox is in
test_sandbox.py."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr_engine import OcrOptions
from server.errors import ApiError
from server.request import RequestPolicy, decode_base64, load_image, parse_request, read_fields

MODELS = ("ppocr-v4",)


def build(fields, files=None, roots=(), max_bytes=1 << 20):
    """parse_request then load_image, as the handler does: the request with its image."""
    policy = RequestPolicy(OcrOptions(), "ppocr-v4", MODELS, roots, max_bytes)
    request = parse_request(fields, files or {}, policy)
    image = asyncio.run(load_image(request, policy))
    return dataclasses.replace(request, image=image)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=50), st.integers(),
                                                        st.floats(), st.booleans(), st.none()),
                       max_size=6))
def test_any_json_fields_give_a_request_or_a_4xx(fields):
    try:
        request = build(fields)
    except ApiError as error:
        assert 400 <= error.status < 500 and error.code and len(error.message) < 400
    else:
        assert request.image


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["application/json", "multipart/form-data; "
                                                 "boundary=xyz", "application/x-www-form-"
                                                 "urlencoded", "", "text/plain", "image/png"]))
def test_any_body_parses_or_fails_with_a_4xx(body, content_type):
    try:
        fields, files = read_fields(content_type, body, {})
        build(fields, files)
    except ApiError as error:
        assert 400 <= error.status < 500


@given(st.binary(min_size=1, max_size=200))
def test_base64_round_trips_in_every_spelling(data):
    encoded = base64.b64encode(data).decode()
    assert decode_base64(encoded) == data
    assert decode_base64(encoded.rstrip("=")) == data
    assert decode_base64("data:image/png;base64," + encoded) == data
    assert decode_base64(base64.urlsafe_b64encode(data).decode()) == data
    assert decode_base64("\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))) == data


def test_fields_and_errors():
    image = b"\x89PNG fake bytes"
    upload = {"file": [{"body": image, "filename": "a.png", "content_type": "image/png"}]}
    request = build({"file_type": "file", "block_flag": "false", "drop_score": "0.7",
                     "use_angle_cls": "0"}, upload)
    assert (request.image, request.block) == (image, False)
    assert request.options == OcrOptions(drop_score=0.7, use_angle_cls=False)
    assert build({}, upload).file_type == "file"  # an upload says what it is
    with pytest.raises(ApiError, match="data URL says 'text/html'"):
        decode_base64("data:text/html;base64,AAAA")
    with pytest.raises(ApiError, match="not valid base64"):
        decode_base64("***")
    with pytest.raises(ApiError) as too_large:
        build({"file_type": "file"}, {"file": [{"body": b"x" * 11}]}, max_bytes=10)
    assert too_large.value.status == 413
    with pytest.raises(ApiError) as bad_json:
        read_fields("application/json", b"[1, 2]", {})
    assert bad_json.value.status == 400
    assert read_fields("application/json", json.dumps({"a": 1}).encode(), {})[0] == {"a": 1}


def test_non_utf8_form_field_is_refused():
    with pytest.raises(ApiError, match="not valid UTF-8"):
        read_fields("application/x-www-form-urlencoded", b"filename=%ff%fe", {})
