"""Text recognition: batched by aspect ratio, CTC greedy decoding over the model's dictionary."""

from __future__ import annotations

import numpy as np

from .backends import InferenceSession
from .cls import resize_norm_padded


def build_charset(dictionary: list[str], use_space_char: bool = True) -> list[str]:
    """Index 0 is the CTC blank; the space, when used, comes after the dictionary."""
    return ["blank", *dictionary, *([" "] if use_space_char else [])]


def read_dictionary(text: str) -> list[str]:
    """One character per line, as PaddleOCR's dict files and the ONNX 'character' metadata."""
    return [line.rstrip("\r") for line in text.split("\n")] if text else []


def ctc_greedy_decode(probs: np.ndarray, charset: list[str]) -> list[tuple[str, float]]:
    """(N, T, C) probabilities -> [(text, mean probability of the kept characters)].

    Repeated indices collapse and blanks drop, as in PaddleOCR's CTCLabelDecode; an empty
    result scores 0.
    """
    indices = probs.argmax(axis=2)
    maxima = probs.max(axis=2)
    decoded = []
    for row, row_prob in zip(indices, maxima):
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        text = "".join(charset[i] for i in row[keep] if i < len(charset))
        score = float(np.mean(row_prob[keep])) if keep.any() else 0.0
        decoded.append((text, score))
    return decoded


class TextRecognizer:
    """crops -> [(text, score)] in input order."""

    def __init__(self, session: InferenceSession, charset: list[str],
                 image_shape=(3, 48, 320), batch_size: int = 6) -> None:
        self.session = session
        self.charset = charset
        self.height, self.min_width = image_shape[1], image_shape[2]
        self.batch_size = batch_size

    def __call__(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        ratios = [c.shape[1] / float(c.shape[0]) for c in crops]
        order = np.argsort(ratios)
        for start in range(0, len(crops), self.batch_size):
            indices = order[start:start + self.batch_size]
            # Pad only to the widest crop of this batch, never below the model's base width.
            max_ratio = max(self.min_width / self.height, *(ratios[i] for i in indices))
            width = int(self.height * max_ratio)
            batch = np.stack([resize_norm_padded(crops[i], self.height, width) for i in indices])
            for index, result in zip(indices, ctc_greedy_decode(self.session.run(batch),
                                                                self.charset)):
                results[index] = result
        return results
