"""Documents page by page (ocr_engine/documents.py) and the worker's document jobs.

Every document is made in the test (tests/pdfs.py): image pages, a real text layer, an encrypted
PDF, multi-page TIFFs, and the hostile ones (truncated, a 1e6 pt page, 2,000 pages, nesting past
any parser limit, a self-drawing form, a declared-huge image on every page). Pages are read with
the real models, and the worker side through a real WorkerPool.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import re
import resource
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ocr_engine import (
    DocumentTooComplexError,
    ImageTooLargeError,
    InvalidDocumentError,
    InvalidImageError,
    InvalidOptionError,
    OcrEngine,
    PasswordRequiredError,
    PdfSandbox,
    TooManyPagesError,
    WrongPasswordError,
    decode_image,
    document_kind,
    documents,
    page_text,
    probe_document,
    read_page,
    render_page,
)
from ocr_engine.documents import rendered_size
from server.config import ConfigError, load_config
from server.main import build_engine_spec, pool_config
from server.ocr_worker import boot
from server.pool import JobFailed, WorkerPool
from server.protocol import DocumentProbeJob, OcrJob, PageJob
from tests import pdfs
from tests.app_testing import PINNED_BACKEND
from tests.conftest import EVAL_DIR
from tests.pool_handlers import EventLog

ROOT = Path(__file__).resolve().parent.parent
RECEIPT = ROOT / "docs" / "samples" / "receipt.jpg"
RECEIPT_FIRST_LINE = "纯臻营养护发素"
BOOK_PAGE = EVAL_DIR / "paddleocr" / "doc" / "imgs_en" / "img_12.jpg"  # 1680 x 1048
BOOK_FIRST_LINE = "ACKNOWLEDGEMENTS"
INVOICE = ["Invoice number 2024-117 for services", "Total amount due: 1,250.00 EUR",
           "Thank you for your business"]
LETTER_AT_200_DPI = (1700, 2200)


@pytest.fixture(scope="module")
def scans_pdf() -> bytes:
    """Two image pages at 72 dpi: one PDF point per image pixel."""
    return pdfs.images_pdf([RECEIPT, BOOK_PAGE], dpi=72)


@pytest.fixture(scope="module")
def mixed_pdf() -> bytes:
    """Page 1 has a text layer, page 2 is the receipt as an image, page 3 is text again."""
    return pdfs.text_pdf([INVOICE, RECEIPT, ["Second text page", "with two lines"]])


def frames() -> list[Image.Image]:
    """Three TIFF pages in three modes: colour, grey and 1-bit."""
    receipt = Image.open(RECEIPT).convert("RGB")
    book = Image.open(BOOK_PAGE).convert("L").resize((840, 524))
    bits = Image.new("1", (320, 200), 1)
    bits.paste(0, (40, 40, 280, 160))
    return [receipt, book, bits]


# --- document_kind -----------------------------------------------------------------------------


def test_document_kind_by_content(scans_pdf):
    assert document_kind(scans_pdf) == "pdf"
    # Readers accept junk before the header (a mail header, a BOM): so do we.
    assert document_kind(b"\xef\xbb\xbfFrom: scanner\r\n\r\n" + scans_pdf) == "pdf"
    assert document_kind(pdfs.tiff_bytes(frames())) == "tiff"
    # A single-frame TIFF stays an image, as does any other image, even one whose metadata
    # says %PDF- in its first bytes.
    assert document_kind(pdfs.tiff_bytes(frames()[:1])) is None
    jpeg = io.BytesIO()
    Image.open(RECEIPT).save(jpeg, "JPEG", comment=b"%PDF-1.7 not really")
    assert b"%PDF-" in jpeg.getvalue()[:1024] and document_kind(jpeg.getvalue()) is None
    assert document_kind(RECEIPT.read_bytes()) is None
    assert document_kind(b"plain text") is None and document_kind(b"") is None


# --- probe -------------------------------------------------------------------------------------


def test_probe_gives_kind_pages_sizes_and_text_pages(scans_pdf, mixed_pdf):
    scans = probe_document(scans_pdf)
    assert (scans.kind, scans.pages, scans.text_pages) == ("pdf", 2, (False, False))
    assert scans.page_sizes == ((500.0, 500.0), (1680.0, 1048.0))
    mixed = probe_document(mixed_pdf)
    assert mixed.pages == 3 and mixed.text_pages == (True, False, True)
    assert mixed.page_sizes == (pdfs.LETTER,) * 3
    assert mixed.to_dict() == {"kind": "pdf", "pages": 3, "page_sizes": [[612.0, 792.0]] * 3,
                               "text_pages": [True, False, True],
                               "page_digests": list(mixed.page_digests)}
    tiff = probe_document(pdfs.tiff_bytes(frames()))
    assert (tiff.kind, tiff.pages, tiff.text_pages) == ("tiff", 3, (False,) * 3)
    assert tiff.page_sizes == ((500, 500), (840, 524), (320, 200))
    image = probe_document(RECEIPT.read_bytes())
    assert (image.kind, image.pages, image.page_sizes) == ("image", 1, ((500, 500),))


def test_page_count_limit_is_checked_before_any_page_is_read():
    many = pdfs.many_pages_pdf(2000)
    with pytest.raises(TooManyPagesError, match="2000 pages, more than the limit of 1000"):
        probe_document(many)
    assert probe_document(many, max_pages=2000).pages == 2000
    tiff = pdfs.tiff_bytes(frames())
    with pytest.raises(TooManyPagesError, match="more than 2 pages"):
        probe_document(tiff, max_pages=2)
    assert probe_document(tiff, max_pages=3).pages == 3


def test_encrypted_pdf_asks_for_its_password():
    locked = pdfs.text_pdf([INVOICE], owner_password="owner-pw", user_password="s3cret")
    for call in (lambda **kw: probe_document(locked, **kw),
                 lambda **kw: read_page(locked, 1, pdf_text="only", **kw)):
        with pytest.raises(PasswordRequiredError, match="send its password in the 'password'"):
            call()
        with pytest.raises(WrongPasswordError, match="does not open this PDF") as wrong:
            call(password="guess")
        assert wrong.value.code == "wrong_password"
    assert probe_document(locked, password="s3cret").text_pages == (True,)
    assert probe_document(locked, password="owner-pw").pages == 1
    assert [line.text for line in page_text(locked, 1, password="s3cret")] == INVOICE
    # Encrypted with an owner password only: anyone may open it, no password needed.
    owner_only = pdfs.text_pdf([INVOICE], owner_password="owner-pw")
    assert [line.text for line in page_text(owner_only, 1)] == INVOICE
    with pytest.raises(InvalidOptionError, match="password"):
        probe_document(locked, password="nul\x00byte")


def test_truncated_and_corrupt_documents_are_invalid(scans_pdf):
    for cut in range(0, len(scans_pdf) - 100, len(scans_pdf) // 23):
        with pytest.raises(InvalidDocumentError, match="truncated, corrupt"):
            probe_document(scans_pdf[:cut] or b"%PDF-")
        with pytest.raises(InvalidDocumentError, match="truncated, corrupt"):
            render_page(scans_pdf[:cut] or b"%PDF-", 1)
    # Only the end of the trailer lost: pdfium rebuilds the cross-references, and reads it all.
    repaired = scans_pdf[:-16]
    assert probe_document(repaired) == probe_document(scans_pdf)
    assert np.array_equal(render_page(repaired, 2, 72), render_page(scans_pdf, 2, 72))
    with pytest.raises(InvalidDocumentError, match="empty"):
        probe_document(b"")
    with pytest.raises(InvalidDocumentError, match="not a document or image"):
        probe_document(b"%!PS-Adobe-3.0 not a pdf")
    # Cut in the middle: page 1 is whole, the chain to pages 2 and 3 points past the end.
    # Still a document (Pillow alone would call it a one-page image), and it fails as one.
    cut = pdfs.tiff_bytes(frames())[:300_000]
    assert document_kind(cut) == "tiff"
    assert render_page(cut, 1).shape == (500, 500, 3)
    with pytest.raises(InvalidDocumentError, match="truncated or corrupt before page 3"):
        render_page(cut, 3)
    with pytest.raises(InvalidDocumentError, match="truncated or corrupt after page 1"):
        probe_document(cut)
    # A page chain that loops back on itself ends, as corrupt.
    looped = pdfs.looped_tiff(frames()[0])
    assert document_kind(looped) == "tiff"
    with pytest.raises(InvalidDocumentError, match="truncated or corrupt after page 1"):
        probe_document(looped)
    with pytest.raises(InvalidDocumentError, match="before page 2"):
        render_page(looped, 2)
    # A page tree thousands of levels deep: pdfium's depth cap leaves no readable page.
    with pytest.raises(InvalidDocumentError, match="page tree is broken"):
        probe_document(pdfs.nested_page_tree_pdf(5000))


# --- page digests ------------------------------------------------------------------------------


def test_a_page_has_one_digest_in_any_pdf_and_a_changed_page_another():
    receipt = Image.open(RECEIPT).convert("RGB")
    flipped = receipt.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    first = probe_document(pdfs.images_pdf([receipt, BOOK_PAGE, receipt], dpi=72)).page_digests
    resent = probe_document(pdfs.images_pdf([receipt, BOOK_PAGE, flipped], dpi=72)).page_digests
    assert len(first) == 3 and all(re.fullmatch("[0-9a-f]{64}", digest) for digest in first)
    assert resent[:2] == first[:2] and resent[2] != first[2]
    assert first[0] == first[2]  # the same image twice is the same page
    # Another order, other pages around it, objects numbered otherwise: the same page.
    mixed = probe_document(pdfs.text_pdf([INVOICE, RECEIPT, ["Second text page"]])).page_digests
    moved = probe_document(pdfs.text_pdf([["A new first page"], RECEIPT, INVOICE])).page_digests
    assert (moved[1], moved[2]) == (mixed[1], mixed[0]) and moved[0] not in mixed
    edited = probe_document(pdfs.text_pdf([INVOICE[:2] + ["Thank you, come again"]]))
    assert edited.page_digests[0] != mixed[0]
    # Encryption is not content: the same page encrypted is the same (fpdf2 adds a /Group).
    locked = probe_document(pdfs.text_pdf([INVOICE], owner_password="o", user_password="u"),
                            password="u")
    assert locked.page_digests == probe_document(
        pdfs.text_pdf([INVOICE], owner_password="o", user_password="u"), password="o"
    ).page_digests


def _one_page_pdf(page: bytes = b"", tree: bytes = b"", catalog: bytes = b"",
                  content: bytes = b"BT /F1 24 Tf 72 700 Td (page) Tj ET",
                  font: bytes = b"/Type /Font /Subtype /Type1 /BaseFont /Helvetica",
                  extra: tuple[bytes, ...] = (), unused: int = 0) -> bytes:
    """A page drawing `content` in `font`; `page`, `tree` and `catalog` add keys to the page,
    the page-tree node above it and the catalog. Objects: 1 catalog, 2 tree, `unused` unused
    ones, then the page, its content, the font, an optional-content group /L1 and `extra`."""
    first = 3 + unused
    numbers = {"page": first, "content": first + 1, "font": first + 2, "layer": first + 3}
    refs = {name: b"%d 0 R" % number for name, number in numbers.items()}
    def fill(text: bytes) -> bytes:
        for name, ref in refs.items():
            text = text.replace(b"{" + name.encode() + b"}", ref)
        for k in range(len(extra)):
            text = text.replace(b"{extra%d}" % k, b"%d 0 R" % (first + 4 + k))
        return text
    return pdfs.raw_pdf([
        fill(b"<< /Type /Catalog /Pages 2 0 R " + catalog + b" >>"),
        fill(b"<< /Type /Pages /Kids [{page}] /Count 1 " + tree + b" >>"),
        *[b"<< /Unused %d >>" % k for k in range(unused)],
        fill(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} "
             b"/Resources << /Font << /F1 {font} >> /Properties << /L1 {layer} >> >> "
             + page + b" >>"),
        pdfs.stream(b"", content), b"<< " + font + b" >>", b"<< /Type /OCG /Name (L1) >>",
        *[fill(item) for item in extra]])


def test_what_changes_how_a_page_reads_changes_its_digest():
    def digest(data: bytes) -> str:
        return probe_document(data).page_digests[0]

    base = digest(_one_page_pdf())
    # Not the page's: the document's /Info, how objects are numbered, a link's target.
    assert digest(_one_page_pdf(unused=3)) == base
    assert digest(_one_page_pdf(extra=(b"<< /Title (another) >>",))) == base
    link = b"/Annots [<< /Type /Annot /Subtype /Link /Rect [0 0 9 9] /Dest [{extra0} /Fit] >>]"
    assert digest(_one_page_pdf(link, extra=(b"<< /Type /Page >>",))) == \
        digest(_one_page_pdf(link, extra=(b"<< /Type /Page /Rotate 90 >>",)))
    hidden = b"/OC /L1 BDC 0 0 m 300 300 l 10 w S EMC"
    shown, off = (_one_page_pdf(content=hidden, catalog=b"/OCProperties << /OCGs [{layer}] "
                                b"/D << /%s [{layer}] >> >>" % state) for state in (b"ON", b"OFF"))
    assert not np.array_equal(render_page(shown, 1, 72), render_page(off, 1, 72))
    variants = {
        "content": _one_page_pdf(content=b"BT /F1 24 Tf 72 700 Td (pagf) Tj ET"),
        "inherited rotation": _one_page_pdf(tree=b"/Rotate 90"),
        "inherited crop box": _one_page_pdf(tree=b"/CropBox [0 0 300 300]"),
        "crop box": _one_page_pdf(b"/CropBox [0 0 300 300]"),
        "font": _one_page_pdf(font=b"/Type /Font /Subtype /Type1 /BaseFont /Courier"),
        # Resources typed as pages, and an /Annots array with a reference to nothing: pdfium's
        # page import (FPDF_ImportPages) drops them, so hashing a one-page copy would not see
        # them; pdfium still draws that font and that annotation.
        "font typed as a page": _one_page_pdf(font=b"/Type /Page /Subtype /Type1 "
                                                   b"/BaseFont /Courier"),
        "another font typed as a page": _one_page_pdf(font=b"/Type /Page /Subtype /Type1 "
                                                           b"/BaseFont /Times-Roman"),
        "annotation beside a dangling reference": _one_page_pdf(
            b"/Annots [{extra0} 99 0 R]",
            extra=(b"<< /Type /Annot /Subtype /Square /Rect [50 50 200 200] /C [1 0 0] >>",)),
        "layer shown": shown,
        "layer hidden": off,
    }
    digests = {name: digest(data) for name, data in variants.items()}
    assert base not in digests.values()
    assert len(set(digests.values())) == len(digests), digests


def _shared(data: bytes, **options) -> list[bool]:
    """For each page: whether its digest survives a change to the document's bytes that
    changes no page (a comment after the end), i.e. whether it is its content's."""
    first = probe_document(data, **options).page_digests
    again = probe_document(data + b"\n% not a page\n", **options).page_digests
    return [a == b for a, b in zip(first, again, strict=True)]


