"""Documents (PDF, multi-page TIFF) read page by page from untrusted bytes.

A document is a list of pages; each page becomes a BGR image for the OCR pipeline, or, for a
PDF page that has one, the lines of its embedded text layer. `probe_document` says what a
document is (kind, page count, page sizes, which pages carry text); `read_page` gives one page
as the worker needs it; `render_page` and `page_text` are its two halves.

PDF goes through pdfium (pypdfium2), isolated in a child process forked for each call. pdfium is
native code fed hostile input, and checks on what it reports are not enough: a form XObject that
draws itself twice makes pdfium's page loader allocate without bound (22 GB in seconds,
measured), and a parser crash would take the whole worker, models and all, with it. So the child
gets an address-space budget (`PdfSandbox.memory_mb` on top of what it inherits), a CPU limit,
core dumps off, every inherited descriptor but its result pipe closed, and it dies with its
parent (PR_SET_PDEATHSIG); the parent waits at most `PdfSandbox.timeout_s`, then kills it. A
child that dies or overruns is a DocumentTooComplexError, and the worker carries on. The child
runs as the same user: this bounds resources and contains crashes, it is no barrier against
code execution.

The fork shares the document's bytes copy-on-write; the rendered pixels come back through the
pipe straight into the array the caller gets. Measured on a letter page at 200 dpi (1700 x 2200):
30-65 ms per page, ~10 ms of it the fork; pdfium's peak in the child is 12-17 MB, the 11 MB
bitmap included, and the worker only ever holds the array it is given. What needs no pdfium
(dpi, the rendered size from the page box) is checked before any pixel is rendered: a 1e6 pt
MediaBox is refused from its two numbers.

pdfium is not thread-safe: call these functions from one thread at a time per process (a worker
is single-threaded). The child is forked from a possibly multi-threaded process (onnxruntime's
pools), which is safe here because it only calls pdfium, numpy and os, and exits with _exit.

TIFF pages are decoded in-process by Pillow with the same guards and normalisation as single
images (image.py): the frame's size is checked before its pixels are decoded.
"""

from __future__ import annotations

import ctypes
import io
import math
import os
import pickle
import resource
import select
import signal
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError, InvalidOptionError, OcrError
from .image import _DECODE_ERRORS, DEFAULT_MAX_PIXELS, _bomb_message, _to_bgr, decode_image
from .pipeline import TextLine

DocumentKind = Literal["pdf", "tiff", "image"]
PDF_TEXT_MODES = ("ocr", "auto", "only")

DEFAULT_DPI = 200
MIN_DPI, MAX_DPI = 36, 1200
DEFAULT_MAX_PAGES = 1000
MAX_PASSWORD_LENGTH = 1024
POINTS_PER_INCH = 72.0
# Larger sides (1e8 pt is 35 km) are nonsense, and would overflow pdfium's int pixel
# coordinates at MAX_DPI even for text boxes.
_MAX_PAGE_SIDE_PT = 1e8
_SIZE_EPSILON = 1e-6
# Where a PDF header may start: readers accept junk before it (mail headers, BOMs).
_PDF_HEADER_WINDOW = 1024
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*",
                b"II+\x00", b"MM\x00+")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# --- errors -------------------------------------------------------------------------------------


class DocumentError(OcrError):
    """Base of the errors a document (rather than one image) can raise."""

    code = "invalid_document"


class InvalidDocumentError(DocumentError):
    """Not a document we read, or corrupt, truncated or otherwise unusable."""

    code = "invalid_document"


class PasswordRequiredError(DocumentError):
    """The PDF is encrypted and no password was given."""

    code = "password_required"


class WrongPasswordError(PasswordRequiredError):
    """A password was given and it does not open the PDF."""

    code = "wrong_password"


class TooManyPagesError(DocumentError):
    """The document has more pages than the limit; refused before any page is read."""

    code = "too_many_pages"


