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
# cls_long_lines "windows": a line longer than the classifier's 4:1 input is read in at most
# this many windows of that shape, spread evenly along it, instead of squeezed whole into one.
MAX_WINDOWS = 4


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

    def __call__(self, crops: Crops | Sequence[np.ndarray], threshold: float,
                 windows: bool = False) -> list[Direction]:
        """`windows`: read a line longer than the input's 4:1 in up to MAX_WINDOWS windows
        of the input's shape and average their probabilities (cls_long_lines "windows").
        Squeezed whole (PaddleOCR's way, the default), a full-width line of a page (35:1)
        is too thin to read: 3-4 of 40 such lines came out turned on rendered A4 pages."""
        crops = as_crops(crops)
        results: list[Direction] = [Direction("", 0.0, False)] * len(crops)
        shapes = [crops.shape(i) for i in range(len(crops))]
        # Batching neighbours in aspect ratio keeps padding (and wasted compute) small.
        order = np.argsort([width / float(height) for height, width in shapes])
        rows = [(int(i), piece) for i in order
                for piece in (self._windows(crops[i]) if windows else (crops[i],))]
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for batch in plan_batches([self.width] * len(rows), self.height, self.batch_size,
                                  self.max_batch_pixels):
            tensor = np.stack([resize_norm_padded(rows[k][1], self.height, self.width)
                               for k in batch])
            for k, probs in zip(batch, self.session.run(tensor)):
                index = rows[k][0]
                sums[index] = sums.get(index, 0) + probs
                counts[index] = counts.get(index, 0) + 1
        for index, total in sums.items():
            row = total / counts[index]
            label = LABELS[int(row.argmax())]
            score = float(row.max())
            results[index] = Direction(label, score, label == "180" and score > threshold)
        return results

    def _windows(self, crop: np.ndarray) -> list[np.ndarray]:
        """The crop itself when it fits the input's aspect; else up to MAX_WINDOWS pieces of
        that aspect at its own height, spread evenly from its left end to its right end."""
        height, width = crop.shape[:2]
        span = max(1, int(round(height * self.width / self.height)))
        if width <= span * 1.25:  # a little squeezing reads fine; windows would overlap
            return [crop]
        count = min(MAX_WINDOWS, int(np.ceil(width / span)))
        starts = np.linspace(0, width - span, count).round().astype(int)
        return [crop[:, start:start + span] for start in starts]