def test_pages_that_cannot_be_told_apart_are_only_shared_with_themselves():
    assert _shared(_one_page_pdf()) == [True]
    # One page object shown as two pages, and a page whose marker is forged elsewhere.
    twice = _one_page_pdf().replace(b"/Kids [3 0 R] /Count 1", b"/Kids [3 0 R 3 0 R] /Count 2")
    assert probe_document(twice).pages == 2 and _shared(twice) == [False, False]
    forged = _one_page_pdf(b"/Forged {extra0}",
                           extra=(b"<< /ArtBox [0 %r 0 %r] >>" % (documents._MARKER_BOTTOM,
                                                                  documents._MARKER_TOP),))
    assert _shared(forged) == [False]
    # A page dictionary doubling as something a page draws (an appearance): the marker took
    # its /ArtBox, so what that held is not known.
    doubling = b"/Annots [<< /Type /Annot /Subtype /Square /Rect [0 0 9 9] /AP << /N {page} >> >>]"
    assert _shared(_one_page_pdf(doubling)) == [False]
    # An annotated page in a document with a form: widgets may be drawn from the form.
    square = b"/Annots [<< /Type /Annot /Subtype /Square /Rect [50 50 200 200] >>]"
    assert _shared(_one_page_pdf(square)) == [True]
    assert _shared(_one_page_pdf(square, catalog=b"/AcroForm << /Fields [] >>")) == [False]
    assert _shared(_one_page_pdf(catalog=b"/AcroForm << /Fields [] >>")) == [True]