class DocumentTooComplexError(DocumentError):
    """Reading the document ran past the sandbox's memory or time budget (or crashed pdfium)."""

    code = "document_too_complex"


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentInfo:
    """What a document is. `page_sizes` are (width, height) in points (1/72 inch) for a PDF,
    as the page is displayed (CropBox, /Rotate applied), and in pixels for TIFF and images.
    `text_pages[i]` is True when page i+1 has an embedded text layer (PDF only)."""

    kind: DocumentKind
    pages: int
    page_sizes: tuple[tuple[float, float], ...]
    text_pages: tuple[bool, ...]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "pages": self.pages,
                "page_sizes": [list(size) for size in self.page_sizes],
                "text_pages": list(self.text_pages)}


@dataclass(frozen=True)
class PageContent:
    """One page as `read_page` gives it: the rendered image when the page is to be OCR'd, or
    the text layer's lines (boxes in pixels of the page rendered at the asked dpi)."""

    width: int
    height: int
    image: np.ndarray | None = None
    text_lines: tuple[TextLine, ...] | None = None
    read_ms: float = 0.0

    @property
    def source(self) -> Literal["ocr", "text_layer"]:
        return "ocr" if self.image is not None else "text_layer"


@dataclass(frozen=True)
class PdfSandbox:
    """Budget of the child process each PDF call runs in.

    memory_mb: address space the child may add to what it inherits (pdfium's own allocations,
        the page bitmap twice: a 40 Mpx page is 120 MB).
    timeout_s: wall time of one call (probe, one page) before the child is killed; keep it
        under the pool's task timeout so the worker survives a slow document.
    """

    memory_mb: int = 1024
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int) \
                or self.memory_mb < 64:
            raise ValueError(f"memory_mb: must be an integer of at least 64, got "
                             f"{self.memory_mb!r}")
        if not isinstance(self.timeout_s, int | float) or not 0 < self.timeout_s <= 3600:
            raise ValueError(f"timeout_s: must be in (0, 3600], got {self.timeout_s!r}")


DEFAULT_SANDBOX = PdfSandbox()


# --- public API ---------------------------------------------------------------------------------


def document_kind(data: bytes) -> Literal["pdf", "tiff"] | None:
    """"pdf" or "tiff" (a TIFF of more than one frame) by content, else None (an image, or not
    a document). Reads only headers."""
    head = bytes(data[:_PDF_HEADER_WINDOW])
    if head.startswith(_TIFF_MAGIC):
        chain = _tiff_chain(data, 1)
        # A cut multi-page TIFF is still a document (and fails as one), not a one-page image.
        return "tiff" if chain.frames > 1 or chain.frames == 1 and chain.broken else None
    if head.startswith(_IMAGE_MAGIC):
        return None
    return "pdf" if b"%PDF-" in head else None


def probe_document(data: bytes, password: str | None = None,
                   max_pages: int = DEFAULT_MAX_PAGES,
                   sandbox: PdfSandbox = DEFAULT_SANDBOX) -> DocumentInfo:
    """What the document is. A PDF over `max_pages` is refused (TooManyPagesError) before any
    page is loaded; an encrypted one needs its password. Any other bytes are read as an image
    (kind "image", one page, its header's size) and fail as invalid_document when they are
    neither."""
    _check_password(password)
    _check_positive("max_pages", max_pages)
    kind = _kind(data)
    if kind == "pdf":
        return _run_sandboxed(_probe_pdf, (data, password, max_pages), sandbox)
    if kind == "tiff":
        return _probe_tiff(data, max_pages)
    width, height = _image_size(data, "document")
    return DocumentInfo("image", 1, ((width, height),), (False,))


def render_page(data: bytes, page: int, dpi: int = DEFAULT_DPI, password: str | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                sandbox: PdfSandbox = DEFAULT_SANDBOX) -> np.ndarray:
    """Page `page` (1-based) as an (H, W, 3) BGR uint8 array. A PDF page is rendered at `dpi`
    (its size, from the page box, is checked against `max_pixels` first: ImageTooLargeError);
    a TIFF frame or an image is decoded at its own pixel size (`dpi` does not apply)."""
    content = read_page(data, page, dpi, "ocr", password, max_pixels, sandbox)
    return content.image


