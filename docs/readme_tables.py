"""Rewrites README.md's generated tables (request fields, error codes, config keys) from their
declarations: `.venv/bin/python docs/readme_tables.py`. tests/test_config.py checks they match."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.config import describe_keys  # noqa: E402
from server.errors import CATALOGUE  # noqa: E402
from server.request import fields_table_markdown  # noqa: E402


def errors_table() -> str:
    rows = ["| status | code | meaning |", "|---|---|---|"]
    for kind in sorted(CATALOGUE.values(), key=lambda kind: kind.status):
        retry = f" (Retry-After: {kind.retry_after})" if kind.retry_after else ""
        rows.append(f"| {kind.status} | `{kind.code}` | {kind.description}{retry} |")
    return "\n".join(rows)


def config_table() -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key}` | `{default}` | {doc} |" for key, default, doc in describe_keys()]
    return "\n".join(rows)


TABLES = {"fields": lambda: fields_table_markdown().rstrip("\n"), "errors": errors_table,
          "config": config_table}


def render(readme: str) -> str:
    for name, table in TABLES.items():
        pattern = re.compile(rf"(<!-- {name}:start[^\n]*-->\n).*?(\n<!-- {name}:end -->)", re.S)
        text = table()
        readme, count = pattern.subn(lambda m, text=text: m.group(1) + text + m.group(2), readme)
        if count != 1:
            raise SystemExit(f"README.md: markers for the {name} table not found")
    return readme


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