def test_a_digest_pass_that_fails_leaves_the_document_readable(monkeypatch, mixed_pdf):
    expected = probe_document(mixed_pdf)

    def crash(*args):
        os._exit(3)

    monkeypatch.setattr(documents, "_pdf_page_digests", crash)
    info = probe_document(mixed_pdf)
    assert (info.pages, info.text_pages) == (expected.pages, expected.text_pages)
    assert len(set(info.page_digests)) == 3 and not set(info.page_digests) & set(
        expected.page_digests)
    assert _shared(mixed_pdf) == [False] * 3


def test_a_tiff_frame_has_one_digest_in_any_tiff_and_a_changed_frame_another():
    colour, grey, bits = frames()
    lzw = probe_document(pdfs.tiff_bytes([colour, grey, bits])).page_digests
    raw = probe_document(pdfs.tiff_bytes([bits, colour], compression="raw")).page_digests
    assert (raw[0], raw[1]) == (lzw[2], lzw[0]) and len(set(lzw)) == 3
    touched = colour.copy()
    touched.putpixel((250, 250), (0, 0, 0))
    changed = probe_document(pdfs.tiff_bytes([touched, grey, bits])).page_digests
    assert changed[0] != lzw[0] and changed[1:] == lzw[1:]
    # The same palette indices in other colours; the same pixels, turned by their tag.
    palette = grey.convert("P")
    other = palette.copy()
    other.putpalette([255 - value for value in palette.getpalette()])
    assert probe_document(pdfs.tiff_bytes([palette, bits])).page_digests[0] != \
        probe_document(pdfs.tiff_bytes([other, bits])).page_digests[0]
    turned = io.BytesIO()
    grey.save(turned, "TIFF", save_all=True, append_images=[bits], tiffinfo={274: 6})
    assert render_page(turned.getvalue(), 1).shape == (840, 524, 3)
    assert probe_document(turned.getvalue()).page_digests[0] != lzw[1]
    assert _shared(pdfs.tiff_bytes([colour, grey, bits])) == [True] * 3


