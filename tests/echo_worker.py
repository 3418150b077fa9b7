"""A tiny real OCR worker handler for HTTP-layer tests: no models, boots in a blink.

`EchoOcrHandler(spec)` is built in the worker process (it is importable at module level, as
'spawn' needs) and answers each `OcrJob` with a result of the engine's shape whose text is the
sha256 prefix of the image bytes, so a test can tell which image a result belongs to. Some
image bytes misbehave on demand:

- b"FAIL": the engine's InvalidImageError (the task fails with 415 invalid_image);
- b"BOOM": a RuntimeError, an unexpected error (500 internal_error), with SECRET_TEXT in its
  message so a test can check the client never sees it;
- b"SLEEP:<seconds>": sleeps, then answers;
- b"WAIT:<path>": answers once `path` exists (the test creates it to release the job), so a
  task stays pending exactly as long as the test wants, without a clock.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from ocr_engine import InvalidImageError
from server.protocol import EngineSpec, OcrJob

SECRET_TEXT = "echo worker exploded: secret-7f3a"
# A released-never job gives up after this long, so a failed test cannot leave a worker stuck.
WAIT_LIMIT_S = 120.0


def echo_text(image: bytes) -> str:
    """The text the echo worker reads from `image`."""
    return hashlib.sha256(image).hexdigest()[:16]


class EchoOcrHandler:
    def __init__(self, spec: EngineSpec) -> None:
        self.models = set(spec.models)

    def __call__(self, job: OcrJob) -> dict:
        image = job.image
        if image == b"FAIL":
            raise InvalidImageError("the echo worker refuses this image (test)")
        if image == b"BOOM":
            raise RuntimeError(SECRET_TEXT)
        if image.startswith(b"SLEEP:"):
            time.sleep(float(image[len(b"SLEEP:"):]))
        elif image.startswith(b"WAIT:"):
            gate = Path(image[len(b"WAIT:"):].decode())
            deadline = time.monotonic() + WAIT_LIMIT_S
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # bounded polling of the gate file
        if job.model not in self.models:
            raise AssertionError(f"model {job.model!r} is not loaded")
        text = echo_text(image)
        return {"model": job.model, "width": 1, "height": 1,
                "lines": [{"text": text, "confidence": 1.0,
                           "box": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
                "text": text, "timings_ms": {"total": 0.0}}
