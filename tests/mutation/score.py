"""The mutation score of the delivery core, from mutmut's results in mutants/.

Prints killed / total per module, then every survivor: mutants the unit tests did not
kill ("survived"), never ran ("no tests") or left undecided. A survivor must be listed in
tests/mutation/equivalent.md (its mutmut name in backticks, with the reason it changes
no behaviour). Exits 1 when the score is under `--min` per cent or a survivor is not
listed; stale entries (no longer survivors) are reported too.

`make mutation` runs it after `mutmut run`; `mutmut show NAME` prints one mutant's diff.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENT = Path(__file__).with_name("equivalent.md")
# mutmut's exit codes per mutant: a failing test run kills it; so does a timeout (the
# tests hung or looped on it) and a crash of the test process.
KILLED = {1, 3, -24, 24, 152, 255, -11, -9, 36}
SURVIVED = {0}
NO_TESTS = {5, 33}


def results(mutants: Path) -> dict[str, dict[str, int | None]]:
    """module → mutant name → exit code, for every mutated module."""
    found: dict[str, dict[str, int | None]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = meta.relative_to(mutants).as_posix().removesuffix(".py.meta")
        found[module.replace("/", ".")] = json.loads(meta.read_text())["exit_code_by_key"]
    return found


def listed() -> set[str]:
    """Mutant names listed as equivalent (each in backticks at the start of a bullet)."""
    text = EQUIVALENT.read_text(encoding="utf-8") if EQUIVALENT.exists() else ""
    return set(re.findall(r"^- `([^`]+)`", text, flags=re.MULTILINE))


def status(code: int | None) -> str:
    if code in KILLED:
        return "killed"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    return "not checked" if code is None else f"exit {code}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--min", type=float, default=90.0, help="per cent killed, at least")
    args = parser.parse_args(argv)
    by_module = results(args.mutants)
    if not by_module:
        print(f"no mutmut results under {args.mutants}: run `mutmut run` first")
        return 1
    equivalent = listed()
    survivors: dict[str, list[tuple[str, str]]] = defaultdict(list)
    killed_all = total_all = 0
    print(f"{'module':<24}{'killed':>8}{'total':>8}{'score':>9}  survivors (listed)")
    for module, codes in by_module.items():
        counts = Counter(status(code) for code in codes.values())
        killed, total = counts["killed"], len(codes)
        killed_all, total_all = killed_all + killed, total_all + total
        for name, code in sorted(codes.items()):
            if status(code) != "killed":
                survivors[module].append((name, status(code)))
        left = survivors[module]
        n_listed = sum(1 for name, _ in left if name in equivalent)
        print(
            f"{module:<24}{killed:>8}{total:>8}{100 * killed / max(total, 1):>8.1f}%"
            f"  {len(left)} ({n_listed})"
        )
    score = 100 * killed_all / max(total_all, 1)
    print(f"{'delivery core':<24}{killed_all:>8}{total_all:>8}{score:>8.1f}%")

    unlisted = [
        (name, why) for left in survivors.values() for name, why in left if name not in equivalent
    ]
    every_survivor = {name for left in survivors.values() for name, _ in left}
    stale = sorted(equivalent - every_survivor)
    for name, why in unlisted:
        print(f"NOT LISTED ({why}): {name}   (mutmut show {name})")
    for name in stale:
        print(f"stale entry in {EQUIVALENT.name} (no longer a survivor): {name}")
    failed = False
    if score < args.min:
        print(f"FAILED: {score:.1f}% killed, under {args.min:g}%")
        failed = True
    if unlisted:
        print(f"FAILED: {len(unlisted)} survivors neither killed nor listed in {EQUIVALENT}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
