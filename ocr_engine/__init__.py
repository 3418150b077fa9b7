"""ocr_engine: PaddleOCR's PP-OCR pipeline (DB detection, direction classifier, CRNN/SVTR
recognition) on onnxruntime or paddle.inference, as a plain library with no globals.

Call `setup_process(backend, threads)` once per process before building engines: it sets the
process-wide things (thread counts, environment) that an engine never touches itself.
"""

from .backends import BACKEND_NAMES, BACKENDS, Backend, setup_process
from .documents import (
    DocumentError,
    DocumentInfo,
    DocumentTooComplexError,
    InvalidDocumentError,
    PageContent,
    PasswordRequiredError,
    PdfSandbox,
    TooManyPagesError,
    WrongPasswordError,
    document_kind,
    page_text,
    probe_document,
    read_page,
    render_page,
)
from .errors import (
    BackendSetupError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidOptionError,
    ModelChecksumError,
    ModelNotFoundError,
    OcrError,
)
from .image import decode_image
from .limits import EngineLimits
from .models import ModelPaths, custom_model_paths, resolve_model_set
from .options import OPTION_NAMES, OcrOptions, parse_options
from .pipeline import EngineConfig, OcrEngine, OcrResult, TextLine
from .rec import CtcGreedyDecoder, Decoder, Recognition

__all__ = [
    "BACKENDS", "BACKEND_NAMES", "Backend", "BackendSetupError", "CtcGreedyDecoder", "Decoder",
    "EngineConfig", "EngineLimits", "ImageTooLargeError", "InvalidImageError",
    "InvalidOptionError", "ModelChecksumError", "ModelNotFoundError", "ModelPaths",
    "OPTION_NAMES", "OcrEngine", "OcrError", "OcrOptions", "OcrResult", "Recognition",
    "TextLine", "custom_model_paths", "decode_image", "parse_options", "resolve_model_set",
    "setup_process",
    # documents
    "DocumentError", "DocumentInfo", "DocumentTooComplexError", "InvalidDocumentError",
    "PageContent", "PasswordRequiredError", "PdfSandbox", "TooManyPagesError",
    "WrongPasswordError", "document_kind", "page_text", "probe_document", "read_page",
    "render_page",
]