# --- render ------------------------------------------------------------------------------------


def test_render_at_several_dpi(scans_pdf):
    receipt = decode_image(RECEIPT.read_bytes())
    page = render_page(scans_pdf, 1, dpi=72)
    assert page.shape == receipt.shape and page.dtype == np.uint8 and page.flags.c_contiguous
    # At 72 dpi a pixel is a point: the page is the image, up to JPEG resampling noise.
    assert np.abs(page.astype(np.int16) - receipt).mean() < 4
    for dpi in (36, 100, 150, 300):
        width, height = rendered_size(1680, 1048, dpi)
        assert render_page(scans_pdf, 2, dpi=dpi).shape == (height, width, 3)
    assert rendered_size(612, 792, 200) == LETTER_AT_200_DPI
    assert rendered_size(612, 792, 150) == (1275, 1650)


def test_page_size_is_checked_before_rendering():
    # 1e6 pt square: 7.7e12 pixels at 200 dpi. Only the page box is read; rendering it would
    # have failed the sandbox's 1 GB budget instead.
    with pytest.raises(ImageTooLargeError, match="no dpi from 36 fits"):
        render_page(pdfs.huge_page_pdf(1e6), 1, dpi=200)
    letter = pdfs.many_pages_pdf(1)
    with pytest.raises(ImageTooLargeError, match=r"at most 146 dpi fits") as refused:
        render_page(letter, 1, dpi=200, max_pixels=2_000_000)
    assert "1700x2200 = 3740000 pixels" in str(refused.value)
    width, height = rendered_size(612, 792, 146)
    assert width * height <= 2_000_000 < math.prod(rendered_size(612, 792, 147))
    assert render_page(letter, 1, dpi=146, max_pixels=2_000_000).shape == (height, width, 3)
    # The text layer alone renders nothing, so a page of any size may give it.
    assert read_page(pdfs.huge_page_pdf(1e6), 1, dpi=36, pdf_text="only").text_lines == ()