def page_text(data: bytes, page: int, dpi: int = DEFAULT_DPI, password: str | None = None,
              sandbox: PdfSandbox = DEFAULT_SANDBOX) -> list[TextLine]:
    """The embedded text of page `page` (1-based), one TextLine per text line in pdfium's
    reading order, confidence 1.0, boxes in pixels of the page rendered at `dpi`. Empty for
    a page without a text layer, and for TIFF pages and images."""
    content = read_page(data, page, dpi, "only", password, DEFAULT_MAX_PIXELS, sandbox)
    return list(content.text_lines or ())


def read_page(data: bytes, page: int, dpi: int = DEFAULT_DPI, pdf_text: str = "ocr",
              password: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
              sandbox: PdfSandbox = DEFAULT_SANDBOX) -> PageContent:
    """Page `page` (1-based) as OCR needs it, in one pass over the document.

    pdf_text: "ocr" renders the page; "only" gives its text layer and never renders (no lines
    when it has none); "auto" gives the text layer when the page has one, else renders it.
    TIFF pages and images have no text layer: "only" gives no lines, the others the image.
    """
    _check_password(password)
    _check_positive("page", page)
    _check_positive("max_pixels", max_pixels)
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not MIN_DPI <= dpi <= MAX_DPI:
        raise InvalidOptionError("dpi", f"must be an integer from {MIN_DPI} to {MAX_DPI}, "
                                 f"got {dpi!r}")
    if pdf_text not in PDF_TEXT_MODES:
        raise InvalidOptionError("pdf_text", f"must be one of {', '.join(PDF_TEXT_MODES)}, "
                                 f"got {pdf_text!r}")
    start = time.perf_counter()
    kind = _kind(data)
    if kind == "pdf":
        content = _run_sandboxed(_read_pdf_page,
                                 (data, password, page, dpi, pdf_text, max_pixels), sandbox)
    else:
        content = _read_image_page(data, kind, page, pdf_text, max_pixels)
    return PageContent(content.width, content.height, content.image, content.text_lines,
                       (time.perf_counter() - start) * 1000)


def rendered_size(width_pt: float, height_pt: float, dpi: int) -> tuple[int, int]:
    """(width, height) in pixels of a page of `width_pt` x `height_pt` points at `dpi`, each
    side rounded up (a part of a pixel is a pixel), but not for float noise: 792 pt at 150 dpi
    is 1650 px, not 1651."""
    scale = dpi / POINTS_PER_INCH
    return (max(1, math.ceil(width_pt * scale - _SIZE_EPSILON)),
            max(1, math.ceil(height_pt * scale - _SIZE_EPSILON)))


# --- checks -------------------------------------------------------------------------------------


def _check_password(password: object) -> None:
    if password is None:
        return
    if not isinstance(password, str):
        raise InvalidOptionError("password", f"must be a string, got {type(password).__name__}")
    if "\x00" in password or len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidOptionError("password", f"must have at most {MAX_PASSWORD_LENGTH} "
                                 "characters and no NUL")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(name, f"must be a positive integer, got {value!r}")


def _kind(data: bytes) -> DocumentKind:
    if not data:
        raise InvalidDocumentError("the document is empty (0 bytes)")
    return document_kind(data) or "image"


def _check_page_box(page: int, width_pt: float, height_pt: float) -> None:
    # pdfium caps nothing: a MediaBox of 1e300 or [0 0 0 0] comes back as given.
    if not (0 < width_pt <= _MAX_PAGE_SIDE_PT and 0 < height_pt <= _MAX_PAGE_SIDE_PT):
        raise InvalidDocumentError(f"page {page} has no usable size "
                                   f"({width_pt:g} x {height_pt:g} pt)")


