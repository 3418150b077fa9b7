"""Real PDFs and TIFFs for the document tests, made in the test run (nothing binary is committed).

- Well-formed documents: images saved as PDF pages (Pillow), a PDF with a real text layer and an
  encrypted one (fpdf2), multi-page TIFFs (Pillow).
- Hostile documents: written object by object with `raw_pdf`, so each one is exactly the attack it
  names (a 1e6 pt MediaBox, 2,000 pages, nesting far past any parser's limit, a self-drawing form,
  one declared-huge image on many pages).
- `multipart`: the form body that uploads such documents, one 'file' part each.
- `pixel_variant`: an image with one pixel changed, as PNG: a new cache key, the same reading.
"""

from __future__ import annotations

import io
import uuid
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from fpdf import FPDF
from PIL import Image

LETTER = (612, 792)  # points


def raw_pdf(objects: Sequence[bytes]) -> bytes:
    """A PDF of `objects` (the bodies of objects 1..n; object 1 is the catalog), with a correct
    cross-reference table, so that what a test exercises is the content, not a repair path."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def stream(dictionary: bytes, data: bytes) -> bytes:
    return b"<< " + dictionary + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def pages_pdf(count: int, media_box: Iterable[float] = (0, 0, *LETTER),
              content: bytes = b"", resources: bytes = b"<< >>",
              extra_objects: Sequence[bytes] = ()) -> bytes:
    """`count` pages that share one content stream and one resource dictionary.

    Objects: 1 catalog, 2 page tree, 3 content, 4.. `extra_objects` (what `resources` refers to,
    numbered from 4), then the pages.
    """
    box = " ".join(_number(value) for value in media_box).encode()
    first_page = 4 + len(extra_objects)
    kids = b" ".join(b"%d 0 R" % (first_page + i) for i in range(count))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % count,
               stream(b"", content), *extra_objects]
    page = (b"<< /Type /Page /Parent 2 0 R /MediaBox [" + box + b"] /Contents 3 0 R"
            b" /Resources " + resources + b" >>")
    objects += [page] * count
    return raw_pdf(objects)


def huge_page_pdf(side_pt: float = 1e6) -> bytes:
    """One page whose MediaBox is `side_pt` points square (1e6 pt is ~350 m)."""
    return pages_pdf(1, media_box=(0, 0, side_pt, side_pt), content=b"0 0 m 100 100 l S")


def many_pages_pdf(count: int = 2000) -> bytes:
    return pages_pdf(count, content=b"BT /F1 24 Tf 72 700 Td (page) Tj ET",
                     resources=b"<< /Font << /F1 4 0 R >> >>",
                     extra_objects=[_HELVETICA])


def image_bomb_pdf(pages: int = 200, side_px: int = 60_000) -> bytes:
    """`pages` letter pages that all draw one image XObject declared `side_px` x `side_px`
    (3.6 Gpx at the default), whose compressed stream is a few bytes: a decoder that trusted
    the declared size would allocate gigabytes per page."""
    image = stream(b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray"
                   b" /BitsPerComponent 8 /Filter /FlateDecode" % (side_px, side_px),
                   zlib.compress(b"\x00" * 65536, 9))
    return pages_pdf(pages, content=b"q 612 0 0 792 0 0 cm /Im1 Do Q",
                     resources=b"<< /XObject << /Im1 4 0 R >> >>", extra_objects=[image])


def nested_array_pdf(depth: int = 100_000) -> bytes:
    """A page dictionary holding an array nested `depth` deep, and a content stream whose inline
    array operand is nested as deep: a recursive parser without a limit overflows its stack."""
    nested = b"[" * depth + b"1" + b"]" * depth
    return pages_pdf(1, content=b"BT /F1 12 Tf 72 700 Td " + nested + b" TJ ET",
                     resources=b"<< /Font << /F1 4 0 R >> /Deep " + nested + b" >>",
                     extra_objects=[_HELVETICA])


def nested_page_tree_pdf(depth: int = 5000) -> bytes:
    """A page tree `depth` levels deep (each /Pages node has one child) above a single page."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    for level in range(depth):
        number = 2 + level
        objects.append(b"<< /Type /Pages /Kids [%d 0 R] /Count 1 >>" % (number + 1))
    page_number = 2 + depth
    objects.append(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] >>"
                   % (page_number - 1))
    return raw_pdf(objects)


