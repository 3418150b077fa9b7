"""Text recognition: crops batched by aspect ratio, read by the model, decoded by the decoder the
caller passes (greedy CTC today, a constrained one for plates), so the recogniser never holds
one.

A line is read whole when its padded width fits `EngineLimits.rec_max_width` (every line of an
ordinary page: the batches are PaddleOCR's, 6 crops sorted by aspect ratio, padded to the
widest). A wider line is read in pieces of that width, overlapping by OVERLAP_HEIGHTS line
heights, never resized to fit: squeezing a line 10x garbles it, while a piece reads its part at
the scale the model was trained on. Each piece's CTC frames are cut at a seam inside the overlap
where both neighbours read a blank, so decoding the pieces one by one gives what decoding the
joined frames would (no character doubled or lost at a seam); each seam has 2 line heights of
context on both sides. Only one piece's probabilities are kept from batch to batch, so memory
does not grow with the line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .backends import InferenceSession
from .batching import normalised_padded, plan_batches, resize_norm_padded
from .buckets import ShapeBuckets
from .crops import Crops, as_crops
from .limits import EngineLimits

# Pieces of a long line overlap by this many line heights (192 columns at height 48).
OVERLAP_HEIGHTS = 4
CTC_BLANK = 0


@dataclass(frozen=True)
class Recognition:
    text: str
    score: float  # mean probability of the characters read; 0 when nothing was read


class Decoder(Protocol):
    """(N, T, C) per-frame class probabilities -> one Recognition per row."""

    def __call__(self, probs: np.ndarray) -> list[Recognition]: ...


def build_charset(dictionary: list[str], use_space_char: bool = True) -> list[str]:
    """Index 0 is the CTC blank; the space, when used, comes after the dictionary."""
    return ["blank", *dictionary, *([" "] if use_space_char else [])]


def read_dictionary(text: str) -> list[str]:
    """One character per line, as PaddleOCR's dict files and the ONNX 'character' metadata."""
    return [line.rstrip("\r") for line in text.split("\n")] if text else []


class CtcGreedyDecoder:
    """Best class per frame; repeats collapse and blanks drop, as PaddleOCR's CTCLabelDecode.

    The score is the mean probability of the kept frames; an empty result scores 0.
    """

    def __init__(self, charset: Sequence[str]) -> None:
        self.charset = list(charset)

    def __call__(self, probs: np.ndarray) -> list[Recognition]:
        indices = probs.argmax(axis=2)
        maxima = probs.max(axis=2)
        decoded = []
        for row, row_prob in zip(indices, maxima):
            keep = np.ones(len(row), dtype=bool)
            keep[1:] = row[1:] != row[:-1]
            keep &= row != CTC_BLANK
            text = "".join(self.charset[i] for i in row[keep] if i < len(self.charset))
            score = float(np.mean(row_prob[keep])) if keep.any() else 0.0
            decoded.append(Recognition(text, score))
        return decoded


@dataclass(frozen=True)
class Piece:
    """One row of a recognition batch: columns [start, stop) of line `index` at the model's
    height (the whole line when `whole`); `last` marks a line's final piece."""

    index: int
    start: int
    stop: int
    whole: bool = True
    last: bool = True


@dataclass(frozen=True)
class RecBatch:
    pieces: tuple[Piece, ...]
    tensor: np.ndarray  # (rows, 3, height, width) float32, what the model reads


