"""The ppocr-server launcher: `python setup.py [--config config.json] [--port N] [--workers N]`.

Not a setuptools script (the name is the original server's). Dependencies are installed by
`make run` / `make test`; see README.md.
"""

from __future__ import annotations

import argparse
import sys

SETUPTOOLS_COMMANDS = {"install", "develop", "egg_info", "bdist_wheel", "sdist", "build",
                       "dist_info", "bdist_egg", "editable_wheel"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SETUPTOOLS_COMMANDS:
        print("setup.py is the ppocr-server launcher, not a setuptools script; "
              "see README.md (make run / make test)", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python setup.py", description="Start ppocr-server.")
    parser.add_argument("--config", default="config.json",
                        help="config file (default: %(default)s)")
    parser.add_argument("--port", type=int, help="overrides web_server.port")
    parser.add_argument("--workers", type=int, help="overrides ocr.process.number")
    args = parser.parse_args(argv)

    from server.config import ConfigError, load_config
    from server.main import run

    overrides = {}
    if args.port is not None:
        overrides["web_server.port"] = args.port
    if args.workers is not None:
        overrides["ocr.process.number"] = args.workers
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
