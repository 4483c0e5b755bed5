"""`modstream retrain`'s training flags: one per `model.train_config.TrainConfig` field,
with its default, choices, meaning and valid range, known without importing torch.

Why a table beside `TrainConfig` rather than reading the dataclass: `model.train_config`
imports torch (through `model.network`), which took 2.3 s of every `modstream … --help`
and argument error (`python -X importtime`). The table is checked against the dataclass
by a unit test (tests/unit/test_cli_help.py): same fields, same defaults, same choices,
so it cannot drift. The ranges are what the training code can run with; `retrain`
checks them before it reads any data, so `--dropout 7` exits 2 at once instead of
failing minutes into a run.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model.reading import DEFAULT_STRIDE, DEFAULT_WINDOW_TOKENS

Value = int | float | str | bool | None


@dataclass(frozen=True)
class Range:
    """Bounds of a number; `None` leaves that side open."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def problem(self, value: float) -> str | None:
        """Why `value` is out of range, or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number{self._text()}"
        too_low = self.low is not None and (
            value < self.low if self.low_inclusive else value <= self.low
        )
        too_high = self.high is not None and (
            value > self.high if self.high_inclusive else value >= self.high
        )
        return f"must be{self._text()}" if too_low or too_high else None

    def problem_free_text(self) -> str:
        """The range as documentation: `>= 1`, `in [0, 1)`."""
        return self._text().strip()

    def _text(self) -> str:
        if self.low is not None and self.high is not None:
            open_ = "[" if self.low_inclusive else "("
            close = "]" if self.high_inclusive else ")"
            return f" in {open_}{self.low:g}, {self.high:g}{close}"
        if self.low is not None:
            return f" {'>=' if self.low_inclusive else '>'} {self.low:g}"
        if self.high is not None:
            return f" {'<=' if self.high_inclusive else '<'} {self.high:g}"
        return ""


@dataclass(frozen=True)
class TrainFlag:
    """One training flag: `--` + the field name with dashes."""

    name: str
    kind: type[Any]  # int, float, str or bool
    default: Value
    help: str
    choices: tuple[str, ...] = ()
    valid: Range | None = None
    optional: bool = False  # the field is `X | None`

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Value) -> str | None:
        """Why `value` cannot train, naming the flag; None when it can."""
        if value is None or self.valid is None or isinstance(value, (bool, str)):
            return None
        why = self.valid.problem(value)
        return f"{self.flag} {why}, got {value:g}" if why else None


POSITIVE = Range(low=1)
NON_NEGATIVE = Range(low=0)

TRAIN_FLAGS: tuple[TrainFlag, ...] = (
    TrainFlag("seed", int, 1234, "random seed (data order, initial weights)", valid=NON_NEGATIVE),
    TrainFlag("epochs", int, 8, "most passes over the training data", valid=POSITIVE),
    TrainFlag("batch_size", int, 64, "examples per training step", valid=POSITIVE),
    TrainFlag("lr", float, 3e-3, "Adam learning rate", valid=Range(low=0, low_inclusive=False)),
    TrainFlag(
        "lr_schedule",
        str,
        "constant",
        "learning rate schedule (linear: decays to 10%% over the epochs)",
        choices=("constant", "linear"),
    ),
    TrainFlag("embed_dim", int, 100, "word embedding size", valid=POSITIVE),
    TrainFlag("hidden_dim", int, 64, "recurrent hidden size per direction", valid=POSITIVE),
    TrainFlag("layers", int, 1, "stacked recurrent layers", valid=POSITIVE),
    TrainFlag("rnn", str, "lstm", "recurrent cell", choices=("lstm", "gru")),
    TrainFlag("bidirectional", bool, True, "read texts in both directions"),
    TrainFlag(
        "dropout",
        float,
        0.3,
        "dropout probability",
        valid=Range(low=0, high=1, high_inclusive=False),
    ),
    TrainFlag(
        "pooling",
        str,
        "meanmax",
        "how token states become one vector",
        choices=("last", "mean", "max", "meanmax"),
    ),
    TrainFlag(
        "subword_buckets",
        int,
        20_000,
        "hashed character n-gram rows; 0 = word embeddings only",
        valid=NON_NEGATIVE,
    ),
    TrainFlag("subword_dim", int, 32, "character n-gram embedding size", valid=POSITIVE),
    TrainFlag(
        "ema_decay",
        float,
        0.995,
        "keep a moving average of the weights with this decay per step; 0 = raw weights",
        valid=Range(low=0, high=1, high_inclusive=False),
    ),
    TrainFlag("glove", bool, True, "initialise embeddings from the GloVe cache when present"),
    TrainFlag(
        "glove_dir",
        str,
        None,
        "GloVe cache directory (default: $MODSTREAM_GLOVE_DIR or ~/.cache/modstream/glove)",
        optional=True,
    ),
    TrainFlag(
        "glove_min_freq",
        int,
        0,
        "also keep tokens this frequent if GloVe knows them; 0 = off",
        valid=NON_NEGATIVE,
    ),
    TrainFlag(
        "glove_vocab",
        int,
        20_000,
        "add GloVe's N most frequent words to the vocabulary",
        valid=Range(low=0, high=20_000),
    ),
    TrainFlag("freeze_glove", bool, True, "keep GloVe-initialised rows fixed while training"),
    TrainFlag(
        "comments_spam_negative", bool, True, "insult-corpus comments count as spam negatives"
    ),
    TrainFlag("short_benign", bool, True, "short benign chat is a negative for every label"),
    TrainFlag("window_tokens", int, DEFAULT_WINDOW_TOKENS, "tokens per window", valid=POSITIVE),
    TrainFlag(
        "window_stride",
        int,
        DEFAULT_STRIDE,
        "tokens between window starts (at most --window-tokens)",
        valid=POSITIVE,
    ),
    TrainFlag(
        "context_share",
        float,
        0.5,
        "share of the insult comments also trained among clean ones each epoch; 0 = off",
        valid=Range(low=0, high=1),
    ),
    TrainFlag(
        "context_fillers",
        int,
        4,
        "most clean comments around one trained in context",
        valid=POSITIVE,
    ),
    TrainFlag(
        "pos_weight",
        str,
        "sqrt",
        "positive-class loss weight per label",
        choices=("none", "sqrt", "balanced"),
    ),
    TrainFlag(
        "target_precision",
        str,
        "",
        'threshold rule: "" = max F1 on validation; "0.95" = lowest cut reaching that '
        'precision; "spam=0.98,insult=0.8" per label',
    ),
    TrainFlag("baseline", bool, True, "fit the TF-IDF baseline too (needs scikit-learn)"),
    TrainFlag("report", bool, True, "write the evaluation report into the checkpoint"),
    TrainFlag("min_freq", int, 2, "keep tokens seen this often in training", valid=POSITIVE),
    TrainFlag("max_vocab", int, 40_000, "largest vocabulary", valid=POSITIVE),
    TrainFlag(
        "patience",
        int,
        2,
        "stop after this many epochs without improvement",
        valid=NON_NEGATIVE,
    ),
    TrainFlag(
        "grad_clip", float, 1.0, "clip the gradient norm to this; 0 = off", valid=NON_NEGATIVE
    ),
    TrainFlag(
        "limit",
        int,
        None,
        "train on at most this many examples (quick runs)",
        valid=POSITIVE,
        optional=True,
    ),
    TrainFlag(
        "eval_limit",
        int,
        None,
        "validate and test on at most this many examples each",
        valid=POSITIVE,
        optional=True,
    ),
    TrainFlag("device", str, "auto", "training device: auto, cpu or cuda (or cuda:N)"),
    TrainFlag("num_threads", int, 1, "torch threads while training", valid=POSITIVE),
)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per training setting; unset flags stay None (TrainConfig's default)."""
    group = parser.add_argument_group("training (model.train_config.TrainConfig)")
    for spec in TRAIN_FLAGS:
        kwargs: dict[str, Any] = {"dest": f"train_{spec.name}", "default": None}
        shown = "none" if spec.default is None else repr(spec.default)
        if spec.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            shown = "on" if spec.default else "off"
        elif spec.choices:
            kwargs["choices"] = list(spec.choices)
        else:
            kwargs["type"] = spec.kind
            kwargs["metavar"] = {int: "N", float: "X", str: "TEXT"}[spec.kind]
        kwargs["help"] = f"{spec.help} (default: {shown})"
        group.add_argument(spec.flag, **kwargs)