def test_bad_arguments_are_typed_errors(scans_pdf):
    for kwargs, name in (({"page": 3}, "page"), ({"page": 0}, "page"),
                         ({"page": True}, "page"), ({"page": 1, "dpi": 35}, "dpi"),
                         ({"page": 1, "dpi": 1201}, "dpi"), ({"page": 1, "dpi": 200.0}, "dpi"),
                         ({"page": 1, "pdf_text": "maybe"}, "pdf_text"),
                         ({"page": 1, "password": b"pw"}, "password")):
        with pytest.raises(InvalidOptionError) as error:
            read_page(scans_pdf, **kwargs)
        assert error.value.name == name, kwargs
    with pytest.raises(InvalidOptionError, match="the document has 2 pages, there is no page 3"):
        render_page(scans_pdf, 3)
    with pytest.raises(InvalidOptionError, match="the TIFF has 3 pages, there is no page 4"):
        render_page(pdfs.tiff_bytes(frames()), 4)
    with pytest.raises(InvalidOptionError, match="one page"):
        render_page(RECEIPT.read_bytes(), 2)
    with pytest.raises(InvalidImageError):
        render_page(b"GIF89a broken", 1)


# --- TIFF --------------------------------------------------------------------------------------


def test_tiff_pages_are_decoded_like_images():
    pages = frames()
    tiff = pdfs.tiff_bytes(pages)
    colour = render_page(tiff, 1)
    assert np.array_equal(colour, np.asarray(pages[0])[..., ::-1])  # LZW is lossless; BGR
    grey = render_page(tiff, 2, dpi=300)  # dpi does not apply to pixels already there
    assert grey.shape == (524, 840, 3)
    assert np.array_equal(grey[..., 0], np.asarray(pages[1])) and np.array_equal(
        grey[..., 0], grey[..., 2])
    bits = render_page(tiff, 3)
    assert bits.shape == (200, 320, 3) and set(np.unique(bits)) == {0, 255}
    assert bits[100, 160].tolist() == [0, 0, 0] and bits[10, 10].tolist() == [255, 255, 255]
    assert read_page(tiff, 2, pdf_text="only").text_lines == ()
    assert read_page(tiff, 2, pdf_text="auto").source == "ocr"
    with pytest.raises(ImageTooLargeError, match="page 1 of the TIFF is 500x500"):
        render_page(tiff, 1, max_pixels=200_000)
    assert render_page(tiff, 3, max_pixels=200_000).shape == (200, 320, 3)


