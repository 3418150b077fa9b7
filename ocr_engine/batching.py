"""What the classifier and the recogniser share: the line-image tensor and the batching rule.

Both stages read line crops at a fixed height, padded on the right to a common width per batch.
Crops are sorted by aspect ratio first (by the caller) so that neighbours in a batch need little
padding; a batch is then cut at `max_count` rows or before its padded area would pass
`max_pixels`, whichever comes first, so no batch tensor is larger than the limits allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np


def resize_norm_padded(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes to `height` keeping the aspect ratio (at most `width`), scales to [-1, 1] and
    right-pads with zeros to (3, height, width), as PaddleOCR's resize_norm_img."""
    resized_w = min(width, int(math.ceil(height * crop.shape[1] / float(crop.shape[0]))))
    return normalised_padded(cv2.resize(crop, (resized_w, height)), width)


def normalised_padded(resized: np.ndarray, width: int) -> np.ndarray:
    """An (h, w, 3) uint8 image already at the model's height -> (3, h, width) float32."""
    height, resized_w = resized.shape[:2]
    padded = np.zeros((3, height, width), dtype=np.float32)
    padded[:, :, :resized_w] = (resized.astype(np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return padded


def plan_batches(widths: Sequence[int], height: int, max_count: int, max_pixels: int
                 ) -> list[list[int]]:
    """Cuts positions 0..len(widths)-1, in order, into batches.

    A batch's tensor is (rows, 3, height, widest of its rows); a batch ends at `max_count` rows
    or before the next row would take rows x height x widest past `max_pixels`. A row that alone
    exceeds `max_pixels` gets a batch of its own (the callers cap widths so this cannot happen).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for position, width in enumerate(widths):
        grown = max(widest, width)
        if current and (len(current) >= max_count
                        or (len(current) + 1) * height * grown > max_pixels):
            batches.append(current)
            current, grown = [], width
        current.append(position)
        widest = grown
    if current:
        batches.append(current)
    return batches
