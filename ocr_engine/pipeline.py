"""The OCR engine: decode -> detect -> crop -> classify direction -> recognise -> filter.

An engine is built once (it loads three inference sessions) and then called for every image.
Per-call options and the decoder are arguments; nothing a call does changes what the next call
sees. Building an engine changes nothing process-wide: thread counts and environment are set
by `backends.setup_process`, called once per process before. One engine is for one thread at a
time: a server runs one engine per worker process. Every tensor a call builds is capped by
`EngineConfig.limits` (limits.py), whatever the image and options.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .backends import StagePrecision, get_backend
from .buckets import ShapeBuckets
from .cls import TextClassifier
from .crops import ArrayCrops, BoxCrops, Crops
from .det import DetPreprocess, TextDetector
from .errors import ModelNotFoundError
from .geometry import reading_order
from .image import DEFAULT_MAX_PIXELS, decode_image
from .limits import EngineLimits, detection_size
from .memory import LARGE_CALL_PIXELS, release_freed_memory
from .models import ModelPaths
from .options import OcrOptions
from .plates import PlateDecoder, plate_reading_options
from .rec import CtcGreedyDecoder, Decoder, TextRecognizer, build_charset, read_dictionary

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
    limits: EngineLimits = EngineLimits()
    # Each stage's compute precision; anything but f32 only on a backend that has it.
    precision: StagePrecision = StagePrecision()


@dataclass(frozen=True)
class TextLines:
    """The lines found in an image, in reading order: their boxes (N, 4, 2) float32 in image
    pixels, their crops (made on demand) and the detector's box scores."""

    boxes: np.ndarray
    crops: Crops
    scores: tuple[float, ...]


class OcrEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        models, limits = config.models, config.limits
        backend = get_backend(models.backend)
        precision = config.precision
        det_session = backend.open_session(models.det, config.threads, precision.det)
        rec_session = backend.open_session(models.rec, config.threads, precision.rec)
        # Bucket shapes only for a runtime that keeps kernels per input shape (backends.py).
        buckets = ShapeBuckets() if backend.bounded_shapes else None
        self.detector = TextDetector(det_session, DetPreprocess(limits=limits, buckets=buckets))
        self.charset = build_charset(_dictionary(models, rec_session))
        # What ocr() decodes with unless the call passes another decoder.
        self.default_decoder = CtcGreedyDecoder(self.charset)
        self._plate_decoder: PlateDecoder | None = None  # built on first use: plate_decoder
        self.recognizer = TextRecognizer(rec_session, rec_input_shape(models, rec_session),
                                         config.rec_batch_size, limits, buckets)
        self.classifier = None
        if models.cls is not None:
            # Always 48x192 at batch sizes up to cls_batch_size: a few shapes only.
            cls_session = backend.open_session(models.cls, config.threads, precision.cls,
                                               few_shapes=True)
            self.classifier = TextClassifier(cls_session, batch_size=config.cls_batch_size,
                                             limits=limits)

    @property
    def model_name(self) -> str:
        return self.config.models.name

    def warm_up(self) -> None:
        """Runs every stage once so the first real request does not pay for lazy setup."""
        canvas = np.full((320, 480, 3), 255, np.uint8)
        cv2.putText(canvas, "warm up 0123", (20, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 3)
        cv2.putText(canvas, "ppocr-server", (20, 220), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 3)
        self.ocr_array(canvas, self.config.defaults)

    def ocr(self, data: bytes, options: OcrOptions | None = None,
            decoder: Decoder | None = None) -> OcrResult:
        """Reads an encoded image (JPEG, PNG, ...); raises InvalidImageError on bad bytes."""
        start = time.perf_counter()
        image = decode_image(data, self.config.max_pixels)
        decode_ms = (time.perf_counter() - start) * 1000
        result = self.ocr_array(image, options, decoder)
        result.timings_ms["decode"] = decode_ms
        result.timings_ms["total"] += decode_ms
        return result

    def ocr_array(self, image: np.ndarray, options: OcrOptions | None = None,
                  decoder: Decoder | None = None) -> OcrResult:
        """Reads an (H, W, 3) BGR uint8 image; `decoder` turns the recogniser's per-frame
        probabilities into text (default: greedy CTC over the model's dictionary)."""
        options = options or self.config.defaults
        height, width = image.shape[:2]
        # Plate mode: the plate decoder, and a crop read whole or a photo detected with the
        # plate settings (plates.plate_reading_options); lines that are no plate are dropped.
        plates = decoder is None and options.text_grammar == "plate"
        if plates:
            decoder = self.plate_decoder
            options = plate_reading_options(options, height, width)
        decoder = decoder or self.default_decoder
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        start = clock

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = (now - clock) * 1000
            clock = now

        if options.use_det:
            found = self.text_lines(image, options)
            lap("det")
            boxes, crops = found.boxes, found.crops
        else:
            boxes = np.float32([[[0, 0], [width, 0], [width, height], [0, height]]])
            crops = ArrayCrops([image])
        lines: list[TextLine] = []
        if len(crops):
            if options.use_angle_cls and self.classifier is not None:
                directions = self.classifier(crops, options.cls_thresh,
                                             windows=options.cls_long_lines == "windows")
                crops = crops.turned(i for i, d in enumerate(directions) if d.turned)
                lap("cls")
            recognised = self.recognizer(crops, decoder)
            lap("rec")
            for box, recognition in zip(boxes, recognised):
                if recognition.score >= options.drop_score and (recognition.text or not plates):
                    points = tuple((int(x), int(y)) for x, y in box)
                    lines.append(TextLine(recognition.text, recognition.score, points))
        if self._is_large(image, options):
            release_freed_memory()
        timings["total"] = (time.perf_counter() - start) * 1000
        return OcrResult(width, height, lines, timings)

    @property
    def plate_decoder(self) -> PlateDecoder:
        """The plate decoder for this engine's charset, built on first use (most engines never
        read a plate) and then reused: it holds only tables derived from the charset."""
        if self._plate_decoder is None:
            self._plate_decoder = PlateDecoder(self.charset)
        return self._plate_decoder

    def _is_large(self, image: np.ndarray, options: OcrOptions) -> bool:
        det_h, det_w = ((0, 0) if not options.use_det else detection_size(
            image.shape[0], image.shape[1], options.det_limit_side_len, options.det_limit_type,
            self.config.limits))
        return image.shape[0] * image.shape[1] + det_h * det_w > LARGE_CALL_PIXELS

    def text_lines(self, image: np.ndarray, options: OcrOptions | None = None) -> TextLines:
        """Detection, in reading order: what the classifier and the recogniser are given."""
        detected = self.detector(image, options or self.config.defaults)
        order = reading_order(detected.boxes)
        boxes = detected.boxes[order].reshape(-1, 4, 2)
        return TextLines(boxes, BoxCrops(image, boxes),
                         tuple(detected.scores[i] for i in order))


def rec_input_shape(models: ModelPaths, rec_session) -> tuple[int, int, int]:
    """The recogniser's (channels, height, base width): the height the model declares, else
    the one its set (or custom config) gives. A recogniser reads well only at the height it was
    trained for. PP-OCRv5 and later declare it (and refuse any other); the PP-OCRv2..v4 ONNX
    graphs leave it dynamic and run at any height, PP-OCRv2's reading garbage at 48, so for
    them the set's value stands: 32 for v2, 48 after. The width is dynamic in every set (padded
    per batch, never below the base). A session that declares no shape (a test double) counts
    as dynamic."""
    declared = getattr(rec_session, "input_shape", None)
    channels, height, width = models.rec_image_shape
    if declared is not None and len(declared) == 4 and isinstance(declared[2], int) \
            and declared[2] > 0:
        height = declared[2]
    return channels, height, width


def _dictionary(models: ModelPaths, rec_session) -> list[str]:
    if models.dictionary is not None:
        return read_dictionary(Path(models.dictionary).read_text(encoding="utf-8").rstrip("\n"))
    if "character" in rec_session.metadata:
        return read_dictionary(rec_session.metadata["character"])
    raise ModelNotFoundError(
        f"recognition model {models.rec} has no 'character' metadata; give a dictionary file")