# --- text layer --------------------------------------------------------------------------------


def test_text_layer_lines_and_boxes_in_rendered_pixels(mixed_pdf):
    lines = page_text(mixed_pdf, 1, dpi=200)
    assert [line.text for line in lines] == INVOICE
    assert all(line.confidence == 1.0 for line in lines)
    left, top, line_height = pdfs.text_layout()
    scale = 200 / 72
    page = render_page(mixed_pdf, 1, dpi=200)
    ink = page.min(axis=2) < 128
    covered = np.zeros_like(ink)
    for k, line in enumerate(lines):
        (x0, y0), (x1, y0b), (x1b, y1), (x0b, y1b) = line.box
        assert (x0, y0, x1, y1) == (x0b, y0b, x1b, y1b)  # an upright rectangle
        baseline = (top + k * line_height) * scale
        # Starts at the left margin; Helvetica 14 pt: caps ~10 pt above the baseline,
        # descenders ~3 pt below.
        assert abs(x0 - left * scale) <= 6
        assert baseline - 12 * scale <= y0 < baseline - 8 * scale
        assert baseline - 1 <= y1 <= baseline + 4 * scale
        assert ink[y0:y1 + 1, x0:x1 + 1].mean() > 0.05
        covered[max(y0 - 2, 0):y1 + 3, max(x0 - 2, 0):x1 + 3] = True
    # All the ink on the page is inside the boxes.
    assert ink.any() and not (ink & ~covered).any()
    half = page_text(mixed_pdf, 1, dpi=100)
    assert [line.text for line in half] == INVOICE
    for full, small in zip(lines, half):
        assert np.abs(np.asarray(full.box) / 2 - np.asarray(small.box)).max() <= 1.5
    # A page without a text layer has no lines.
    assert page_text(mixed_pdf, 2) == []
    assert page_text(pdfs.images_pdf([RECEIPT]), 1) == []


def test_read_page_modes(mixed_pdf):
    text = read_page(mixed_pdf, 1, dpi=200, pdf_text="auto")
    assert text.source == "text_layer" and text.image is None
    assert (text.width, text.height) == LETTER_AT_200_DPI
    assert [line.text for line in text.text_lines] == INVOICE
    scan = read_page(mixed_pdf, 2, dpi=200, pdf_text="auto")
    assert scan.source == "ocr" and scan.image.shape == (2200, 1700, 3)
    assert scan.text_lines is None
    assert read_page(mixed_pdf, 2, pdf_text="only").text_lines == ()
    forced = read_page(mixed_pdf, 1, dpi=100, pdf_text="ocr")
    assert forced.source == "ocr" and forced.image.shape == (1100, 850, 3)


# --- OCR of rendered pages, real engine --------------------------------------------------------


