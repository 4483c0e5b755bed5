#!/usr/bin/env python3
"""Regenerates the README's generated tables (configuration, metrics, retrain's training
flags) from the code.

`python scripts/readme_tables.py` rewrites them in place; `--check` exits 1 when the
README is stale (a unit test runs the check).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from worker.metrics import catalogue_markdown  # noqa: E402
from worker.settings import settings_markdown  # noqa: E402
from worker.train_flags import train_flags_markdown  # noqa: E402

README = REPO_ROOT / "README.md"
TABLES: dict[str, Callable[[], str]] = {
    "config": settings_markdown,
    "metrics": catalogue_markdown,
    "retrain": train_flags_markdown,
}


def render(text: str) -> str:
    for name, make in TABLES.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED {name} -->\n).*?(<!-- END GENERATED {name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise SystemExit(f"README has no GENERATED {name} markers")
        body = make()
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)  # noqa: B023
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README is stale")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            sys.stderr.write("README tables are stale: run python scripts/readme_tables.py\n")
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