def _check_page_size(page: int, width_pt: float, height_pt: float, dpi: int,
                     max_pixels: int) -> tuple[int, int]:
    width, height = rendered_size(width_pt, height_pt, dpi)
    if width * height > max_pixels:
        fits = math.floor(POINTS_PER_INCH * math.sqrt(max_pixels / (width_pt * height_pt)))
        while fits >= MIN_DPI and math.prod(rendered_size(width_pt, height_pt, fits)) \
                > max_pixels:
            fits -= 1
        hint = (f"at most {fits} dpi fits" if fits >= MIN_DPI
                else f"no dpi from {MIN_DPI} fits")
        raise ImageTooLargeError(
            f"page {page} is {width_pt:.0f} x {height_pt:.0f} pt: at {dpi} dpi it renders to "
            f"{width}x{height} = {width * height} pixels, more than the limit of {max_pixels} "
            f"({hint})")
    return width, height


# --- PDF, inside the sandbox --------------------------------------------------------------------


def _open_pdf(data: bytes, password: str | None):
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        return pdfium.PdfDocument(data, password=password)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code == pdfium_c.FPDF_ERR_PASSWORD:
            if password is None:
                raise PasswordRequiredError("the PDF is encrypted: send its password in the "
                                            "'password' field") from None
            raise WrongPasswordError("the password does not open this PDF") from None
        if code == pdfium_c.FPDF_ERR_SECURITY:
            raise InvalidDocumentError("the PDF is encrypted with a security handler we do "
                                       "not support") from None
        raise InvalidDocumentError("cannot read the PDF: the data is truncated, corrupt or "
                                   "has no pages") from None


def _probe_pdf(data: bytes, password: str | None, max_pages: int) -> DocumentInfo:
    pdf = _open_pdf(data, password)
    count = len(pdf)
    if count > max_pages:
        raise TooManyPagesError(f"the document has {count} pages, more than the limit of "
                                f"{max_pages}")
    sizes, text = [], []
    for index in range(count):
        page = _load_page(pdf, index + 1)
        width, height = page.get_size()
        sizes.append((round(width, 2), round(height, 2)))
        textpage = page.get_textpage()
        text.append(_has_text(textpage))
        textpage.close()
        page.close()
    return DocumentInfo("pdf", count, tuple(sizes), tuple(text))


def _read_pdf_page(data: bytes, password: str | None, number: int, dpi: int, pdf_text: str,
                   max_pixels: int) -> PageContent:
    pdf = _open_pdf(data, password)
    if number > len(pdf):
        raise InvalidOptionError("page", f"the document has {len(pdf)} pages, there is no "
                                 f"page {number}")
    page = _load_page(pdf, number)
    width_pt, height_pt = page.get_size()
    _check_page_box(number, width_pt, height_pt)
    if pdf_text == "ocr":
        width, height = _check_page_size(number, width_pt, height_pt, dpi, max_pixels)
        return PageContent(width, height, image=_render(page, width, height))
    width, height = rendered_size(width_pt, height_pt, dpi)
    lines = _text_lines(page, width, height)
    if lines or pdf_text == "only":
        return PageContent(width, height, text_lines=tuple(lines))
    width, height = _check_page_size(number, width_pt, height_pt, dpi, max_pixels)
    return PageContent(width, height, image=_render(page, width, height))


def _load_page(pdf, number: int):
    import pypdfium2 as pdfium

    try:
        return pdf[number - 1]
    except (pdfium.PdfiumError, IndexError):
        raise InvalidDocumentError(f"cannot read page {number} of the PDF: its page tree is "
                                   "broken") from None


