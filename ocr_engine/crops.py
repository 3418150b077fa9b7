"""The text lines of one image as crops made on demand.

The classifier and the recogniser each need every line's pixels once, at their own scale. Made
all at once, the crops of one image can outweigh it, and nothing caps their sum: up to 1000
boxes, each grown by `det_db_unclip_ratio` (up to 10) and free to overlap (a 6000 x 6000 page of
957 words at ratio 10 gave 228 MB of crops). So a stage asks for a crop when it fills a batch
row and drops it right after: what is alive at once is one crop, never the set. A crop is
warped twice when the classifier runs: 0.2-0.3 ms per line (5 ms on the 15-line benchmark page,
under 1% of its time).

`shape(i)` gives a crop's size without making it, which is all the stages need to sort and batch.
Plain arrays (word crops, tests) are wrapped the same way by `as_crops`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from .geometry import crop_rotated, crop_shape


@runtime_checkable
class Crops(Protocol):
    """Line images, indexable; `turned(indices)` gives the same lines with those turned 180."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...

    def shape(self, index: int) -> tuple[int, int]: ...

    def turned(self, indices: Iterable[int]) -> Crops: ...


class BoxCrops:
    """The boxes of `image`, warped upright by `crop_rotated` when asked for."""

    def __init__(self, image: np.ndarray, boxes: np.ndarray,
                 turned: frozenset[int] = frozenset()) -> None:
        self.image = image
        self.boxes = boxes
        self._turned = turned

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> np.ndarray:
        crop = crop_rotated(self.image, self.boxes[index])
        return cv2.rotate(crop, cv2.ROTATE_180) if index in self._turned else crop

    def shape(self, index: int) -> tuple[int, int]:
        return crop_shape(self.boxes[index])

    def turned(self, indices: Iterable[int]) -> BoxCrops:
        return BoxCrops(self.image, self.boxes, self._turned | frozenset(indices))


class ArrayCrops:
    """Crops that are already arrays."""

    def __init__(self, arrays: Sequence[np.ndarray], turned: frozenset[int] = frozenset()
                 ) -> None:
        self.arrays = list(arrays)
        self._turned = turned

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> np.ndarray:
        crop = self.arrays[index]
        return cv2.rotate(crop, cv2.ROTATE_180) if index in self._turned else crop

    def shape(self, index: int) -> tuple[int, int]:
        return self.arrays[index].shape[:2]

    def turned(self, indices: Iterable[int]) -> ArrayCrops:
        return ArrayCrops(self.arrays, self._turned | frozenset(indices))


def as_crops(crops: Crops | Sequence[np.ndarray]) -> Crops:
    return crops if isinstance(crops, Crops) else ArrayCrops(crops)
