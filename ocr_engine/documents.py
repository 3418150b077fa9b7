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

Page digests (DocumentInfo.page_digests) key each page's cached result across documents, so a
re-sent document with one changed page costs one page. Two pages share a digest only when they
read the same; a collision would serve one page's text for another, so a page is fingerprinted
from everything the reader uses, or not at all. A TIFF frame: its decoded pixels with mode,
size and orientation tag. A PDF page: the object graph pdfium reads it from, taken from pdfium's
own copy of the document (FPDF_SaveAsCopy, in a second sandboxed child: pdfium has repaired,
unpacked and decrypted it, and writes it in one canonical spelling), so a digest never rests on
another parser's reading of hostile bytes. Hashing a one-page copy (FPDF_ImportPages) was
rejected: the import drops what it cannot place (an /Annots array holding one dangling reference
goes whole, a resource typed /Page goes) while pdfium still draws it. The graph is the page
dictionary, what it inherits, the catalog's optional-content settings and all they reach,
references numbered in the order reached (see _PageGraph). Where that is not safe or not
affordable (a page shown twice, an annotated page in a document with a form, the probe's time
or `_Work` spent), the page gets a digest of its document's hash and number: only ever shared
with itself. Measured (probe with digests / without): 1,000 text pages 0.67 / 0.44 s; 1,000
pages with 20 links each 1.2 / 0.16 s; 20 MB of raw images 0.5 / 0.1 s. A TIFF's frames are
decoded: 1,000 A4 fax frames at 200 dpi take 8-9 s, and frames past 10 s go unshared.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import io
import math
import os
import pickle
import re
import resource
import select
import signal
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
    `text_pages[i]` is True when page i+1 has an embedded text layer (PDF only).
    `page_digests[i]` (hex) is equal for two pages, of any documents, only when they read the
    same (see "Page digests" above); a page whose content could not be fingerprinted gets one
    made of its document's hash and its number."""

    kind: DocumentKind
    pages: int
    page_sizes: tuple[tuple[float, float], ...]
    text_pages: tuple[bool, ...]
    page_digests: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "pages": self.pages,
                "page_sizes": [list(size) for size in self.page_sizes],
                "text_pages": list(self.text_pages),
                "page_digests": list(self.page_digests)}


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
        started = time.monotonic()
        info = _run_sandboxed(_probe_pdf, (data, password, max_pages), sandbox)
        digests = _sandboxed_pdf_digests(data, password, info.pages, sandbox, started)
        return replace(info, page_digests=_with_unshared(digests, data))
    if kind == "tiff":
        return _probe_tiff(data, max_pages)
    width, height = _image_size(data, "document")
    return DocumentInfo("image", 1, ((width, height),), (False,), _with_unshared([None], data))


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
    sizes: list[tuple[int, int]] = []
    digests: list[str | None] = []
    deadline = time.monotonic() + _TIFF_DIGEST_S
    with _pillow_errors("document"):
        image = Image.open(io.BytesIO(data))
        for index in range(chain.frames):
            image.seek(index)
            sizes.append(image.size)
            digest = None
            if 0 < image.size[0] * image.size[1] <= DEFAULT_MAX_PIXELS \
                    and time.monotonic() < deadline:
                digest = _tiff_frame_digest(image)
            digests.append(digest)
    return DocumentInfo("tiff", len(sizes), tuple(sizes), (False,) * len(sizes),
                        _with_unshared(digests, data))


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


# --- page digests -------------------------------------------------------------------------------

# Domain prefixes: a PDF page, a TIFF frame and an unshared page can never hash alike.
_PDF_DIGEST = b"ppocr-page-digest/pdf/1\0"
_TIFF_DIGEST = b"ppocr-page-digest/tiff/1\0"
_UNSHARED_DIGEST = b"ppocr-page-digest/document/1\0"
# The digest pass gets what is left of the probe's sandbox time, and is skipped below this.
_MIN_DIGEST_S = 0.5
# pdfium's copy of a document writes what object streams packed as plain objects, so it may
# be larger than the upload: past twice its size and this, the copy stops (pages unshared).
_SAVED_PDF_SLACK = 64 * 1024 * 1024
# TIFF frames are decoded to be hashed (about 8 ms for a 200 dpi A4 fax page, 90 ms for a
# 300 dpi colour one); frames reached after this many seconds go unshared.
_TIFF_DIGEST_S = 10.0
_TIFF_DIGEST_BAND = 1 << 22  # pixels hashed at a time
# What one document's fingerprints may cost, in values written (plus 64 per object).
_DIGEST_WORK = 2_000_000
# The values written into each page's /ArtBox to find its dictionary in pdfium's copy.
_MARKER_BOTTOM, _MARKER_TOP = -7919.25, 7919.25