def _render(page, width: int, height: int) -> np.ndarray:
    """The page drawn into a white BGR bitmap of exactly `width` x `height` (pdfium scales the
    page to the size it is given), annotations included, forms not (no form environment)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    bitmap = pdfium.PdfBitmap.new_native(width, height, pdfium_c.FPDFBitmap_BGR)
    bitmap.fill_rect((255, 255, 255, 255), 0, 0, width, height)
    pdfium_c.FPDF_RenderPageBitmap(bitmap, page, 0, 0, width, height, 0, pdfium_c.FPDF_ANNOT)
    pixels = bitmap.to_numpy()
    return np.ascontiguousarray(pixels)


def _has_text(textpage) -> bool:
    import pypdfium2.raw as pdfium_c

    for index in range(textpage.count_chars()):
        code = pdfium_c.FPDFText_GetUnicode(textpage, index)
        if 32 < code < 0x110000 and not 0xD800 <= code <= 0xDFFF and not chr(code).isspace():
            return True
    return False


def _text_lines(page, width: int, height: int) -> list[TextLine]:
    """The text layer as lines: pdfium orders the characters and marks line ends (generated
    CR LF); a line's box is the union of the rectangles pdfium gives for its characters, mapped
    to device pixels (so /Rotate and the CropBox are applied as when rendering)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    textpage = page.get_textpage()
    to_pixels = pdfium.PdfPosConv(page, (0, 0, width, height, 0))
    lines: list[TextLine] = []
    chars: list[str] = []
    start = 0
    count = textpage.count_chars()
    for index in range(count + 1):
        code = pdfium_c.FPDFText_GetUnicode(textpage, index) if index < count else 10
        if code in (10, 13):
            text = " ".join("".join(chars).split())
            if text and index > start:
                box = _line_box(textpage, to_pixels, start, index - start, width, height)
                if box is not None:
                    lines.append(TextLine(text, 1.0, box))
            chars, start = [], index + 1
        elif code == 9 or code >= 32 and not 0xD800 <= code <= 0xDFFF and code < 0x110000:
            chars.append(" " if code == 9 else chr(code))
    textpage.close()
    return lines


def _line_box(textpage, to_pixels, start: int, count: int, width: int, height: int):
    rects = [textpage.get_rect(i) for i in range(textpage.count_rects(start, count))]
    if not rects:
        return None
    left = min(r[0] for r in rects)
    bottom = min(r[1] for r in rects)
    right = max(r[2] for r in rects)
    top = max(r[3] for r in rects)
    corners = [to_pixels.to_bitmap(x, y) for x, y in
               ((left, top), (right, top), (right, bottom), (left, bottom))]
    x0 = min(max(min(x for x, _ in corners), 0), width)
    x1 = min(max(max(x for x, _ in corners), 0), width)
    y0 = min(max(min(y for _, y in corners), 0), height)
    y1 = min(max(max(y for _, y in corners), 0), height)
    if x1 <= x0 or y1 <= y0:
        return None  # text outside the visible page
    return (x0, y0), (x1, y0), (x1, y1), (x0, y1)


# --- TIFF and images (in-process, Pillow) -------------------------------------------------------


def _probe_tiff(data: bytes, max_pages: int) -> DocumentInfo:
    chain = _tiff_chain(data, max_pages)
    if chain.frames > max_pages:
        raise TooManyPagesError(f"the TIFF has more than {max_pages} pages (the limit)")
    if chain.broken:
        raise InvalidDocumentError(f"the TIFF is truncated or corrupt after page "
                                   f"{chain.frames}")
    sizes = []
    with _pillow_errors("document"):
        image = Image.open(io.BytesIO(data))
        for index in range(chain.frames):
            image.seek(index)
            sizes.append(image.size)
    return DocumentInfo("tiff", len(sizes), tuple(sizes), (False,) * len(sizes))


@dataclass(frozen=True)
class _TiffChain:
    frames: int  # readable IFDs, counted up to the limit + 1
    broken: bool  # the chain goes on past them, to an offset outside the data or a loop


