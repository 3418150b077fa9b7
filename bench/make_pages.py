"""Renders the benchmark's main page: a 1000x700 receipt-like document, 15 lines of mixed
Chinese/English text, black on white.

The PNG is committed (bench/data/doc_1000x700_15lines.png) so every run reads the very same
pixels; this script is how it was made. Glyph rendering depends on the font file and on
Pillow's FreeType, so a re-render on another machine may differ by a few pixels: bench/engine.py
only calls this when the PNG is missing. The font comes from Debian, never from the internet:

    apt-get install -y fonts-wqy-microhei
    python bench/make_pages.py [--out bench/data/doc_1000x700_15lines.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "doc_1000x700_15lines.png"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)
WIDTH, HEIGHT = 1000, 700

# (text, font size, x offset): a title, a header block, item rows and a footer.
LINES = (
    ("上海华联超市 HUALIAN SUPERMARKET", 30, 250),
    ("地址：上海市浦东新区张江路1234号  Tel: 021-5080 1234", 22, 60),
    ("收银台 POS-07  收银员 Cashier: 王小明  2024-03-15 18:42:07", 22, 60),
    ("单号 Order No. 20240315-0087-3321", 22, 60),
    ("商品名称 Item  数量 Qty  金额 Amount", 22, 60),
    ("农夫山泉矿泉水 550ml  x2  ¥ 4.00", 22, 60),
    ("光明纯牛奶 Bright Milk 1L  x1  ¥ 12.50", 22, 60),
    ("康师傅红烧牛肉面 Instant Noodles  x3  ¥ 13.50", 22, 60),
    ("苹果 Fuji Apple 1.25kg @ 9.80/kg  x1  ¥ 12.25", 22, 60),
    ("洗洁精 Dish Soap 500g  x1  ¥ 8.90", 22, 60),
    ("合计 Total: 51.15元  优惠 Discount: -3.00", 24, 60),
    ("实收 Paid: 50.00 (微信支付 WeChat Pay)  找零 Change: 1.85", 22, 60),
    ("会员卡号 Member: 6228 4800 1234 5678  积分 Points +48", 22, 60),
    ("请保留小票，七日内凭票退换 Keep this receipt for returns", 22, 60),
    ("谢谢惠顾，欢迎再次光临！ Thank you, see you again!", 24, 200),
)


def find_font() -> str:
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise SystemExit("no CJK font found; install one from Debian: "
                     "apt-get install -y fonts-wqy-microhei")


def render_page(font_path: str) -> Image.Image:
    page = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(page)
    top, pitch = 22, 44
    for index, (text, size, x) in enumerate(LINES):
        font = ImageFont.truetype(font_path, size)
        draw.text((x, top + index * pitch), text, fill=(20, 20, 20), font=font)
    return page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render_page(find_font()).convert("L").save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
