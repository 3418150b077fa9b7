"""Box geometry shared by the stages: point order, clipping, reading order and rotated crops.

Ported from PaddleOCR 2.10 (tools/infer/predict_det.py, predict_system.py, utility.py) so that
boxes, their order and the crops fed to recognition match its pipeline pixel for pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

# Two boxes whose top-left corners are closer than this vertically count as one text row.
SAME_ROW_PIXELS = 10
# A crop this much taller than wide is vertical text: turn it to read left to right.
VERTICAL_CROP_RATIO = 1.5


def order_points_clockwise(points: np.ndarray) -> np.ndarray:
    """Orders 4 points as top-left, top-right, bottom-right, bottom-left."""
    rect = np.zeros((4, 2), dtype=np.float32)
    sums = points.sum(axis=1)
    rect[0] = points[np.argmin(sums)]
    rect[2] = points[np.argmax(sums)]
    rest = np.delete(points, (np.argmin(sums), np.argmax(sums)), axis=0)
    diff = np.diff(np.array(rest), axis=1)
    rect[1] = rest[np.argmin(diff)]
    rect[3] = rest[np.argmax(diff)]
    return rect


def clip_box(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clips points to the image and truncates them to whole pixels, as PaddleOCR does."""
    points = points.copy()
    points[:, 0] = np.trunc(np.clip(points[:, 0], 0, width - 1))
    points[:, 1] = np.trunc(np.clip(points[:, 1], 0, height - 1))
    return points


def filter_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Orders, clips and drops boxes 3 px or less on a side; returns (N, 4, 2) float32."""
    kept = []
    for box in boxes:
        box = clip_box(order_points_clockwise(np.asarray(box, dtype=np.float32)), height, width)
        if int(np.linalg.norm(box[0] - box[1])) <= 3 or int(np.linalg.norm(box[0] - box[3])) <= 3:
            continue
        kept.append(box)
    return np.array(kept, dtype=np.float32).reshape(-1, 4, 2)


def sort_reading_order(boxes: np.ndarray) -> list[np.ndarray]:
    """Top to bottom, then left to right within a row (PaddleOCR's sorted_boxes)."""
    ordered = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(ordered) - 1):
        for j in range(i, -1, -1):
            same_row = abs(ordered[j + 1][0][1] - ordered[j][0][1]) < SAME_ROW_PIXELS
            if same_row and ordered[j + 1][0][0] < ordered[j][0][0]:
                ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
            else:
                break
    return ordered


def crop_rotated(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Warps the quadrilateral `points` to an upright rectangle (cubic, replicated border)."""
    points = np.asarray(points, dtype=np.float32)
    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    target = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    matrix = cv2.getPerspectiveTransform(points, target)
    crop = cv2.warpPerspective(image, matrix, (width, height),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if crop.shape[0] >= VERTICAL_CROP_RATIO * crop.shape[1]:
        crop = np.rot90(crop)
    return crop
