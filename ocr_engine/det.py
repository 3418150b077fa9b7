"""DB text detection: resize and normalise, run the model, turn the probability map into boxes.

The post-processing is PaddleOCR 2.10's DBPostProcess (ppocr/postprocess/db_postprocess.py) for
quadrilateral boxes, split into small helpers; the resize is its DetResizeForTest type 0, clamped
to the engine's limits (limits.py) as PaddleOCR 3.x clamps it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

from .backends import InferenceSession
from .buckets import ShapeBuckets
from .geometry import filter_boxes
from .limits import EngineLimits, detection_size
from .options import OcrOptions

MAX_CANDIDATES = 1000
MIN_BOX_SIDE = 3
# PaddleOCR normalises detection input with ImageNet statistics (applied to BGR, as it does).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetInput:
    tensor: np.ndarray  # (1, 3, H, W) float32
    src_height: int
    src_width: int
    # The resized image's size inside `tensor` when the tensor is padded to a bucket shape
    # (zeros below and to the right); None: the tensor is the resized image.
    content_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class DetectedBoxes:
    """Boxes in source-image pixels, (N, 4, 2) float32, clockwise from the top-left corner,
    unsorted; `scores[i]` is box i's mean text probability (DB's box score)."""

    boxes: np.ndarray
    scores: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.boxes)


def resize_for_detection(image: np.ndarray, limit_side_len: int, limit_type: str,
                         limits: EngineLimits | None = None) -> np.ndarray:
    """Scales so the limited side meets `limit_side_len`, both sides rounded to multiples of 32,
    within `limits` (see limits.detection_size)."""
    resize_h, resize_w = detection_size(image.shape[0], image.shape[1], limit_side_len,
                                        limit_type, limits or EngineLimits())
    return cv2.resize(image, (resize_w, resize_h))


class DetPreprocess:
    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 limits: EngineLimits | None = None, buckets: ShapeBuckets | None = None
                 ) -> None:
        self.mean = np.array(mean, dtype=np.float32).reshape(1, 1, 3)
        self.std = np.array(std, dtype=np.float32).reshape(1, 1, 3)
        self.limits = limits or EngineLimits()
        # Round the tensor up to a bucket shape (for runtimes that keep kernels per shape).
        self.buckets = buckets

    def __call__(self, image: np.ndarray, options: OcrOptions) -> DetInput:
        src_h, src_w = image.shape[:2]
        if src_h + src_w < 64:
            # PaddleOCR pads tiny images to at least 32x32 but keeps mapping boxes to the
            # unpadded size; we do the same so results stay comparable.
            padded = np.zeros((max(32, src_h), max(32, src_w), 3), np.uint8)
            padded[:src_h, :src_w] = image
            image = padded
        resized = resize_for_detection(image, options.det_limit_side_len, options.det_limit_type,
                                       self.limits)
        # In place: at the area limit each float copy of the input is ~100 MB.
        normalised = resized.astype(np.float32)
        del resized
        normalised *= np.float32(1 / 255.0)
        normalised -= self.mean
        normalised /= self.std
        height, width = normalised.shape[:2]
        if self.buckets is None:
            tensor = np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])
            return DetInput(tensor, src_h, src_w)
        bucket_h, bucket_w = self.buckets.det_shape(height, width, self.limits.det_max_side,
                                                    self.limits.det_max_pixels)
        # Zero after normalisation is the mean colour: what DB sees past the image is flat.
        tensor = np.zeros((1, 3, bucket_h, bucket_w), np.float32)
        tensor[0, :, :height, :width] = normalised.transpose(2, 0, 1)
        return DetInput(tensor, src_h, src_w, (height, width))


def mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """The minimum-area rectangle of `contour` as 4 ordered points, and its shorter side."""
    rect = cv2.minAreaRect(contour)
    points = sorted(list(cv2.boxPoints(rect)), key=lambda p: p[0])
    first, fourth = (0, 1) if points[1][1] > points[0][1] else (1, 0)
    second, third = (2, 3) if points[3][1] > points[2][1] else (3, 2)
    box = np.array([points[first], points[second], points[third], points[fourth]])
    return box, min(rect[1])


def box_score_fast(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box polygon, over its bounding rectangle."""
    height, width = prob.shape
    box = box.copy()
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, width - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, width - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, height - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, height - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    box[:, 0] -= xmin
    box[:, 1] -= ymin
    cv2.fillPoly(mask, box.reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(prob[ymin:ymax + 1, xmin:xmax + 1], mask)[0]


def box_score_slow(prob: np.ndarray, contour: np.ndarray) -> float:
    """Mean probability inside the contour itself (slower, tighter for curved text)."""
    height, width = prob.shape
    contour = contour.reshape(-1, 2).copy()
    xmin = int(np.clip(contour[:, 0].min(), 0, width - 1))
    xmax = int(np.clip(contour[:, 0].max(), 0, width - 1))
    ymin = int(np.clip(contour[:, 1].min(), 0, height - 1))
    ymax = int(np.clip(contour[:, 1].max(), 0, height - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    contour[:, 0] -= xmin
    contour[:, 1] -= ymin
    cv2.fillPoly(mask, contour.reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(prob[ymin:ymax + 1, xmin:xmax + 1], mask)[0]


def unclip(box: np.ndarray, ratio: float) -> list:
    """Grows the shrunk text kernel back by area * ratio / perimeter (the DB paper's offset)."""
    poly = Polygon(box)
    distance = poly.area * ratio / poly.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return offset.Execute(distance)


def scale_to_source(box: np.ndarray, width: int, height: int, src_width: int, src_height: int
                    ) -> np.ndarray:
    """Map coordinates (float32, as cv2.boxPoints gives them) -> rounded source pixels.

    PaddleOCR's source size is a float64 array element, so its scaling runs in float32 (the
    division) and then float64 (the product). In float32 throughout, a value near .5 can round
    the other way and move a box edge by a pixel, enough to change what a small crop reads (a
    benchmark image read 'g' where PaddleOCR reads 'q').
    """
    scaled = np.empty(box.shape, np.float64)
    scaled[:, 0] = np.clip(np.round(box[:, 0] / width * np.float64(src_width)), 0, src_width)
    scaled[:, 1] = np.clip(np.round(box[:, 1] / height * np.float64(src_height)), 0, src_height)
    return scaled.astype(np.int32)


def boxes_from_probability_map(prob: np.ndarray, src_height: int, src_width: int,
                               options: OcrOptions) -> tuple[np.ndarray, list[float]]:
    """DB post-processing of one (H, W) probability map; boxes in source-image pixels."""
    bitmap = (prob > options.det_db_thresh).astype(np.uint8)
    if options.use_dilation:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
    height, width = bitmap.shape
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[:MAX_CANDIDATES]:
        points, short_side = mini_box(contour)
        if short_side < MIN_BOX_SIDE:
            continue
        if options.det_db_score_mode == "fast":
            score = box_score_fast(prob, points.reshape(-1, 2))
        else:
            score = box_score_slow(prob, contour)
        if score < options.det_db_box_thresh:
            continue
        expanded = unclip(points, options.det_db_unclip_ratio)
        if len(expanded) != 1:  # the offset split or vanished: not one text region
            continue
        box, short_side = mini_box(np.array(expanded).reshape(-1, 1, 2))
        if short_side < MIN_BOX_SIDE + 2:
            continue
        boxes.append(scale_to_source(box, width, height, src_width, src_height))
        scores.append(score)
    return np.array(boxes, dtype=np.int32).reshape(-1, 4, 2), scores


class TextDetector:
    """image (H, W, 3) BGR -> DetectedBoxes in image pixels, unsorted."""

    def __init__(self, session: InferenceSession, preprocess: DetPreprocess | None = None) -> None:
        self.session = session
        self.preprocess = preprocess or DetPreprocess()

    def __call__(self, image: np.ndarray, options: OcrOptions) -> DetectedBoxes:
        det_input = self.preprocess(image, options)
        prob = self.session.run(det_input.tensor)[0, 0]
        if det_input.content_shape is not None:  # the bucket's padding holds no text
            prob = prob[:det_input.content_shape[0], :det_input.content_shape[1]]
        del det_input
        boxes, scores = boxes_from_probability_map(prob, image.shape[0], image.shape[1], options)
        kept, indices = filter_boxes(boxes, image.shape[0], image.shape[1])
        return DetectedBoxes(kept, tuple(float(scores[i]) for i in indices))