def train_overrides(args: argparse.Namespace) -> dict[str, Value]:
    """The training flags given on the command line, by TrainConfig field name."""
    return {
        spec.name: getattr(args, f"train_{spec.name}")
        for spec in TRAIN_FLAGS
        if getattr(args, f"train_{spec.name}", None) is not None
    }


def train_problems(
    overrides: dict[str, Value], specs: Sequence[TrainFlag] = TRAIN_FLAGS
) -> list[str]:
    """Every out-of-range training flag, each naming its flag."""
    problems = []
    for spec in specs:
        if spec.name in overrides:
            why = spec.problem(overrides[spec.name])
            if why:
                problems.append(why)
    return problems


def train_flags_markdown() -> str:
    """The README's table of retrain's training flags, generated from the table above."""
    rows = ["| flag | default | valid | meaning |", "|---|---|---|---|"]
    for spec in TRAIN_FLAGS:
        if spec.kind is bool:
            flag = f"`{spec.flag}` / `--no-{spec.flag[2:]}`"
            default = "on" if spec.default else "off"
        else:
            flag = f"`{spec.flag}`"
            default = (
                "—" if spec.default is None else f"`{spec.default!s}`" if spec.default else '`""`'
            )
        if spec.choices:
            valid = ", ".join(f"`{choice}`" for choice in spec.choices)
        elif spec.valid is not None:
            valid = spec.valid.problem_free_text()
        else:
            valid = ""
        meaning = spec.help.replace("%%", "%").replace("|", "\\|")
        rows.append(f"| {flag} | {default} | {valid} | {meaning} |")
    return "\n".join(rows) + "\n"