def _unshared_digests(data: bytes, pages: int) -> list[str]:
    """Digests that only this document's pages match: its hash and the page number."""
    document = hashlib.sha256(data).digest()
    return [hashlib.sha256(_UNSHARED_DIGEST + document + b"%d" % page).hexdigest()
            for page in range(1, pages + 1)]


def _with_unshared(digests: list[str | None], data: bytes) -> tuple[str, ...]:
    if all(digests):
        return tuple(digests)
    unshared = _unshared_digests(data, len(digests))
    return tuple(digest or fallback for digest, fallback in zip(digests, unshared))


def _sandboxed_pdf_digests(data: bytes, password: str | None, pages: int,
                           sandbox: PdfSandbox, started: float) -> list[str | None]:
    """The pages' digests from a second child, in what is left of the probe's time. When that
    runs out, or the child fails in any way, the pages go unshared: a digest saves work, it
    must never cost a document that reads."""
    left = sandbox.timeout_s - (time.monotonic() - started)
    if left < _MIN_DIGEST_S:
        return [None] * pages
    try:
        return _run_sandboxed(_pdf_page_digests, (data, password, pages),
                              replace(sandbox, timeout_s=left))
    except (OcrError, RuntimeError):  # RuntimeError: the child's own failure, reported
        return [None] * pages


