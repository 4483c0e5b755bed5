"""Benign short chat: a real negative for every label.

The insult head used to learn only from the insults corpus, whose comments are rarely
shorter than a sentence, and SMS messages were masked for insult (friends' messages
can be insulting). So it never saw a short benign message as a negative, and its
scores on them were arbitrary: `hello` scored 0.538 and was flagged, and about 3 % of
SMS ham of at most 30 characters was flagged as insult. Two sources fix that, both
negative for every label:

1. **Short SMS ham, reviewed** (`SHORT_HAM_CHARS`): every ham message of the SMS Spam
   Collection of at most 30 characters (866 in all three splits) was read by hand; the
   21 distinct texts that a moderator could read as insulting or abusive (name-calling,
   slurs, profanity, vulgar words) are listed in `corpus/short_ham_excluded.txt` and
   stay masked for insult. The rest keep their split (the SMS corpus' text hash).
2. **Curated chat** (`corpus/short_chat.txt`): greetings, acknowledgements, small talk
   and sign-offs written for this project, split 80/10/10 by the same text hash
   (`model.data.hash_split`), so validation and test lines never train.

The report measures the flag rate on both, per split (`short_benign`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from model.data import SOURCE_SMS, DataSplits, Example, hash_split

SHORT_HAM_CHARS = 30
SOURCE_SHORT_CHAT = "short_chat"
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
CURATED_FILE = CORPUS_DIR / "short_chat.txt"
EXCLUDED_FILE = CORPUS_DIR / "short_ham_excluded.txt"


def read_lines(path: Path) -> list[str]:
    """Non-empty lines that are not `#` comments, in file order."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]


def curated(split: str, labels: Sequence[str]) -> list[Example]:
    """The curated lines that `hash_split` puts in `split`, negative for every label."""
    return [
        _negative(text, labels, SOURCE_SHORT_CHAT)
        for text in read_lines(CURATED_FILE)
        if hash_split(text) == split
    ]


def is_short_ham(example: Example, labels: Sequence[str], excluded: set[str]) -> bool:
    """An SMS ham message of at most `SHORT_HAM_CHARS` characters not excluded by review
    (none when the labels lack `spam`: only the spam label says a message is ham)."""
    if "spam" not in labels:
        return False
    spam = list(labels).index("spam")
    return (
        example.source == SOURCE_SMS
        and example.mask[spam] > 0
        and example.targets[spam] <= 0.5
        and len(example.text) <= SHORT_HAM_CHARS
        and example.text not in excluded
    )


def with_short_ham_negative(examples: Sequence[Example], labels: Sequence[str]) -> list[Example]:
    """`examples` with every reviewed short SMS ham message known negative for every
    label (the others unchanged, in order)."""
    excluded = set(read_lines(EXCLUDED_FILE))
    return [
        _negative(ex.text, labels, ex.source) if is_short_ham(ex, labels, excluded) else ex
        for ex in examples
    ]


def short_benign(splits: DataSplits, split: str) -> list[Example]:
    """A split's short benign messages: reviewed short SMS ham, then curated lines."""
    excluded = set(read_lines(EXCLUDED_FILE))
    ham = [ex for ex in getattr(splits, split) if is_short_ham(ex, splits.labels, excluded)]
    return [
        *(_negative(ex.text, splits.labels, ex.source) for ex in ham),
        *curated(split, splits.labels),
    ]


def corpus_digest() -> str:
    """SHA-256 of both files, for the data fingerprint of a model trained on them."""
    digest = hashlib.sha256()
    for path in (CURATED_FILE, EXCLUDED_FILE):
        data = path.read_bytes()
        digest.update(f"\0{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _negative(text: str, labels: Sequence[str], source: str) -> Example:
    return Example(text, tuple(0.0 for _ in labels), tuple(1.0 for _ in labels), source)