def _tiff_chain(data: bytes, limit: int) -> _TiffChain:
    """Walks the TIFF's chain of IFDs (one per page) from the bytes, without Pillow: Pillow
    reports a truncated chain as its end, which would make a cut multi-page TIFF a one-page
    image. Classic TIFF and BigTIFF; stops after `limit` + 1 frames."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    count_format, entry_size, pointer_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size = struct.calcsize(count_format)
    pointer_size = struct.calcsize(pointer_format)
    header = 16 if big else 8
    if len(data) < header:
        return _TiffChain(0, True)
    offset, = struct.unpack_from(order + pointer_format, data, header - pointer_size)
    seen: set[int] = set()
    while offset:
        if offset in seen or offset + count_size > len(data) or len(seen) > limit:
            return _TiffChain(len(seen), offset in seen or len(seen) <= limit)
        entries, = struct.unpack_from(order + count_format, data, offset)
        next_at = offset + count_size + entries * entry_size
        if next_at + pointer_size > len(data):
            return _TiffChain(len(seen), True)
        seen.add(offset)
        offset, = struct.unpack_from(order + pointer_format, data, next_at)
    return _TiffChain(len(seen), False)


def _read_image_page(data: bytes, kind: DocumentKind, page: int, pdf_text: str,
                     max_pixels: int) -> PageContent:
    if kind == "image":
        width, height = _image_size(data, "image")
        if page != 1:
            raise InvalidOptionError("page", f"an image has one page, there is no page {page}")
        if pdf_text == "only":
            return PageContent(width, height, text_lines=())
        image = decode_image(data, max_pixels)
        return PageContent(image.shape[1], image.shape[0], image=image)
    chain = _tiff_chain(data, page)
    if page > chain.frames:
        if chain.broken:
            raise InvalidDocumentError(f"the TIFF is truncated or corrupt before page {page}")
        raise InvalidOptionError("page", f"the TIFF has {chain.frames} pages, there is no "
                                 f"page {page}")
    with _pillow_errors("document"):
        frames = Image.open(io.BytesIO(data))
        frames.seek(page - 1)
        width, height = frames.size
        if width < 1 or height < 1:
            raise InvalidDocumentError(f"page {page} of the TIFF has no pixels")
        if pdf_text == "only":
            return PageContent(width, height, text_lines=())
        if width * height > max_pixels:
            raise ImageTooLargeError(f"page {page} of the TIFF is {width}x{height} = "
                                     f"{width * height} pixels, more than the limit of "
                                     f"{max_pixels}")
        frames.load()
        pixels = _to_bgr(ImageOps.exif_transpose(frames))
    return PageContent(pixels.shape[1], pixels.shape[0], image=pixels)


def _image_size(data: bytes, what: Literal["document", "image"]) -> tuple[int, int]:
    with _pillow_errors(what):
        return Image.open(io.BytesIO(data)).size


@contextmanager
def _pillow_errors(what: Literal["document", "image"]) -> Iterator[None]:
    """Maps what Pillow raises on hostile bytes to our typed errors (never Pillow's texts)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except OcrError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(_bomb_message(exc, DEFAULT_MAX_PIXELS)) from None
    except UnidentifiedImageError:
        error = InvalidDocumentError if what == "document" else InvalidImageError
        raise error("not a document or image we read (PDF, TIFF, JPEG, PNG, ...)") from None
    except MemoryError:
        raise DocumentTooComplexError(f"the {what} needs more memory than this worker "
                                      "has") from None
    except _DECODE_ERRORS:
        error = InvalidDocumentError if what == "document" else InvalidImageError
        raise error(f"cannot decode the {what}: the data is truncated or corrupt") from None


# --- the sandbox --------------------------------------------------------------------------------

_HEADER = struct.Struct("!Q")
_ERRORS_BY_CODE: dict[str, type[OcrError]] = {cls.code: cls for cls in (
    InvalidDocumentError, PasswordRequiredError, WrongPasswordError, TooManyPagesError,
    DocumentTooComplexError, ImageTooLargeError, InvalidImageError)}
_PR_SET_PDEATHSIG = 1
_EXIT_FAILED = 70


def _run_sandboxed(function: Callable[..., Any], args: tuple, sandbox: PdfSandbox) -> Any:
    """`function(*args)` in a forked child under `sandbox`'s limits; its value or its typed
    error comes back. A PageContent's pixels travel raw after the pickled header."""
    import pypdfium2  # noqa: F401 - loaded (and pdfium initialised) once, not in every child

    read_fd, write_fd = os.pipe()
    inherited_vm = _address_space_bytes()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(write_fd, function, args, sandbox, inherited_vm, parent)
    os.close(write_fd)
    deadline = time.monotonic() + sandbox.timeout_s
    timed_out = False
    try:
        message = _receive(read_fd, deadline)
    except TimeoutError:
        message, timed_out = None, True
        _kill(pid)
    except (EOFError, OSError, pickle.UnpicklingError, ValueError):
        message = None
    finally:
        os.close(read_fd)
    status = _reap(pid)
    if timed_out or os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU,
                                                                       signal.SIGKILL):
        raise DocumentTooComplexError(f"reading the PDF took longer than {sandbox.timeout_s:g} "
                                      "s, the limit")
    if message is None or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise DocumentTooComplexError(
            f"reading the PDF needed more than its {sandbox.memory_mb} MB memory budget or "
            "crashed the PDF reader")
    if message[0] == "ok":
        return message[1]
    if message[0] == "option":
        raise InvalidOptionError(message[1], message[2])
    if message[0] == "internal":
        raise RuntimeError(f"the PDF reader failed: {message[1]}")
    raise _ERRORS_BY_CODE.get(message[1], InvalidDocumentError)(message[2])


