"""ocr_engine: PaddleOCR's PP-OCR pipeline (DB detection, direction classifier, CRNN/SVTR
recognition) on onnxruntime or paddle.inference, as a plain library with no globals."""

from .errors import (
    ImageTooLargeError,
    InvalidImageError,
    InvalidOptionError,
    ModelChecksumError,
    ModelNotFoundError,
    OcrError,
)
from .image import decode_image
from .models import ModelPaths, custom_model_paths, resolve_model_set
from .options import OPTION_NAMES, OcrOptions, parse_options
from .pipeline import EngineConfig, OcrEngine, OcrResult, TextLine

__all__ = [
    "EngineConfig", "ImageTooLargeError", "InvalidImageError", "InvalidOptionError",
    "ModelChecksumError", "ModelNotFoundError", "ModelPaths", "OPTION_NAMES", "OcrEngine",
    "OcrError", "OcrOptions", "OcrResult", "TextLine", "custom_model_paths", "decode_image",
    "parse_options", "resolve_model_set",
]
