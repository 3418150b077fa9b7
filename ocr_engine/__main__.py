"""CLI: python -m ocr_engine IMAGE... [--json] [--backend B] [--model SET] [--threads N]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import EngineConfig, OcrEngine, OcrError, parse_options, resolve_model_set
from .backends import BACKEND_NAMES, DEFAULT_BACKEND, setup_process
from .options import OPTION_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocr_engine", description=__doc__)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default=DEFAULT_BACKEND)
    parser.add_argument("--model", default="ppocr-v4", help="model set from models/manifest.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help=f"OCR option, repeatable; names: {', '.join(OPTION_NAMES)}")
    args = parser.parse_args(argv)
    try:
        options = parse_options(dict(item.split("=", 1) for item in args.option))
        setup_process(args.backend, args.threads)
        engine = OcrEngine(EngineConfig(resolve_model_set(args.model, args.backend),
                                        threads=args.threads, defaults=options))
    except (OcrError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    for path in args.images:
        try:
            result = engine.ocr(path.read_bytes())
        except (OcrError, OSError) as exc:
            print(f"{path}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps({"image": str(path), **result.to_dict()}, ensure_ascii=False))
        else:
            took = result.timings_ms["total"]
            print(f"== {path} ({result.width}x{result.height}, {took:.0f} ms)")
            for line in result.lines:
                print(f"{line.confidence:.3f}  {line.text}")
    return status


if __name__ == "__main__":
    sys.exit(main())
