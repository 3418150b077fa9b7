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


def filter_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, list[int]]:
    """Orders, clips and drops boxes 3 px or less on a side; returns the kept boxes as
    (N, 4, 2) float32 and their positions in `boxes`."""
    kept, positions = [], []
    for position, box in enumerate(boxes):
        box = clip_box(order_points_clockwise(np.asarray(box, dtype=np.float32)), height, width)
        if int(np.linalg.norm(box[0] - box[1])) <= 3 or int(np.linalg.norm(box[0] - box[3])) <= 3:
            continue
        kept.append(box)
        positions.append(position)
    return np.array(kept, dtype=np.float32).reshape(-1, 4, 2), positions


def reading_order(boxes: np.ndarray) -> list[int]:
    """Positions of `boxes` top to bottom, then left to right within a row (PaddleOCR's
    sorted_boxes: a stable sort by top-left corner, then neighbours less than SAME_ROW_PIXELS
    apart vertically are swapped into left-to-right order)."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0][1], boxes[i][0][0]))
    for i in range(len(order) - 1):
        for j in range(i, -1, -1):
            upper, lower = boxes[order[j]], boxes[order[j + 1]]
            if abs(lower[0][1] - upper[0][1]) < SAME_ROW_PIXELS and lower[0][0] < upper[0][0]:
                order[j], order[j + 1] = order[j + 1], order[j]
            else:
                break
    return order


def sort_reading_order(boxes: np.ndarray) -> list[np.ndarray]:
    """The boxes in `reading_order`."""
    return [boxes[i] for i in reading_order(boxes)]


# OpenCV's remap (which warpPerspective runs on) asserts that source and destination are under
# SHRT_MAX pixels on each side; a 20 x 2,000,000 image is legal (40 Mpx) and its boxes can be
# 170,000 px long. Warps of such images run in tiles of at most WARP_TILE pixels a side.
SHRT_MAX = 32767
WARP_TILE = 8192
# Cubic interpolation reads 2 pixels beyond the sampled point: a tile's source window keeps a
# margin of 3 so that it samples exactly what the whole image would give.
CUBIC_MARGIN = 3


def crop_size(points: np.ndarray) -> tuple[int, int]:
    """(width, height) of the upright rectangle `crop_rotated` warps the box to."""
    points = np.asarray(points, dtype=np.float32)
    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    return width, height


def crop_shape(points: np.ndarray) -> tuple[int, int]:
    """(height, width) of `crop_rotated(image, points)`, without warping anything."""
    width, height = crop_size(points)
    return (width, height) if height >= VERTICAL_CROP_RATIO * width else (height, width)


def crop_rotated(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Warps the quadrilateral `points` to an upright rectangle (cubic, replicated border)."""
    points = np.asarray(points, dtype=np.float32)
    width, height = crop_size(points)
    target = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    if max(*image.shape[:2], width, height) < SHRT_MAX:
        # Every image OpenCV can warp in one call takes PaddleOCR's own warp, pixel for pixel.
        matrix = cv2.getPerspectiveTransform(points, target)
        crop = cv2.warpPerspective(image, matrix, (width, height),
                                   borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    else:
        crop = _warp_in_tiles(image, points, target, width, height)
    if crop.shape[0] >= VERTICAL_CROP_RATIO * crop.shape[1]:
        crop = np.rot90(crop)
    return crop


def _warp_in_tiles(image: np.ndarray, points: np.ndarray, target: np.ndarray, width: int,
                   height: int) -> np.ndarray:
    """The warp of `crop_rotated` for images too large for one cv2 call: each tile of the
    output is warped from the window of the image it samples (found by mapping the tile's
    corners back through the inverse transform), so no call sees a side over WARP_TILE plus
    the box's skew, which is small whenever a side is long (the image has at most 40 Mpx)."""
    inverse = cv2.getPerspectiveTransform(target, points).astype(np.float64)
    crop = np.empty((height, width, *image.shape[2:]), dtype=image.dtype)
    image_h, image_w = image.shape[:2]
    for top in range(0, height, WARP_TILE):
        bottom = min(top + WARP_TILE, height)
        for left in range(0, width, WARP_TILE):
            right = min(left + WARP_TILE, width)
            corners = np.float64([[[left, top], [right, top], [right, bottom], [left, bottom]]])
            source = cv2.perspectiveTransform(corners, inverse)[0]
            x0 = int(max(0, np.floor(source[:, 0].min()) - CUBIC_MARGIN))
            y0 = int(max(0, np.floor(source[:, 1].min()) - CUBIC_MARGIN))
            x1 = int(min(image_w, np.ceil(source[:, 0].max()) + CUBIC_MARGIN + 1))
            y1 = int(min(image_h, np.ceil(source[:, 1].max()) + CUBIC_MARGIN + 1))
            matrix = cv2.getPerspectiveTransform(points - np.float32([x0, y0]),
                                                 target - np.float32([left, top]))
            crop[top:bottom, left:right] = cv2.warpPerspective(
                image[y0:y1, x0:x1], matrix, (right - left, bottom - top),
                borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC).reshape(
                    crop[top:bottom, left:right].shape)
    return crop
