"""Text direction classifier: tells which crops the model reads as upside down (label 180)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .backends import InferenceSession
from .batching import plan_batches, resize_norm_padded
from .crops import Crops, as_crops
from .limits import EngineLimits

LABELS = ("0", "180")


@dataclass(frozen=True)
class Direction:
    """The classifier's reading of one crop. `turned`: labelled 180 with a score over the
    threshold, so the line is read turned 180 degrees."""

    label: str
    score: float
    turned: bool


class TextClassifier:
    """crops -> [Direction] in input order. Turning is the caller's: `crops.turned(...)`."""

    def __init__(self, session: InferenceSession, image_shape=(3, 48, 192), batch_size: int = 6,
                 limits: EngineLimits | None = None) -> None:
        limits = limits or EngineLimits()
        self.session = session
        self.height, self.width = image_shape[1], image_shape[2]
        self.batch_size = batch_size
        if limits.cls_max_batch_pixels < self.height * self.width:
            raise ValueError(f"cls_max_batch_pixels: must be at least {self.height} x "
                             f"{self.width}, one classifier input")
        self.max_batch_pixels = limits.cls_max_batch_pixels

    def __call__(self, crops: Crops | Sequence[np.ndarray], threshold: float
                 ) -> list[Direction]:
        crops = as_crops(crops)
        results: list[Direction] = [Direction("", 0.0, False)] * len(crops)
        shapes = [crops.shape(i) for i in range(len(crops))]
        # Batching neighbours in aspect ratio keeps padding (and wasted compute) small.
        order = np.argsort([width / float(height) for height, width in shapes])
        for batch in plan_batches([self.width] * len(order), self.height, self.batch_size,
                                  self.max_batch_pixels):
            indices = order[batch]
            tensor = np.stack([resize_norm_padded(crops[i], self.height, self.width)
                               for i in indices])
            for index, row in zip(indices, self.session.run(tensor)):
                label = LABELS[int(row.argmax())]
                score = float(row.max())
                results[index] = Direction(label, score, label == "180" and score > threshold)
        return results
