"""A user's labelled training file, generated: three labels the bundled corpora lack.

Deterministic (word lists and the row's index, a seeded filler), learnable (each label
has its own phrases), with a label missing from some rows (unknown, not negative) and
one label rare enough that its validation metrics are "too rare to evaluate":

| label | positive when | validation positives of 120 rows |
|---|---|---|
| harassment | i % 5 in (0, 1) | 48 |
| scam | i % 3 == 0; unknown when i % 9 == 4 | 40 of 107 known |
| self_harm | i % 12 == 7 | 10 (too rare: under 30) |

Rows 0-399 are declared train, 400-519 validation, 520-639 test (`split` field), or
the file declares no split (`declare_splits=False`) and the loader hashes texts.

`python -m tests.user_files decisions.jsonl labels.toml` writes the JSONL (declared
splits) and the label spec: the README's worked example starts there.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

USER_LABELS = ("harassment", "scam", "self_harm")
PHRASES = {
    "harassment": [
        "nobody wants you here",
        "you worthless creep",
        "get lost loser",
        "everyone laughs at you behind your back",
        "i will make your life hell",
    ],
    "scam": [
        "send the transfer fee today",
        "claim your inheritance now",
        "verify your bank password here",
        "your parcel needs a customs payment",
        "double your bitcoin fast",
    ],
    "self_harm": [
        "i want to hurt myself",
        "there is no reason to live",
        "i cut myself again",
        "i cannot go on anymore",
    ],
}
FILLER_TEXT = (
    "the meeting moved to thursday lunch was good see you at the station weather looks "
    "fine our team shipped the update photos from the trip garden bus library coffee"
)
FILLER = FILLER_TEXT.split()
SPLIT_ROWS = {"train": 400, "validation": 120, "test": 120}


@dataclass(frozen=True)
class Row:
    index: int
    text: str
    labels: dict[str, bool]  # the known ones; a missing label is unknown
    split: str


def positive(label: str, i: int) -> bool:
    if label == "harassment":
        return i % 5 in (0, 1)
    if label == "scam":
        return i % 3 == 0
    return i % 12 == 7


def known(label: str, i: int) -> bool:
    return not (label == "scam" and i % 9 == 4)


def user_rows(seed: int = 16) -> list[Row]:
    """The rows, each text distinct (so a declared split never repeats one)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    seen: set[str] = set()
    i = 0
    for split, count in SPLIT_ROWS.items():
        for _ in range(count):
            labels = {label: positive(label, i) for label in USER_LABELS if known(label, i)}
            while True:
                words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
                for label, value in labels.items():
                    if value:
                        words.insert(rng.randint(0, len(words)), rng.choice(PHRASES[label]))
                text = " ".join(words)
                if text not in seen:
                    seen.add(text)
                    break
            rows.append(Row(i, text, labels, split))
            i += 1
    return rows


def write_jsonl(
    path: Path, rows: Sequence[Row], declare_splits: bool = True, labels_object: bool = False
) -> Path:
    """One JSON object per row: the labels as fields, or as one `labels` object."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            record: dict[str, object] = {"text": row.text}
            if labels_object:
                record["labels"] = row.labels
            else:
                record.update(row.labels)
            if declare_splits:
                record["split"] = row.split
            f.write(json.dumps(record) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[Row], declare_splits: bool = True) -> Path:
    """A header `id,text,harassment,scam,self_harm[,split]`; unknown cells empty,
    values `1`/`0`; the `id` column is not a label (ignore it with --ignore-field)."""
    header = ["id", "text", *USER_LABELS, *(["split"] if declare_splits else [])]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells = [
                "" if label not in row.labels else str(int(row.labels[label]))
                for label in USER_LABELS
            ]
            writer.writerow(
                [f"r{row.index}", row.text, *cells, *([row.split] if declare_splits else [])]
            )
    return path


def support(rows: Sequence[Row], split: str, label: str) -> tuple[int, int]:
    """(known, positives) of `label` among the rows declared in `split`."""
    mine = [row for row in rows if row.split == split and label in row.labels]
    return len(mine), sum(row.labels[label] for row in mine)


LABEL_SPEC = """\
# The three labels, in this order, and how each one's threshold is chosen.
[labels.harassment]
description = "Insults, threats and pile-ons aimed at a person"
threshold = "max_f1"

[labels.scam]
description = "Advance-fee, phishing and payment fraud"
threshold = { target_precision = 0.9 }

[labels.self_harm]
description = "A person saying they may hurt themselves"
threshold = { fixed = 0.35 }
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the generated JSONL (labels as fields, declared splits) and the label spec."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.user_files",
        description="Write a three-label training file (harassment, scam, self_harm) "
        "and its label spec.",
    )
    parser.add_argument("data", type=Path, help="the JSONL file to write")
    parser.add_argument("label_spec", type=Path, help="the label spec (TOML) to write")
    args = parser.parse_args(argv)
    rows = user_rows()
    write_jsonl(args.data, rows)
    args.label_spec.write_text(LABEL_SPEC, encoding="utf-8")
    print(f"{args.data}: {len(rows)} rows, labels {', '.join(USER_LABELS)}; {args.label_spec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