def _tiff_frame_digest(frame: Image.Image) -> str | None:
    """The frame as `_read_image_page` turns it into pixels: decoded, with its mode, size and
    orientation tag; a palette frame as the colours it converts to. None when it does not
    decode (the page then fails when it is read, not the probe)."""
    try:
        frame.load()
        orientation = frame.getexif().get(0x0112)
        if frame.mode == "P":
            pixels = frame.convert("RGBA" if "transparency" in frame.info else "RGB")
        elif frame.mode == "PA":
            pixels = frame.convert("RGBA")
        else:
            pixels = frame
        digest = hashlib.sha256(_TIFF_DIGEST)
        digest.update(repr((frame.mode, frame.size, orientation, pixels.mode,
                            frame.info.get("transparency"))).encode() + b"\0")
        width, height = pixels.size
        rows = max(1, _TIFF_DIGEST_BAND // width)
        for top in range(0, height, rows):  # in bands: never a second copy of a whole frame
            digest.update(pixels.crop((0, top, width, min(top + rows, height))).tobytes())
        return digest.hexdigest()
    except (*_DECODE_ERRORS, Image.DecompressionBombError):
        return None


def _pdf_page_digests(data: bytes, password: str | None, count: int) -> list[str | None]:
    """One digest per page (None where there is none) of the object graph pdfium reads the
    page from. Runs in the sandbox: the document is opened again, each page's dictionary
    marked, the whole document saved by pdfium and read back (`_SavedPdf`)."""
    import pypdfium2.raw as pdfium_c

    pdf = _open_pdf(data, password)
    if len(pdf) != count:
        raise InvalidDocumentError("the PDF has changed between two reads")
    shared: set[int] = set()
    box = [ctypes.c_float() for _ in range(4)]
    for index in range(count):
        page = _load_page(pdf, index + 1)
        # A dictionary that already carries a marker is one page object shown as two pages
        # (or a forged marker): neither page is then told apart by its marker.
        if pdfium_c.FPDFPage_GetArtBox(page, *(ctypes.byref(side) for side in box)):
            found = _marker_index(tuple(side.value for side in box))
            if found is not None:
                shared.update((found, index))
        pdfium_c.FPDFPage_SetArtBox(page, index, _MARKER_BOTTOM, index, _MARKER_TOP)
        page.close()
    try:
        digests = _SavedPdf(_save_pdf(pdf, len(data) * 2 + _SAVED_PDF_SLACK)).page_digests(count)
    except _SavedPdfError:
        return [None] * count
    return [None if index in shared else digest for index, digest in enumerate(digests)]


def _marker_index(box: tuple[float, ...]) -> int | None:
    left, bottom, right, top = box
    if bottom == _MARKER_BOTTOM and top == _MARKER_TOP and left == right and left >= 0 \
            and left == int(left):
        return int(left)
    return None


def _save_pdf(pdf, limit: int) -> bytes:
    """The document as pdfium writes it (decrypted), at most `limit` bytes."""
    import pypdfium2.raw as pdfium_c

    out = bytearray()

    def write_block(_, data, size) -> int:
        if len(out) + size > limit:
            return 0  # pdfium stops and reports a failed save
        out.extend(ctypes.string_at(data, size))
        return 1

    writer = pdfium_c.FPDF_FILEWRITE(version=1)
    writer.WriteBlock = type(writer.WriteBlock)(write_block)
    if not pdfium_c.FPDF_SaveAsCopy(pdf, ctypes.byref(writer), pdfium_c.FPDF_REMOVE_SECURITY):
        raise InvalidDocumentError("pdfium could not copy the PDF")
    return bytes(out)


class _SavedPdfError(Exception):
    """pdfium's copy is not as pdfium writes it: no digest is made from it."""


@dataclass(frozen=True)
class _Ref:
    number: int


@dataclass(frozen=True)
class _Token:
    """A name, string, number, boolean or null, as pdfium wrote it (one spelling per value)."""
    raw: bytes


@dataclass(frozen=True)
class _Stream:
    dictionary: dict
    digest: bytes  # of the stream's data as stored (filters not applied)


_WHITESPACE = b"\x00\t\n\x0c\r "
_REGULAR = rb"[^\x00\t\n\x0c\r ()<>\[\]{}/%]"
# One token of pdfium's output, whitespace before it skipped. Groups: 1-2 a reference, 3 a
# delimiter, 4 a name, string, number or keyword value, 5 any other word ("stream", "endobj").
_TOKEN = re.compile(
    rb"[\x00\t\n\x0c\r ]*(?:"
    rb"(\d+)[\x00\t\n\x0c\r ]+(\d+)[\x00\t\n\x0c\r ]+R(?!" + _REGULAR + rb")"
    rb"|(<<|>>|\[|\])"
    rb"|(/" + _REGULAR + rb"*|\((?:[^\\()]|\\.)*\)|<[0-9A-Fa-f]*>"
    rb"|(?:[+-]?(?:\d+\.?\d*|\.\d+)|true|false|null)(?!" + _REGULAR + rb"))"
    rb"|(" + _REGULAR + rb"+))", re.S)
_NUMBER = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)")
_OBJECT_HEADER = re.compile(rb"(\d+) 0 obj\r\n")
_MAX_NESTING = 512
_PAGE_SKIPS = frozenset((b"/Parent", b"/ArtBox"))
_ANCESTOR_SKIPS = frozenset((b"/Parent", b"/Kids", b"/Count"))