def test_rendered_pages_read_through_the_engine(onnx_engine: OcrEngine, scans_pdf, mixed_pdf):
    receipt = onnx_engine.ocr_array(render_page(scans_pdf, 1, dpi=72))
    assert receipt.lines[0].text == RECEIPT_FIRST_LINE and len(receipt.lines) == 16
    book = onnx_engine.ocr_array(render_page(scans_pdf, 2, dpi=72))
    assert book.lines[0].text == BOOK_FIRST_LINE
    # The receipt drawn by fpdf2 onto a letter page, rendered at 200 dpi.
    page = onnx_engine.ocr_array(render_page(mixed_pdf, 2, dpi=200))
    assert page.lines[0].text == RECEIPT_FIRST_LINE
    # OCR of a text page reads what its text layer says, where its text layer says it is.
    read = onnx_engine.ocr_array(render_page(mixed_pdf, 1, dpi=200))
    layer = page_text(mixed_pdf, 1, dpi=200)
    assert [line.text for line in read.lines] == [line.text for line in layer] == INVOICE
    for ocr_line, text_line in zip(read.lines, layer):
        assert _iou(ocr_line.box, text_line.box) > 0.6


# --- hostile documents -------------------------------------------------------------------------


def test_nesting_far_past_parser_limits_is_read_or_refused():
    # 100,000 nested arrays in the page dictionary and in a content-stream operand.
    nested = pdfs.nested_array_pdf(100_000)
    assert probe_document(nested).pages == 1
    assert render_page(nested, 1, dpi=72).shape == (792, 612, 3)


def test_memory_bomb_is_stopped_by_the_sandbox_budget():
    # A form that draws itself twice: unsandboxed, pdfium's page loader took 22 GB in seconds.
    bomb = pdfs.self_drawing_form_pdf()
    sandbox = PdfSandbox(memory_mb=256)
    largest_child_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    for call in (lambda: probe_document(bomb, sandbox=sandbox),
                 lambda: render_page(bomb, 1, sandbox=sandbox),
                 lambda: read_page(bomb, 1, pdf_text="only", sandbox=sandbox)):
        with pytest.raises(DocumentTooComplexError, match="256 MB memory budget"):
            call()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    largest_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    # The bomb's children (which start out sharing this process's pages) stayed within their
    # budget: no larger than this process plus 256 MB, give or take, unless an earlier child
    # of this process (a pool worker) was larger still.
    assert largest_child <= max(largest_child_before, own + (256 + 64) * 2**20)


def test_declared_huge_image_on_every_page_renders_bounded_or_times_out():
    # 200 pages, each drawing one image declared 60,000 x 60,000 (3.6 Gpx) from 65 bytes.
    bomb = pdfs.image_bomb_pdf(200, 60_000)
    info = probe_document(bomb)
    assert info.pages == 200 and info.text_pages == (False,) * 200
    assert render_page(bomb, 200, dpi=72).shape == (792, 612, 3)
    # That page costs pdfium over a second of decoding; a 0.1 s budget stops it.
    with pytest.raises(DocumentTooComplexError, match="longer than 0.1 s"):
        render_page(bomb, 1, dpi=72, sandbox=PdfSandbox(timeout_s=0.1))
    assert _zombie_children() == []  # the killed child was reaped


def _zombie_children() -> list[int]:
    zombies = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(stat.parent.name))
    return zombies


# --- the worker's document jobs, through a real pool -------------------------------------------


def test_the_pdf_sandbox_budget_comes_from_the_config():
    config = load_config(ROOT / "config.json", {"ocr.predict_system.pdf_memory_mb": 512,
                                                "ocr.predict_system.pdf_timeout": 12,
                                                **PINNED_BACKEND})
    assert build_engine_spec(config).pdf_sandbox == PdfSandbox(memory_mb=512, timeout_s=12.0)
    assert build_engine_spec(load_config(ROOT / "config.json", PINNED_BACKEND)).pdf_sandbox \
        == PdfSandbox()
    # The child must be killed before the pool kills the worker for the same job.
    with pytest.raises(ConfigError, match=r"ocr\.predict_system\.pdf_timeout \(30\) must be "
                       r"below ocr\.process\.task_timeout \(30\)"):
        load_config(None, {"ocr.process.task_timeout": 30, "ocr.predict_system.pdf_timeout": 30})
    # Left unset, it follows a short task timeout instead of refusing to start.
    short = load_config(ROOT / "config.json", {"ocr.process.task_timeout": 20,
                                               **PINNED_BACKEND})
    assert build_engine_spec(short).pdf_sandbox.timeout_s == 10.0
    assert load_config(None, {"ocr.process.task_timeout": 30,
                              "ocr.predict_system.pdf_timeout": 29.5})
    with pytest.raises(ConfigError, match="pdf_memory_mb: must be at least 64"):
        load_config(None, {"ocr.predict_system.pdf_memory_mb": 32})