def self_drawing_form_pdf() -> bytes:
    """A form XObject whose content draws itself twice: unbounded recursion (and 2^n work)
    unless the renderer caps form nesting."""
    form = stream(b"/Type /XObject /Subtype /Form /BBox [0 0 612 792]"
                  b" /Resources << /XObject << /Fm1 4 0 R >> >>",
                  b"0 0 m 10 10 l S q 0.9 0 0 0.9 5 5 cm /Fm1 Do Q /Fm1 Do")
    return pages_pdf(1, content=b"/Fm1 Do", resources=b"<< /XObject << /Fm1 4 0 R >> >>",
                     extra_objects=[form])


def pixel_variant(path: Path, index: int) -> bytes:
    """The image at `path` with one pixel changed (a new cache key, the same reading), as PNG;
    a different image for each `index`."""
    image = Image.open(path).convert("RGB")
    image.putpixel((index % image.width, 0), (index * 37 % 256, 3, 3))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def images_pdf(images: Sequence[Path | Image.Image], dpi: float = 100.0) -> bytes:
    """One page per image, the image filling its page at `dpi` (Pillow's PDF writer)."""
    opened = [Image.open(image).convert("RGB") if isinstance(image, Path)
              else image.convert("RGB") for image in images]
    out = io.BytesIO()
    opened[0].save(out, "PDF", resolution=dpi, save_all=True, append_images=opened[1:])
    return out.getvalue()


def text_pdf(pages: Sequence[Sequence[str] | Path], font_size: float = 14,
             size_pt: tuple[float, float] = LETTER, owner_password: str | None = None,
             user_password: str | None = None) -> bytes:
    """A PDF drawn by fpdf2: a page given as strings gets a real text layer (Helvetica, one
    text line per string, laid out as `text_layout` says); a page given as an image path is
    that image, filling the page, with no text at all."""
    pdf = FPDF(unit="pt", format=size_pt)
    pdf.set_auto_page_break(False)
    pdf.set_font("helvetica", size=font_size)
    if owner_password is not None:
        pdf.set_encryption(owner_password=owner_password, user_password=user_password)
    left, top, line_height = text_layout(font_size)
    for content in pages:
        pdf.add_page()
        if isinstance(content, Path):
            pdf.image(str(content), x=0, y=0, w=size_pt[0], h=size_pt[1])
            continue
        for k, line in enumerate(content):
            pdf.text(left, top + k * line_height, line)
    return bytes(pdf.output())


def text_layout(font_size: float = 14) -> tuple[float, float, float]:
    """(left, first baseline from the top, line height) in points, as text_pdf draws them."""
    return 72.0, 96.0, font_size * 2.0


def tiff_bytes(images: Sequence[Image.Image], compression: str = "tiff_lzw") -> bytes:
    """A TIFF with one frame (page) per image."""
    out = io.BytesIO()
    images[0].save(out, "TIFF", save_all=True, append_images=list(images[1:]),
                   compression=compression)
    return out.getvalue()


_HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def _number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def looped_tiff(image: Image.Image) -> bytes:
    """A one-frame TIFF whose IFD names itself as the next one: a page chain without end."""
    data = bytearray(tiff_bytes([image], compression="raw"))
    assert data[:4] == b"II*\x00"
    offset = int.from_bytes(data[4:8], "little")
    entries = int.from_bytes(data[offset:offset + 2], "little")
    next_at = offset + 2 + 12 * entries
    data[next_at:next_at + 4] = offset.to_bytes(4, "little")
    return bytes(data)


def multipart(fields: dict[str, str], files: list[bytes]) -> tuple[bytes, str]:
    """A multipart body with `fields` and one 'file' part per entry of `files`."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             f"{value}\r\n".encode() for name, value in fields.items()]
    for index, data in enumerate(files):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="item{index}"\r\nContent-Type: application/octet-stream'
                     '\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
