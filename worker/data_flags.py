"""`modstream retrain`'s data flags: which data it trains on, how a file is read, and
the label spec.

Checked before anything is read or trained, without torch or the corpora
(`data_problems`, `read_label_spec`): a missing file, a format the reader does not
know, `--no-bundled` without `--data`, or two fields given the same name exit 2 naming
the flag. The files' contents are checked when they are read (`model.user_data`),
still before training and before anything is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # model.training_sources imports the corpora loader
    from model.label_spec import LabelSpec
    from model.training_sources import DataRequest

JSONL_SUFFIXES = (".jsonl", ".ndjson")  # = model.user_formats' (a unit test keeps them equal)
CSV_SUFFIXES = (".csv",)
FILE_FLAGS = ("--text-field", "--split-field", "--ignore-field", "--allow-split-duplicates")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """The data flags, in a group of their own."""
    group = parser.add_argument_group("data and labels (README: Your data, your labels)")
    group.add_argument(
        "--data",
        action="append",
        type=Path,
        default=None,
        metavar="FILE",
        help="also train on this labelled file: JSONL (.jsonl, .ndjson) or CSV (.csv), "
        "one boolean field per label or a 'labels' object, an optional 'split' field; "
        "repeatable (default: none)",
    )
    group.add_argument(
        "--bundled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on the bundled corpora (insult comments, SMS spam) too; --no-bundled "
        "trains on the --data files alone (default: on)",
    )
    group.add_argument(
        "--label-spec",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file naming the labels (in order), each one's description and "
        "threshold policy: max_f1, target_precision or fixed (default: the labels of the "
        "data; thresholds by --target-precision, else max F1)",
    )
    group.add_argument(
        "--text-field",
        default=None,
        metavar="NAME",
        help="the field (JSONL) or column (CSV) holding the text (default: text)",
    )
    group.add_argument(
        "--split-field",
        default=None,
        metavar="NAME",
        help="the field holding train, validation or test; a file without it is split by "
        "a hash of the normalised text, 80/10/10 (default: split)",
    )
    group.add_argument(
        "--ignore-field",
        action="append",
        default=None,
        metavar="NAME",
        help="a field that is not a label (an id, an author), skipped; repeatable "
        "(default: none; any other field is a label)",
    )
    group.add_argument(
        "--allow-split-duplicates",
        action="store_true",
        help="warn instead of failing when one text is declared in two splits",
    )


def data_problems(args: argparse.Namespace) -> list[str]:
    """Every data flag that is wrong on its face, each naming its flag."""
    problems: list[str] = []
    files: list[Path] = args.data or []
    if not args.bundled and not files:
        problems.append("--no-bundled needs at least one --data file to train on")
    for path in sorted({p for p in files if files.count(p) > 1}):
        problems.append(f"--data {path} is given twice (its rows would count double)")
    for path in files:
        suffix = path.suffix.lower()
        if not path.is_file():
            state = "is a directory" if path.is_dir() else "does not exist"
            problems.append(f"--data {path}: {state}")
        elif suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
            problems.append(
                f"--data {path}: unsupported file type {suffix or '(none)'!r}: use JSONL "
                f"({', '.join(JSONL_SUFFIXES)}) or CSV (.csv)"
            )
    if args.label_spec is not None and not args.label_spec.is_file():
        problems.append(f"--label-spec {args.label_spec}: does not exist or is not a file")
    given = [
        flag
        for flag in FILE_FLAGS
        if getattr(args, flag[2:].replace("-", "_")) not in (None, False, [])
    ]
    if given and not files:
        problems.append(f"{', '.join(given)} apply to --data files, and none was given")
    problems += _field_problems(args)
    return problems


def _field_problems(args: argparse.Namespace) -> list[str]:
    text, split = args.text_field or "text", args.split_field or "split"
    ignored: list[str] = args.ignore_field or []
    named = {"--text-field": text, "--split-field": split}
    problems = [f"{flag} must not be empty" for flag, name in named.items() if not name.strip()]
    problems += [
        f"{flag} {name!r}: 'labels' is the JSONL labels object, not a field"
        for flag, name in [*named.items(), *(("--ignore-field", n) for n in ignored)]
        if name == "labels"
    ]
    if text == split:
        problems.append(f"--text-field and --split-field are both {text!r}")
    both = sorted({text, split} & set(ignored))
    if both:
        problems.append(f"--ignore-field {both[0]!r} is the text or split field")
    return problems


def read_label_spec(args: argparse.Namespace) -> LabelSpec | None:
    """The label spec `--label-spec` names, or None; a bad one is a `UsageError` (exit
    2) naming the flag, the file and the field."""
    if args.label_spec is None:
        return None
    from model.label_spec import LabelSpecError, load_label_spec
    from worker.command_errors import UsageError

    try:
        return load_label_spec(args.label_spec)
    except LabelSpecError as exc:
        raise UsageError(f"--label-spec {exc}") from exc


def data_request(args: argparse.Namespace, spec: LabelSpec | None) -> DataRequest:
    """What `model.training_sources.load_training_data` reads, from the checked flags."""
    from model.training_sources import DataRequest
    from model.user_rows import DataLayout

    return DataRequest(
        files=tuple(args.data or ()),
        bundled=args.bundled,
        layout=DataLayout(
            text_field=args.text_field or "text",
            split_field=args.split_field or "split",
            ignore_fields=frozenset(args.ignore_field or ()),
        ),
        allow_split_duplicates=args.allow_split_duplicates,
        spec=spec,
        spec_path=args.label_spec,
    )
