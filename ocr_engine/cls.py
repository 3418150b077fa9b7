"""Text direction classifier: turns crops the model reads as upside down (label 180)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .backends import InferenceSession

LABELS = ("0", "180")


def resize_norm_padded(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes to `height` keeping the aspect ratio (at most `width`), scales to [-1, 1] and
    right-pads with zeros to (3, height, width). Shared by the classifier and the recogniser."""
    resized_w = min(width, int(math.ceil(height * crop.shape[1] / float(crop.shape[0]))))
    resized = cv2.resize(crop, (resized_w, height)).astype(np.float32)
    padded = np.zeros((3, height, width), dtype=np.float32)
    padded[:, :, :resized_w] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return padded


class TextClassifier:
    """crops -> (crops, some turned 180 degrees; [(label, score)] in input order)."""

    def __init__(self, session: InferenceSession, image_shape=(3, 48, 192), batch_size: int = 6):
        self.session = session
        self.height, self.width = image_shape[1], image_shape[2]
        self.batch_size = batch_size

    def __call__(self, crops: list[np.ndarray], threshold: float
                 ) -> tuple[list[np.ndarray], list[tuple[str, float]]]:
        crops = list(crops)
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        # Batching neighbours in aspect ratio keeps padding (and wasted compute) small.
        order = np.argsort([c.shape[1] / float(c.shape[0]) for c in crops])
        for start in range(0, len(crops), self.batch_size):
            indices = order[start:start + self.batch_size]
            batch = np.stack([resize_norm_padded(crops[i], self.height, self.width)
                              for i in indices])
            probs = self.session.run(batch)
            for index, row in zip(indices, probs):
                label = LABELS[int(row.argmax())]
                score = float(row.max())
                results[index] = (label, score)
                if label == "180" and score > threshold:
                    crops[index] = cv2.rotate(crops[index], cv2.ROTATE_180)
        return crops, results
