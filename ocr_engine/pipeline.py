"""The OCR engine: decode -> detect -> crop -> classify direction -> recognise -> filter.

An engine is built once (it loads three inference sessions) and then called for every image.
Per-call options are arguments; nothing a call does changes what the next call sees. One engine
is for one thread at a time: a server runs one engine per worker process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .backends import open_session
from .cls import TextClassifier
from .det import TextDetector
from .errors import ModelNotFoundError
from .geometry import crop_rotated, sort_reading_order
from .image import DEFAULT_MAX_PIXELS, decode_image
from .models import ModelPaths
from .options import OcrOptions
from .rec import TextRecognizer, build_charset, read_dictionary

Point = tuple[int, int]


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float
    box: tuple[Point, Point, Point, Point]  # top-left, top-right, bottom-right, bottom-left

    def to_dict(self) -> dict:
        return {"text": self.text, "confidence": round(self.confidence, 5),
                "box": [list(point) for point in self.box]}


@dataclass(frozen=True)
class OcrResult:
    width: int
    height: int
    lines: list[TextLine]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height,
                "lines": [line.to_dict() for line in self.lines], "text": self.text,
                "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()}}


@dataclass(frozen=True)
class EngineConfig:
    models: ModelPaths
    threads: int = 1
    cls_batch_size: int = 6
    rec_batch_size: int = 6
    max_pixels: int = DEFAULT_MAX_PIXELS
    defaults: OcrOptions = OcrOptions()


class OcrEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        models = config.models
        # OpenCV's own pool would add threads on top of the inference threads; the pool
        # sizes each worker's threads to its share of the cores.
        cv2.setNumThreads(config.threads)
        det_session = open_session(models.backend, models.det, config.threads)
        rec_session = open_session(models.backend, models.rec, config.threads)
        self.detector = TextDetector(det_session)
        charset = build_charset(_dictionary(models, rec_session))
        self.recognizer = TextRecognizer(rec_session, charset, models.rec_image_shape,
                                         config.rec_batch_size)
        self.classifier = None
        if models.cls is not None:
            cls_session = open_session(models.backend, models.cls, config.threads)
            self.classifier = TextClassifier(cls_session, batch_size=config.cls_batch_size)

    @property
    def model_name(self) -> str:
        return self.config.models.name

    def warm_up(self) -> None:
        """Runs every stage once so the first real request does not pay for lazy setup."""
        canvas = np.full((320, 480, 3), 255, np.uint8)
        cv2.putText(canvas, "warm up 0123", (20, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 3)
        cv2.putText(canvas, "ppocr-server", (20, 220), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 3)
        self.ocr_array(canvas, self.config.defaults)

    def ocr(self, data: bytes, options: OcrOptions | None = None) -> OcrResult:
        """Reads an encoded image (JPEG, PNG, ...); raises InvalidImageError on bad bytes."""
        start = time.perf_counter()
        image = decode_image(data, self.config.max_pixels)
        decode_ms = (time.perf_counter() - start) * 1000
        result = self.ocr_array(image, options)
        result.timings_ms["decode"] = decode_ms
        result.timings_ms["total"] += decode_ms
        return result

    def ocr_array(self, image: np.ndarray, options: OcrOptions | None = None) -> OcrResult:
        """Reads an (H, W, 3) BGR uint8 image."""
        options = options or self.config.defaults
        height, width = image.shape[:2]
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        start = clock

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = (now - clock) * 1000
            clock = now

        if options.use_det:
            boxes = sort_reading_order(self.detector(image, options))
            lap("det")
            crops = [crop_rotated(image, box) for box in boxes]
        else:
            boxes = [np.float32([[0, 0], [width, 0], [width, height], [0, height]])]
            crops = [image]
        lines: list[TextLine] = []
        if crops:
            if options.use_angle_cls and self.classifier is not None:
                crops, _ = self.classifier(crops, options.cls_thresh)
                lap("cls")
            recognised = self.recognizer(crops)
            lap("rec")
            for box, (text, score) in zip(boxes, recognised):
                if score >= options.drop_score:
                    points = tuple((int(x), int(y)) for x, y in box)
                    lines.append(TextLine(text, score, points))
        timings["total"] = (time.perf_counter() - start) * 1000
        return OcrResult(width, height, lines, timings)


def _dictionary(models: ModelPaths, rec_session) -> list[str]:
    if models.dictionary is not None:
        return read_dictionary(Path(models.dictionary).read_text(encoding="utf-8").rstrip("\n"))
    if "character" in rec_session.metadata:
        return read_dictionary(rec_session.metadata["character"])
    raise ModelNotFoundError(
        f"recognition model {models.rec} has no 'character' metadata; give a dictionary file")
