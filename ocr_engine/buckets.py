"""Bucket shapes: input sizes rounded up to a few values, so per-shape caches stay bounded.

Some runtimes compile kernels for every new input shape and keep them (OpenVINO's CPU plugin:
a worker grew to 1.05 GB after 60 detection shapes). The detector's input is any multiple of 32
up to 4000 on each side and the recogniser's batch width any number of columns up to 3200, so
unbounded that is thousands of shapes. Rounding each up to a bucket bounds it; the padding is
zeros after normalisation (detection: cropped off the probability map again; recognition: what
the batch's own right padding already is).

A ladder is a sorted tuple of (up_to, step): a value no larger than `up_to` is rounded up to a
multiple of that rung's `step`; above the last rung's `up_to` the value is kept. The steps grow
with the size, so the padding stays a bounded fraction of the input (a fixed step would pad a
small input by more than itself, and a large one by next to nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

Ladder = tuple[tuple[int, int], ...]

# Detection sides (multiples of 32 already). 128 up to 1024, then 256 up to the 4000 limit:
# PaddleOCR's max/960 pages land in 8 x 8 shapes; see BUCKETS_MEASURED for the choice.
DET_LADDER: Ladder = ((1024, 128), (4096, 256))
# Recognition batch widths, in columns at the model's height.
REC_LADDER: Ladder = ((1280, 160), (3200, 320))


def round_up(value: int, ladder: Ladder) -> int:
    """`value` rounded up to its rung's step, never past the rung's `up_to` (4000 with step 256
    stays 4000, not 4096); unchanged past the last rung or for value <= 0."""
    if value <= 0:
        return value
    for up_to, step in ladder:
        if value <= up_to:
            return min(-(-value // step) * step, up_to)
    return value


def check_ladder(ladder: Ladder) -> None:
    """Raises ValueError unless the rungs are positive, their limits increasing."""
    previous = 0
    for up_to, step in ladder:
        if step <= 0 or up_to <= previous:
            raise ValueError(f"bucket ladder {ladder!r}: steps must be positive and limits "
                             "increasing")
        previous = up_to


def buckets(ladder: Ladder, low: int, high: int, multiple: int = 1) -> Iterator[int]:
    """Every bucket value that inputs in [low, high] (multiples of `multiple`) round to."""
    seen: set[int] = set()
    for value in range(-(-low // multiple) * multiple, high + 1, multiple):
        bucket = round_up(value, ladder)
        if bucket not in seen:
            seen.add(bucket)
            yield bucket


@dataclass(frozen=True)
class ShapeBuckets:
    """The bucket rule a backend's stages apply: detection sides and recognition widths.

    `limit` bounds a rounded value from above: a bucket never passes the engine's own limit
    (det_max_side, rec_max_width), so bucketing never builds a tensor the limits forbid.
    """

    det: Ladder = DET_LADDER
    rec: Ladder = REC_LADDER

    def __post_init__(self) -> None:
        check_ladder(self.det)
        check_ladder(self.rec)

    def det_shape(self, height: int, width: int, max_side: int, max_pixels: int
                  ) -> tuple[int, int]:
        """The bucket of a (height, width) detection input, within the engine's limits. An
        input whose bucket would pass `max_pixels` keeps its own shape: only inputs at the
        area limit (over 8 Mpx with the defaults), rare and dominated by their own cost."""
        bucket_h = max(height, min(round_up(height, self.det), max_side))
        bucket_w = max(width, min(round_up(width, self.det), max_side))
        if bucket_h * bucket_w > max_pixels:
            return height, width
        return bucket_h, bucket_w

    def rec_width(self, width: int, limit: int) -> int:
        """The bucket of a recognition batch width, at most `limit` (rec_max_width)."""
        return max(width, min(round_up(width, self.rec), limit))
