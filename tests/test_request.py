"""Request parsing and the path sandbox, including property-based tests (hypothesis)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocr_engine import OcrOptions
from server.errors import ApiError
from server.request import build_request, decode_base64, read_fields, read_sandboxed

MODELS = ("ppocr-v4",)


def build(fields, files=None, roots=(), max_bytes=1 << 20):
    return build_request(fields, files or {}, OcrOptions(), "ppocr-v4", MODELS, roots, max_bytes)


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


@pytest.fixture
def sandbox(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.jpg").write_bytes(b"image")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "escape.jpg")
    os.symlink(root / "sub" / "ok.jpg", root / "inside_link.jpg")
    os.mkfifo(root / "pipe.jpg")
    return root.resolve()


@pytest.mark.parametrize("name, status", [
    ("sub/ok.jpg", 200), ("inside_link.jpg", 200), ("../secret.txt", 403),
    ("sub/../../secret.txt", 403), ("escape.jpg", 403), ("/etc/passwd", 403),
    ("sub", 400), ("pipe.jpg", 400), ("missing.jpg", 404), ("sub/ok.jpg\0.png", 400),
    ("/dev/zero", 403), ("", 400),
])
def test_path_sandbox(sandbox, name, status):
    if status == 200:
        assert read_sandboxed(name, (sandbox,), 1000) == b"image"
        assert read_sandboxed(str(sandbox / name), (sandbox,), 1000) == b"image"
        return
    with pytest.raises(ApiError) as error:
        read_sandboxed(name, (sandbox,), 1000)
    assert error.value.status == status
    assert "secret" not in error.value.message.replace(name, "")


def test_device_inside_a_root_is_not_read(tmp_path):
    # A root that contains a character device: refused as not a regular file, never read.
    with pytest.raises(ApiError) as error:
        read_sandboxed("zero", (Path("/dev"),), 1000)
    assert error.value.status == 400


def test_no_roots_means_filename_mode_is_off(sandbox):
    with pytest.raises(ApiError) as error:
        read_sandboxed("sub/ok.jpg", (), 1000)
    assert error.value.status == 403 and "disabled" in error.value.message


def test_non_utf8_form_field_is_refused():
    with pytest.raises(ApiError, match="not valid UTF-8"):
        read_fields("application/x-www-form-urlencoded", b"filename=%ff%fe", {})
