"""service.response_format "original": clients written for the original server work unchanged.

The clients here are written the way the original's README and scripts call it, with
`requests`: form fields (`data=body`) with a requests-built multipart upload (`files=`), a JSON
body (`json=body`, as its singlerequest.py), a multipart upload without file_type, a data URL in
img_src, and the non-blocking submit that answered `null` (a re-sent request then gets the
result once it is read, as the original's did). Each answer is parsed the way singlerequest.py
parses it: `result[i][0]` the box, `result[i][1][0]` the text. One real server, real models.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import requests

from server.testing import ServerProcess
from tests.app_testing import PINNED_BACKEND

SAMPLES = Path(__file__).resolve().parent.parent / "docs" / "samples"
IMAGE = SAMPLES / "english.jpg"
BOOT_DEADLINE_S = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("original")
    proc = ServerProcess(workdir, {"ocr.process.number": 1, "ocr.process.threads": 1,
                                   **PINNED_BACKEND,
                                   "service.filename_roots": [str(SAMPLES)],
                                   "service.response_format": "original"})
    with proc.start(ready_timeout=BOOT_DEADLINE_S):
        yield proc


def texts_of(result: list) -> list[str]:
    """What the original's singlerequest.py prints: result[i][0] is the box, result[i][1][0]
    the text (and result[i][1][1] the score)."""
    texts = []
    for i in range(len(result)):
        box, (text, score) = result[i][0], result[i][1]
        assert len(box) == 4 and all(len(point) == 2 and all(isinstance(v, float)
                                                             for v in point) for point in box)
        assert isinstance(score, float) and 0 < score <= 1
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def expected(server) -> list[str]:
    # The same image through our own shape, asked for per request: the texts must agree.
    with open(IMAGE, "rb") as handle:
        ours = requests.post(server.url(), data={"file_type": "file", "response_format": "lines"},
                             files={"file": handle}, timeout=120)
    assert ours.status_code == 200, ours.text
    lines = [line["text"] for line in ours.json()["lines"]]
    assert len(lines) >= 3  # a real page of text, not an empty answer
    return lines


def test_readme_upload_form_fields_and_requests_multipart(server, expected) -> None:
    body = {"file_type": "file", "block_flag": True}
    with open(IMAGE, "rb") as handle:
        res = requests.post(server.url(), data=body, files={"file": handle}, timeout=120)
    assert res.status_code == 200, res.text
    assert texts_of(json.loads(str(res.content, encoding="utf-8"))) == expected


def test_singlerequest_json_body_with_a_filename(server, expected) -> None:
    body = {"file_type": "filename", "filename": str(IMAGE), "block_flag": True}
    res = requests.post(server.url(), json=body, timeout=120)
    assert res.status_code == 200, res.text
    assert texts_of(res.json()) == expected


def test_multipart_upload_without_file_type(server, expected) -> None:
    with open(IMAGE, "rb") as handle:
        res = requests.post(server.url(), files={"file": handle}, timeout=120)
    assert res.status_code == 200, res.text
    assert texts_of(res.json()) == expected


def test_readme_base64_data_url(server, expected) -> None:
    src = "data:image/jpeg;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
    body = {"file_type": "base64", "block_flag": True, "img_src": src}
    res = requests.post(server.url(), data=body, timeout=120)
    assert res.status_code == 200, res.text
    assert texts_of(res.json()) == expected


def test_not_ascii_escaped(server) -> None:
    receipt = SAMPLES / "receipt.jpg"
    with open(receipt, "rb") as handle:
        res = requests.post(server.url(), files={"file": handle}, timeout=120)
    assert res.status_code == 200, res.text
    text = res.content.decode("utf-8")
    assert any(ord(ch) > 127 for ch in text) and "\\u" not in text


def test_non_blocking_answers_null_then_the_result(server, expected) -> None:
    # A fresh cache key (another option value), so the first submit is not a hit.
    body = {"file_type": "filename", "filename": str(IMAGE), "block_flag": False,
            "drop_score": 0.51}
    first = requests.post(server.url(), json=body, timeout=30)
    assert first.status_code == 200 and first.content == b"null"
    deadline = time.monotonic() + 120
    while True:  # re-sending the request, as the original's clients polled
        again = requests.post(server.url(), json=body, timeout=30)
        assert again.status_code == 200
        if again.json() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.json() is not None, "the run never filled the cache"
    texts = texts_of(again.json())
    assert texts and set(texts) <= set(expected)


def test_errors_stay_json(server) -> None:
    res = requests.post(server.url(), data={"file_type": "base64", "img_src": "bm90IGFuIGltYWdl"},
                        timeout=30)
    assert res.status_code == 415
    assert res.json()["error"]["code"] == "invalid_image"