class _SavedPdf:
    """A document as pdfium saved it, read back to fingerprint its pages.

    pdfium has already parsed the upload its own way (repaired cross-references, unpacked
    object streams, decrypted); its copy is that object graph in pdfium's one canonical
    spelling, every number exact, with a correct cross-reference table. So this reader is
    strict: it trusts the offsets, parses only what pdfium writes, and anything else is a
    _SavedPdfError, never a guess.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.objects: dict[int, Any] = {}
        start = data.rfind(b"startxref")
        match = re.match(rb"startxref\r?\n(\d+)\r?\n%%EOF", data[start:])
        if start < 0 or match is None:
            raise _SavedPdfError("no startxref")
        self.xref_at = int(match.group(1))
        offsets, trailer_at = self._read_xref(self.xref_at)
        ordered = sorted(offsets.items(), key=lambda item: item[1])
        bounds = [offset for _, offset in ordered[1:]] + [self.xref_at]
        self.spans = {number: (offset, end) for (number, offset), end in zip(ordered, bounds)}
        self.starts = [offset for _, offset in ordered]
        self.numbers = [number for number, _ in ordered]
        trailer, _ = self._value(trailer_at)
        if not isinstance(trailer, dict) or not isinstance(trailer.get(b"/Root"), _Ref):
            raise _SavedPdfError("no catalog")
        self.root = _as_dict(self.resolve(trailer[b"/Root"]))
        if self.root is None:
            raise _SavedPdfError("no catalog")

    # -- reading --

    def _read_xref(self, at: int) -> tuple[dict[int, int], int]:
        data = self.data
        if not data.startswith(b"xref", at):
            raise _SavedPdfError("no xref table")
        section = re.compile(rb"\r?\n(\d+) (\d+)")
        entry = re.compile(rb"\r?\n(\d{10}) (\d{5}) ([nf])")
        offsets: dict[int, int] = {}
        at += 4
        while (match := section.match(data, at)) is not None:
            first, count = int(match.group(1)), int(match.group(2))
            at = match.end()
            for number in range(first, first + count):
                row = entry.match(data, at)
                if row is None:
                    raise _SavedPdfError("bad xref entry")
                at = row.end()
                if row.group(3) == b"n":
                    offsets[number] = int(row.group(1))
        trailer = re.compile(rb"[\r\n ]*trailer").match(data, at)
        if trailer is None or len(set(offsets.values())) != len(offsets) or \
                any(not 0 < offset < self.xref_at for offset in offsets.values()):
            raise _SavedPdfError("bad xref table")
        return offsets, trailer.end()

    def resolve(self, value: Any) -> Any:
        """The object a reference names (None for one pdfium did not write), else `value`."""
        return self.object(value.number) if isinstance(value, _Ref) else value

    def object(self, number: int) -> Any:
        if number in self.objects:
            return self.objects[number]
        span = self.spans.get(number)
        value = None if span is None else self._indirect(number, *span)
        self.objects[number] = value
        return value

    def _indirect(self, number: int, start: int, end: int) -> Any:
        data = self.data
        header = _OBJECT_HEADER.match(data, start)
        if header is None or int(header.group(1)) != number:
            raise _SavedPdfError(f"object {number} is not where the xref says")
        value, at = self._value(header.end())
        keyword = _TOKEN.match(data, at)
        if keyword is None:
            raise _SavedPdfError(f"object {number} has no end")
        if keyword.group(5) == b"stream":
            if not isinstance(value, dict) or not data.startswith(b"\r\n", keyword.end()):
                raise _SavedPdfError(f"object {number}: a stream without a dictionary")
            tail = b"\r\nendstream\r\nendobj\r\n"
            if not data.startswith(tail, end - len(tail)) or keyword.end() + 2 > end - len(tail):
                raise _SavedPdfError(f"object {number}: a stream without its end")
            stream_data = memoryview(data)[keyword.end() + 2:end - len(tail)]
            return _Stream(value, hashlib.sha256(stream_data).digest())
        if keyword.group(5) != b"endobj" or data[keyword.end():end].strip(_WHITESPACE):
            raise _SavedPdfError(f"object {number} has no end")
        return value

    def _value(self, at: int, depth: int = 0) -> tuple[Any, int]:
        """The object written at `at`, and where it ends."""
        data = self.data
        stack: list[list | dict] = []
        keys: list[bytes | None] = []  # per open dictionary: the key waiting for its value
        while True:
            match = _TOKEN.match(data, at)
            if match is None:
                raise _SavedPdfError(f"no object at {at}")
            at = match.end()
            kind = match.lastindex
            if kind == 2:
                item: Any = _Ref(int(match.group(1)))
            elif kind == 4:
                item = _Token(match.group(4))
            elif kind == 3:
                token = match.group(3)
                if token in (b"<<", b"["):
                    if len(stack) > _MAX_NESTING:
                        raise _SavedPdfError("nested too deep")
                    stack.append({} if token == b"<<" else [])
                    keys.append(None)
                    continue
                if not stack or isinstance(stack[-1], dict) != (token == b">>") \
                        or keys[-1] is not None:
                    raise _SavedPdfError(f"unbalanced {token!r} at {at}")
                item = stack.pop()
                keys.pop()
            else:
                raise _SavedPdfError(f"unexpected {match.group(5)[:20]!r} at {at}")
            if not stack:
                return item, at
            container = stack[-1]
            if isinstance(container, list):
                container.append(item)
            elif keys[-1] is not None:
                container[keys[-1]] = item
                keys[-1] = None
            elif isinstance(item, _Token) and item.raw.startswith(b"/") \
                    and item.raw not in container:
                keys[-1] = item.raw
            else:
                raise _SavedPdfError(f"bad dictionary key at {at}")

    # -- pages --

    def page_digests(self, count: int) -> list[str | None]:
        """Each page's digest, found by the marker `_pdf_page_digests` wrote into it; None
        for a page whose marker is missing or found twice, and for one whose graph reaches a
        page's dictionary (see _PageGraph)."""
        found: dict[int, list[tuple[dict, int | None]]] = {}
        page_objects: set[int] = set()  # the objects that hold a marked dictionary
        data = self.data
        at = data.find(b"/ArtBox[")
        while 0 <= at < self.xref_at:
            index = bisect.bisect_right(self.starts, at) - 1
            if index < 0:
                raise _SavedPdfError("a marker outside any object")
            number = self.numbers[index]
            value = self.object(number)
            start, end = self.spans[number]
            alone = isinstance(value, dict) and data.count(b"/ArtBox[", start, end) == 1 \
                and _token_marker(value.get(b"/ArtBox")) is not None
            for dictionary in [value] if alone else _dictionaries(value):
                marker = _token_marker(dictionary.get(b"/ArtBox"))
                if marker is not None:
                    page_objects.add(number)
                    owner = number if dictionary is value else None
                    found.setdefault(marker, []).append((dictionary, owner))
            at = data.find(b"/ArtBox[", self.spans[number][1])
        # Widgets without an appearance are drawn from the form's defaults and their fields
        # when the form says so: a page with annotations in a document with a form is not
        # fingerprinted (what of the form it reads is not worth the risk of missing a part).
        has_form = _as_dict(self.resolve(self.root.get(b"/AcroForm"))) is not None
        layers = self.root.get(b"/OCProperties")
        work = _Work(_DIGEST_WORK + 64 * len(self.spans))
        digests: list[str | None] = []
        for index in range(count):
            candidates = found.get(index, [])
            page, number = candidates[0] if len(candidates) == 1 else (None, None)
            if page is None or has_form and page.get(b"/Annots") is not None:
                digests.append(None)
                continue
            try:
                digests.append(_PageGraph(self, page, number, page_objects, work).digest(layers))
            except _ReachesAPage:
                digests.append(None)
            except _OverBudget:
                return digests + [None] * (count - index)
        return digests


