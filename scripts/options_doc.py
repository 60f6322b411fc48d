"""Rewrite README.md's generated option tables from the settings' declarations.

    .venv/bin/python scripts/options_doc.py           # rewrite the tables
    .venv/bin/python scripts/options_doc.py --check   # exit 1 if they are out of date

The tables sit between ``<!-- options:NAME -->`` and ``<!-- /options:NAME -->``; their
content comes from ``worker.cli.options_tables()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from worker.cli import with_options_tables

README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    generated = with_options_tables(text)
    if generated == text:
        return 0
    if "--check" in argv:
        print(f"{README}: option tables are out of date; run {__file__}", file=sys.stderr)
        return 1
    README.write_text(generated, encoding="utf-8")
    print(f"{README}: option tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