class TextRecognizer:
    """crops + decoder -> [Recognition] in input order."""

    def __init__(self, session: InferenceSession, image_shape=(3, 48, 320), batch_size: int = 6,
                 limits: EngineLimits | None = None, buckets: ShapeBuckets | None = None
                 ) -> None:
        limits = limits or EngineLimits()
        self.session = session
        # Batch widths rounded up to a bucket (for runtimes that keep kernels per shape).
        self.buckets = buckets
        self.height, self.min_width = image_shape[1], image_shape[2]
        self.batch_size = batch_size
        self.max_width = limits.rec_max_width
        self.max_line_width = limits.rec_max_line_width
        self.max_batch_pixels = limits.rec_max_batch_pixels
        self.overlap = OVERLAP_HEIGHTS * self.height
        if self.max_batch_pixels < self.height * self.max_width:
            raise ValueError(f"rec_max_batch_pixels: must be at least {self.height} x "
                             f"rec_max_width = {self.height * self.max_width}")
        if self.max_width < max(self.min_width, 2 * self.overlap):
            raise ValueError(f"rec_max_width: must be at least "
                             f"{max(self.min_width, 2 * self.overlap)} for this model")

    def __call__(self, crops: Crops | Sequence[np.ndarray], decoder: Decoder
                 ) -> list[Recognition]:
        results = [Recognition("", 0.0)] * len(crops)
        joiner: _LineJoiner | None = None
        for batch in self.batches(crops):
            probs = self.session.run(batch.tensor)
            whole = [row for row, piece in enumerate(batch.pieces) if piece.whole]
            if whole:
                rows = probs if len(whole) == len(batch.pieces) else probs[whole]
                for row, recognition in zip(whole, decoder(rows)):
                    results[batch.pieces[row].index] = recognition
            stride = batch.tensor.shape[3] / probs.shape[1]
            for piece, piece_probs in zip(batch.pieces, probs):
                if piece.whole:
                    continue
                joiner = joiner or _LineJoiner(decoder)
                joiner.add(piece, piece_probs, stride)
                if piece.last:
                    results[piece.index] = joiner.result()
                    joiner = None
        return results

    def batches(self, crops: Crops | Sequence[np.ndarray]) -> Iterator[RecBatch]:
        """The batches the model reads for `crops`, in the order `__call__` runs them."""
        crops = as_crops(crops)
        shapes = [crops.shape(i) for i in range(len(crops))]
        ratios = [width / float(height) for height, width in shapes]
        order = np.argsort(ratios)
        # Pad to the widest crop of a batch, never below the model's base width.
        min_ratio = self.min_width / self.height
        padded = [int(self.height * max(min_ratio, ratios[i])) for i in order]
        # Sorted by ratio, so the lines too wide to read whole are the tail of `order`.
        whole = sum(1 for width in padded if width <= self.max_width)
        padded[:whole] = [self._bucket(width) for width in padded[:whole]]
        for batch in plan_batches(padded[:whole], self.height, self.batch_size,
                                  self.max_batch_pixels):
            indices = order[batch]
            width = max(padded[position] for position in batch)
            pieces, rows = [], []
            for index in indices:
                crop = crops[index]
                rows.append(resize_norm_padded(crop, self.height, width))
                pieces.append(Piece(int(index), 0, min(width, self._columns(crop.shape))))
            yield RecBatch(tuple(pieces), np.stack(rows))
        for index in order[whole:]:
            yield from self._line_batches(int(index), crops[index])

    def _bucket(self, width: int) -> int:
        # Never past max_width: a bucket must not build a wider tensor than the limits allow.
        return width if self.buckets is None else self.buckets.rec_width(width, self.max_width)

    def _columns(self, shape: tuple[int, ...]) -> int:
        """The line's width at the model's height, as resize_norm_padded rounds it."""
        return int(math.ceil(self.height * shape[1] / float(shape[0])))

    def spans(self, columns: int) -> list[tuple[int, int]]:
        """[start, stop) column ranges of the pieces of a line `columns` wide: max_width each
        (the last shorter), each starting `overlap` columns before its predecessor ends."""
        step = self.max_width - self.overlap
        spans, start = [], 0
        while start + self.max_width < columns:
            spans.append((start, start + self.max_width))
            start += step
        spans.append((start, columns))
        return spans

    def _line_batches(self, index: int, crop: np.ndarray) -> Iterator[RecBatch]:
        height, width = crop.shape[:2]
        # Beyond max_line_width the line is squeezed: a bound on the time one line can take.
        columns = min(self.max_line_width, self._columns(crop.shape))
        spans = self.spans(columns)
        widths = [stop - start for start, stop in spans]
        for batch in plan_batches(widths, self.height, self.batch_size, self.max_batch_pixels):
            padded = self._bucket(max(self.min_width, *(widths[k] for k in batch)))
            pieces, rows = [], []
            for k in batch:
                start, stop = spans[k]
                # Each piece is resized from its own source columns: the line is never resized
                # whole, which for a 20 x 2,000,000 image would take 700 MB.
                left = start * width // columns
                right = max(left + 1, -(-stop * width // columns))
                resized = cv2.resize(crop[:, left:right], (stop - start, self.height))
                rows.append(normalised_padded(resized, padded))
                pieces.append(Piece(index, start, stop, whole=False, last=k == len(spans) - 1))
            yield RecBatch(tuple(pieces), np.stack(rows))


class _LineJoiner:
    """Joins the pieces of one long line, fed in order, into one Recognition."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.parts: list[Recognition] = []
        # The previous piece, its frames, their stride in columns, its first frame to keep.
        self.pending: tuple[Piece, np.ndarray, float, int] | None = None

    def add(self, piece: Piece, probs: np.ndarray, stride: float) -> None:
        if self.pending is None:
            self.pending = (piece, probs.copy(), stride, 0)
        else:
            previous, previous_probs, previous_stride, first = self.pending
            end, start = seam(previous, previous_probs, previous_stride, piece, probs, stride)
            self._decode(previous_probs[first:end])
            self.pending = (piece, probs.copy(), stride, start)
        if piece.last:
            _, last_probs, _, first = self.pending
            self._decode(last_probs[first:])
            self.pending = None

    def _decode(self, frames: np.ndarray) -> None:
        if len(frames):
            self.parts.append(self.decoder(frames[None])[0])

    def result(self) -> Recognition:
        # The mean over all characters read: each part's score weighted by its length.
        characters = sum(len(part.text) for part in self.parts)
        if not characters:
            return Recognition("", 0.0)
        score = sum(part.score * len(part.text) for part in self.parts) / characters
        return Recognition("".join(part.text for part in self.parts), score)


def seam(left: Piece, left_probs: np.ndarray, left_stride: float, right: Piece,
         right_probs: np.ndarray, right_stride: float) -> tuple[int, int]:
    """Where to cut two overlapping pieces: (frames of `left` to keep, first frame of `right`
    to keep). The cut is the frame nearest the middle of the overlap that both pieces read as
    a blank; with no such frame (dense text all through the overlap), the middle."""
    pairs = []  # (frame of right, frame of left covering the same columns)
    for frame in range(int((left.stop - right.start) / right_stride)):
        column = right.start + frame * right_stride
        left_frame = int(round((column - left.start) / left_stride))
        pairs.append((frame, min(left_frame, len(left_probs) - 1)))
    if not pairs:  # frames wider than the overlap: cut where the right piece begins
        return int(round((right.start - left.start) / left_stride)), 0
    blank = [(frame, left_frame) for frame, left_frame in pairs
             if right_probs[frame].argmax() == CTC_BLANK
             and left_probs[left_frame].argmax() == CTC_BLANK]
    middle = len(pairs) / 2
    frame, left_frame = min(blank or pairs, key=lambda pair: abs(pair[0] - middle))
    return left_frame, frame