def _dictionaries(value: Any) -> Iterator[dict]:
    """Every dictionary in `value` (a stream's included), outermost first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Stream):
            item = item.dictionary
        if isinstance(item, dict):
            yield item
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def _as_dict(value: Any) -> dict | None:
    """What pdfium's GetDictFor makes of a value: a dictionary, or a stream's."""
    if isinstance(value, _Stream):
        return value.dictionary
    return value if isinstance(value, dict) else None


def _token_marker(value: Any) -> int | None:
    if not isinstance(value, list) or len(value) != 4 or \
            not all(isinstance(item, _Token) and _NUMBER.fullmatch(item.raw) for item in value):
        return None
    try:
        box = tuple(struct.unpack("f", struct.pack("f", float(item.raw)))[0] for item in value)
    except (ValueError, OverflowError):
        return None
    return _marker_index(box)


class _OverBudget(Exception):
    """The document has more to fingerprint than `_Work` allows."""


class _ReachesAPage(Exception):
    """A page's graph reaches a page's dictionary (see _PageGraph)."""


class _Work:
    """What one document's fingerprints may cost in all, in values written: pages that
    reach most of a document (through links the renderer never follows, say) cost that
    document each, so past this the remaining pages go unshared."""

    def __init__(self, values: int) -> None:
        self.left = values

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _OverBudget


class _PageGraph:
    """The canonical serialisation, hashed, of everything pdfium reads a page from.

    - the page's dictionary, less /Parent and /ArtBox (it holds the marker; nothing draws it);
    - the page-tree nodes above it, less /Kids, /Parent and /Count: what the page inherits
      (/Resources, /MediaBox, /CropBox, /Rotate) is theirs;
    - the catalog's /OCProperties: they show or hide marked content and annotations;
    - then every object those reach, in the order first reached; each reference is written as
      that order's number, so documents that number their objects differently still agree.

    Not followed, because pdfium never reads them to draw a page or extract its text: /Parent
    outside the page tree (a form field's parent: pages with annotations in a document with
    a form are not fingerprinted at all), and in the page's annotations /P (their page), /A,
    /AA, /PA (actions) and /Dest (a link's target page), which would otherwise pull in every
    page a link points to. An annotation that is also reached another way (used as a
    resource, say) is written again in full under that way.

    A page whose graph still reaches a page's dictionary (its own or another's, by any other
    key: a page dictionary doubling as a resource) is not fingerprinted: that dictionary's
    /ArtBox now holds a marker, and what it held is lost. Real documents do not do this.
    """

    _ANNOTATION_SKIPS = frozenset((b"/P", b"/A", b"/AA", b"/PA", b"/Dest", b"/Parent"))

    def __init__(self, saved: _SavedPdf, page: dict, number: int | None,
                 page_objects: set[int], work: _Work) -> None:
        self.saved = saved
        self.page = page
        self.page_objects = page_objects
        self.work = work
        # (object number, how it is read) -> its number in this serialisation
        self.order: dict[tuple[int, str], int] = {} if number is None else {(number, ""): 0}
        self.pending: list[tuple[int, str]] = []
        self.hash = hashlib.sha256(_PDF_DIGEST)

    def digest(self, layers: Any) -> str:
        self._label(b"page")
        self._dictionary(self.page, _PAGE_SKIPS, 0)
        seen = {id(self.page)}
        parent = self.saved.resolve(self.page.get(b"/Parent"))
        while _as_dict(parent) is not None and id(parent) not in seen:
            seen.add(id(parent))
            self._label(b"ancestor")
            self._value(parent, 0, _ANCESTOR_SKIPS)
            parent = self.saved.resolve(_as_dict(parent).get(b"/Parent"))
        self._label(b"layers")
        self._value(layers, 0)
        done = 0
        while done < len(self.pending):
            number, role = self.pending[done]
            done += 1
            self._label(b"object %d %s" % (self.order[number, role], role.encode()))
            value = self.saved.object(number)
            if role == "annotations" and isinstance(value, list):
                self._annotations(value, 0)
            elif role == "annotation" and isinstance(value, dict):
                self._dictionary(value, self._ANNOTATION_SKIPS, 0)
            else:
                self._value(value, 0)
        return self.hash.hexdigest()

    def _label(self, label: bytes) -> None:
        self.hash.update(b"\n" + label + b"\0")

    def _ref(self, number: int, role: str = "") -> None:
        if number in self.page_objects:
            raise _ReachesAPage
        key = (number, role)
        if key not in self.order:
            self.order[key] = len(self.order)
            self.pending.append(key)
        self.hash.update(b"r%d;" % self.order[key])

    def _value(self, value: Any, depth: int, skips: frozenset = frozenset()) -> None:
        self.work.spend()
        update = self.hash.update
        if depth > _MAX_NESTING:
            raise _SavedPdfError("nested too deep")
        if value is None:
            update(b"m;")  # absent, or a reference to an object pdfium did not write
        elif isinstance(value, _Token):
            update(b"t%d:" % len(value.raw) + value.raw)
        elif isinstance(value, _Ref):
            self._ref(value.number)
        elif isinstance(value, list):
            update(b"a%d:" % len(value))
            for item in value:
                self._value(item, depth + 1)
        elif isinstance(value, _Stream):
            update(b"s")
            self._dictionary(value.dictionary, skips | {b"/Length"}, depth + 1)
            update(value.digest)
        else:
            self._dictionary(value, skips, depth)

    def _dictionary(self, dictionary: dict, skips: frozenset, depth: int) -> None:
        update = self.hash.update
        update(b"d%d:" % len(dictionary))
        for key in sorted(dictionary):
            update(b"k%d:" % len(key) + key)
            if key in skips:
                update(b"x;")  # there, but not read
            elif key == b"/Parent":
                update(b"p;")
            elif key == b"/Annots" and dictionary is self.page:
                value = dictionary[key]
                if isinstance(value, _Ref):
                    self._ref(value.number, "annotations")
                else:
                    self._annotations(value, depth + 1)
            else:
                self._value(dictionary[key], depth + 1)

    def _annotations(self, value: Any, depth: int) -> None:
        """The page's /Annots array: each annotation written as one (see _ANNOTATION_SKIPS)."""
        if not isinstance(value, list):
            self._value(value, depth)
            return
        self.work.spend()
        self.hash.update(b"A%d:" % len(value))
        for item in value:
            if isinstance(item, _Ref):
                self._ref(item.number, "annotation")
            elif isinstance(item, dict):
                self.work.spend()
                self._dictionary(item, self._ANNOTATION_SKIPS, depth + 1)
            else:
                self._value(item, depth + 1)


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