def test_worker_handles_probe_page_and_image_jobs(scans_pdf, mixed_pdf):
    config = load_config(ROOT / "config.json", {"ocr.process.number": 1,
                                                "ocr.process.threads": 1, **PINNED_BACKEND})
    spec = build_engine_spec(config)
    options = spec.defaults
    model = config.ocr.predict_system.model

    def page_job(data: bytes, page: int, pdf_text: str = "auto", dpi: int = 200,
                 password: str | None = None) -> PageJob:
        return PageJob(data, page, dpi, pdf_text, password, options, model)

    async def scenario() -> None:
        pool = WorkerPool(boot, spec, pool_config(config))
        events = EventLog(pool)
        await pool.start()
        try:
            [pid] = pool.worker_pids()
            probe = await pool.submit(DocumentProbeJob(mixed_pdf))
            assert probe == {"kind": "pdf", "pages": 3, "page_sizes": [[612.0, 792.0]] * 3,
                             "text_pages": [True, False, True],
                             "page_digests": list(probe_document(mixed_pdf).page_digests)}
            text = await pool.submit(page_job(mixed_pdf, 1))
            assert text["source"] == "text_layer" and text["model"] == model
            assert (text["page"], text["width"], text["height"]) == (1, *LETTER_AT_200_DPI)
            assert text["text"].split("\n") == INVOICE
            assert set(text["lines"][0]) == {"text", "confidence", "box"}
            assert text["lines"][0]["confidence"] == 1.0
            assert set(text["timings_ms"]) == {"text_layer", "total"}
            scan = await pool.submit(page_job(mixed_pdf, 2))
            assert scan["source"] == "ocr" and scan["lines"][0]["text"] == RECEIPT_FIRST_LINE
            assert {"render", "det", "rec", "total"} <= set(scan["timings_ms"])
            only = await pool.submit(page_job(mixed_pdf, 2, pdf_text="only"))
            assert only["source"] == "text_layer" and only["lines"] == [] and only["text"] == ""
            forced = await pool.submit(page_job(mixed_pdf, 1, pdf_text="ocr"))
            assert forced["source"] == "ocr" and forced["text"].split("\n") == INVOICE
            receipt = await pool.submit(page_job(scans_pdf, 1, dpi=72))
            assert receipt["lines"][0]["text"] == RECEIPT_FIRST_LINE
            tiff = await pool.submit(page_job(pdfs.tiff_bytes(frames()), 1))
            assert (tiff["width"], tiff["height"]) == (500, 500) and tiff["source"] == "ocr"
            assert tiff["lines"][0]["text"] == RECEIPT_FIRST_LINE and len(tiff["lines"]) == 16
            tiff_probe = await pool.submit(DocumentProbeJob(pdfs.tiff_bytes(frames())))
            assert tiff_probe["kind"] == "tiff" and tiff_probe["pages"] == 3
            # Typed errors cross the pipe with their codes.
            locked = pdfs.text_pdf([INVOICE], owner_password="o", user_password="pw")
            failures = {
                "password_required": page_job(locked, 1),
                "wrong_password": page_job(locked, 1, password="nope"),
                "too_many_pages": DocumentProbeJob(pdfs.many_pages_pdf(2000)),
                "image_too_large": page_job(pdfs.huge_page_pdf(), 1, pdf_text="ocr"),
                "invalid_document": DocumentProbeJob(b"%PDF-1.7 and nothing else"),
                "invalid_option": page_job(mixed_pdf, 4),
                "document_too_complex": page_job(pdfs.self_drawing_form_pdf(), 1),
            }
            for code, job in failures.items():
                with pytest.raises(JobFailed) as failed:
                    await pool.submit(job)
                assert failed.value.code == code, (code, failed.value.info)
            unlocked = await pool.submit(page_job(locked, 1, password="pw"))
            assert unlocked["text"].split("\n") == INVOICE
            # The image path is unchanged, and the same worker served everything: no document
            # (the memory bomb included) cost it its life.
            image = await pool.submit(OcrJob(RECEIPT.read_bytes(), options, model))
            assert image["lines"][0]["text"] == RECEIPT_FIRST_LINE and "page" not in image
            assert pool.worker_pids() == [pid] and events.exits == []
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(scenario(), 600))


def _iou(a, b) -> float:
    ax0, ay0 = np.min(a, axis=0)
    ax1, ay1 = np.max(a, axis=0)
    bx0, by0 = np.min(b, axis=0)
    bx1, by1 = np.max(b, axis=0)
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union
