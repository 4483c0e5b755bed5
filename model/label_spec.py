"""The label spec: a model's labels, what each means, and how its threshold is chosen.

A small TOML file, written and reviewed by the moderation team. TOML rather than JSON
because it takes comments (why a category is strict is worth writing beside it) and
Python reads it with the standard library (`tomllib`, 3.11+), no new dependency:

    # labels.toml
    [labels.threat]
    description = "Threats of violence against a person or group"
    threshold = { target_precision = 0.9 }   # lowest cut with validation precision >= 0.9

    [labels.insult]
    threshold = "max_f1"                     # the default: the cut with the best F1

    [labels.scam]
    description = "Advance-fee and phishing messages"
    threshold = { fixed = 0.7 }              # this cut, whatever validation says

Rules, each checked by pydantic v2 (strict: no string-to-number or bool-to-number
coercion) and reported with its path (`labels.threat.threshold.target_precision: …`):
- `labels` is required, with 1 to `MAX_LABELS` (64) entries, each named by
  `model.label_names`' rule; the file's order is the model's label order.
- `description`: optional text, at most 1,000 characters.
- `threshold`: `"max_f1"`, `{ target_precision = P }` or `{ fixed = T }`, P and T in
  (0, 1] and finite (TOML's `nan` and `inf` are refused); exactly one of them.
- No other keys, at any level.
- The file is at most `MAX_SPEC_BYTES` (1 MiB) of UTF-8 (a leading byte order mark
  is skipped).
How a policy becomes a threshold: `model.threshold_policy`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.errors import ExitCode, ModstreamError
from model.label_names import MAX_LABELS, checked_label_keys

MAX_SPEC_BYTES = 1 << 20
MAX_DESCRIPTION_CHARS = 1000
PolicyKind = Literal["max_f1", "target_precision", "fixed"]
Probability = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
POLICY_FORMS = '"max_f1", { target_precision = P } or { fixed = T }'


class LabelSpecError(ModstreamError):
    """The label spec cannot be read or breaks a rule; the message names the field."""

    exit_code = ExitCode.USAGE


class ThresholdPolicy(BaseModel):
    """How one label's threshold is chosen: exactly one field is set."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_f1: Literal[True] | None = None
    target_precision: Probability | None = None
    fixed: Probability | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        if data == "max_f1":
            return {"max_f1": True}
        if isinstance(data, str):
            raise ValueError(f"must be {POLICY_FORMS}, got {data[:40]!r}")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> ThresholdPolicy:
        given = [v for v in (self.max_f1, self.target_precision, self.fixed) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {POLICY_FORMS}")
        return self

    @classmethod
    def best_f1(cls) -> ThresholdPolicy:
        return cls(max_f1=True)

    @property
    def kind(self) -> PolicyKind:
        if self.target_precision is not None:
            return "target_precision"
        return "fixed" if self.fixed is not None else "max_f1"

    def describe(self) -> str:
        """`max_f1`, `target_precision 0.9` or `fixed 0.7`."""
        if self.target_precision is not None:
            return f"target_precision {self.target_precision:g}"
        if self.fixed is not None:
            return f"fixed {self.fixed:g}"
        return "max_f1"


class LabelEntry(BaseModel):
    """One label of the spec."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    description: Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)] = ""
    threshold: ThresholdPolicy = Field(default_factory=ThresholdPolicy.best_f1)


class LabelSpec(BaseModel):
    """The whole spec (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    labels: Annotated[dict[str, LabelEntry], Field(min_length=1, max_length=MAX_LABELS)]

    @field_validator("labels", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return checked_label_keys(value)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.labels)

    def policies(self) -> dict[str, ThresholdPolicy]:
        return {name: entry.threshold for name, entry in self.labels.items()}


def parse_label_spec(text: str, source: str = "label spec") -> LabelSpec:
    """A `LabelSpec` from TOML text; `LabelSpecError` naming `source` and each field."""
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        raise LabelSpecError(f"{source}: not TOML: {e}") from None
    try:
        return LabelSpec.model_validate(data)
    except ValidationError as e:
        raise LabelSpecError(f"{source}: {validation_problems(e)}") from None


def load_label_spec(path: str | Path) -> LabelSpec:
    """`parse_label_spec` on a file of at most `MAX_SPEC_BYTES` of UTF-8."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise LabelSpecError(f"{path}: cannot read the label spec: {e.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise LabelSpecError(f"{path}: over {MAX_SPEC_BYTES} bytes; a label spec is small")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabelSpecError(f"{path}: not UTF-8 (byte {e.start + 1})") from None
    return parse_label_spec(text, str(path))


def validation_problems(error: ValidationError, limit: int = 10) -> str:
    """pydantic's errors as `path.to.field: message`, joined by `; `, at most `limit`."""
    problems = []
    for item in error.errors(include_url=False)[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    more = error.error_count() - limit
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