def _child(write_fd: int, function: Callable[..., Any], args: tuple, sandbox: PdfSandbox,
           inherited_vm: int, parent: int) -> None:
    import pypdfium2 as pdfium

    code = _EXIT_FAILED
    try:
        _confine(write_fd, sandbox, inherited_vm, parent)
        try:
            value = function(*args)
            message, pixels = ("ok", value), None
            if isinstance(value, PageContent) and value.image is not None:
                pixels = value.image
                message = ("ok", PageContent(value.width, value.height,
                                             image=np.empty((0, 0, 3), np.uint8)))
        except InvalidOptionError as exc:
            message, pixels = ("option", exc.name, str(exc).split(": ", 1)[-1]), None
        except OcrError as exc:
            message, pixels = ("error", exc.code, str(exc)), None
        except MemoryError:
            message, pixels = ("error", DocumentTooComplexError.code,
                               "reading the PDF needs more memory than its budget"), None
        except pdfium.PdfiumError:
            message, pixels = ("error", InvalidDocumentError.code,
                               "cannot read the PDF: pdfium refused a part of it"), None
        except Exception as exc:  # noqa: BLE001 - reported, and the parent raises it
            message, pixels = ("internal", f"{type(exc).__name__}: {exc}"[:500]), None
        header = pickle.dumps((message, None if pixels is None else pixels.shape),
                              protocol=pickle.HIGHEST_PROTOCOL)
        _write_all(write_fd, _HEADER.pack(len(header)) + header)
        if pixels is not None:
            _write_all(write_fd, memoryview(pixels).cast("B"))
        code = 0
    finally:
        os._exit(code)


def _confine(keep_fd: int, sandbox: PdfSandbox, inherited_vm: int, parent: int) -> None:
    """The child's limits: dies with its parent, no core file, bounded memory and CPU, and no
    descriptor of the worker's (its pipe to the pool above all) but the result pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(_EXIT_FAILED)  # the parent died before the prctl took effect
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    memory = inherited_vm + sandbox.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = math.ceil(sandbox.timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, _max_fd())


def _receive(fd: int, deadline: float) -> tuple:
    size, = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    message, shape = pickle.loads(_read_exactly(fd, size, deadline))
    if shape is None:
        return message
    pixels = np.empty(shape, np.uint8)
    _read_into(fd, memoryview(pixels).cast("B"), deadline)
    content = message[1]
    return "ok", PageContent(content.width, content.height, image=pixels)


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    buffer = bytearray(size)
    _read_into(fd, memoryview(buffer), deadline)
    return bytes(buffer)


def _read_into(fd: int, view: memoryview, deadline: float) -> None:
    poller = select.poll()  # not select(): a worker's fds may be numbered past FD_SETSIZE
    poller.register(fd, select.POLLIN)
    done = 0
    while done < len(view):
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(math.ceil(left * 1000)):
            raise TimeoutError
        read = os.readv(fd, [view[done:]])
        if read == 0:
            raise EOFError("the PDF reader closed its pipe early")
        done += read


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def _address_space_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if 0 < soft < (1 << 20) else 1 << 20


def _find_prctl():
    try:  # the process's own symbols include libc's (glibc, musl); none elsewhere
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up here, not in the child: a lookup may fork (ctypes.util) or load a library.
_PRCTL = _find_prctl()
