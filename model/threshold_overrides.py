"""Thresholds changed without retraining: `MODSTREAM_THRESHOLDS` and policy files.

Two sources, both parsed and checked here (this module knows nothing of Kafka or of
how a worker watches the store):

1. `MODSTREAM_THRESHOLDS=insult=0.8,spam=0.95`: `LABEL=VALUE` pairs joined by commas;
   spaces around either are ignored, and so are empty pairs (a trailing comma); VALUE
   is a plain decimal (`0.8`, `.8`, `1`, `8e-1`) in (0, 1] (0 would flag everything);
   a label may appear once; at most `MAX_OVERRIDES_CHARS` (8,192) characters, room for
   64 labels of 32 characters at full precision.
2. A policy file (JSON, at most `MAX_POLICY_BYTES`, 64 KiB), such as the checkpoint
   store's `POLICY_FILE_NAME`:

       {"version": "2024-06-strict", "description": "…",
        "thresholds": {"insult": 0.8, "spam": 0.95}}

   `version` (1 to 64 of letters, digits, `.`, `_`, `-`, starting with a letter or
   digit; `checkpoint` and `env-…` are reserved for `policy_version` below) names the
   policy in each result; `thresholds` may be empty (back to the checkpoint's own),
   names labels by `model.label_names`' rule, values as in 1. Strict JSON: `NaN`,
   `Infinity`, a repeated key, an unknown field, a string for a number are errors.

A label neither source names keeps the checkpoint's threshold. Both must name only
the checkpoint's labels (`check_override_labels`): an override for a label the model
lacks does nothing and is almost certainly a typo or a stale policy.

Precedence, per label: `MODSTREAM_THRESHOLDS` > policy file > checkpoint. The
environment is the operator's pin for one deployment; the policy file is the team's
shared setting that changes while workers run. `EffectiveThresholds.policy_version`
says which applied, for each result: `checkpoint` (neither), the file's `version`,
`env-<8 hex>` (a digest of the overrides, so two deployments with different pins
differ), or `<version>+env-<8 hex>` (both).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.errors import ExitCode, ModstreamError
from model.label_names import MAX_LABELS, checked_label_keys, label_name_problem
from model.label_spec import Probability, validation_problems
from model.strict_json import STRICT_DECODER

THRESHOLDS_ENV = "MODSTREAM_THRESHOLDS"
POLICY_FILE_NAME = "policy.json"
MAX_OVERRIDES_CHARS = 8192
MAX_POLICY_BYTES = 64 << 10
CHECKPOINT_POLICY = "checkpoint"  # policy_version when nothing overrides the checkpoint
_ENV_PREFIX = "env-"
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ThresholdOverrideError(ModstreamError):
    """`MODSTREAM_THRESHOLDS` cannot be parsed or breaks a rule."""

    exit_code = ExitCode.USAGE


class UnknownOverrideLabelError(ThresholdOverrideError):
    """An override names a label the checkpoint does not have."""


class PolicyFileError(ModstreamError):
    """A policy file cannot be read or breaks a rule (it lives in the store)."""

    exit_code = ExitCode.CHECKPOINT


def parse_threshold_overrides(text: str, source: str = THRESHOLDS_ENV) -> dict[str, float]:
    """`insult=0.8,spam=0.95` → `{"insult": 0.8, "spam": 0.95}` (rule 1 of the module
    docstring); `ThresholdOverrideError` naming `source` and the pair."""
    if len(text) > MAX_OVERRIDES_CHARS:
        raise ThresholdOverrideError(f"{source}: over {MAX_OVERRIDES_CHARS} characters")
    overrides: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        label, sep, value = (x.strip() for x in part.partition("="))
        shown = part if len(part) <= 60 else part[:60] + "…"
        if not sep:
            raise ThresholdOverrideError(f"{source}: {shown!r} is not LABEL=THRESHOLD")
        why = label_name_problem(label)
        if why is not None:
            raise ThresholdOverrideError(f"{source}: {why}")
        if label in overrides:
            raise ThresholdOverrideError(f"{source}: {label!r} is given twice")
        if _NUMBER.fullmatch(value) is None:
            raise ThresholdOverrideError(f"{source}: {label}: {value[:40]!r} is not a number")
        number = float(value)
        if not 0.0 < number <= 1.0:
            raise ThresholdOverrideError(f"{source}: {label}: {value} must be in (0, 1]")
        overrides[label] = number
    if len(overrides) > MAX_LABELS:
        raise ThresholdOverrideError(f"{source}: {len(overrides)} labels, at most {MAX_LABELS}")
    return overrides


def check_override_labels(
    overrides: Mapping[str, float], labels: Sequence[str], source: str
) -> None:
    """`UnknownOverrideLabelError` when `overrides` name a label outside `labels`."""
    unknown = sorted(set(overrides) - set(labels))
    if unknown:
        raise UnknownOverrideLabelError(
            f"{source}: {', '.join(unknown)} not among the checkpoint's labels "
            f"({', '.join(labels)})"
        )


class ThresholdPolicyFile(BaseModel):
    """A policy file (rule 2 of the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    version: Annotated[str, Field(pattern=_VERSION)]
    description: Annotated[str, Field(max_length=1000)] = ""
    thresholds: Annotated[dict[str, Probability], Field(max_length=MAX_LABELS)]

    @field_validator("version")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == CHECKPOINT_POLICY or value.startswith(_ENV_PREFIX):
            raise ValueError(f"{value!r} is reserved")
        return value

    @field_validator("thresholds", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return checked_label_keys(value)


def parse_policy_file(data: bytes, source: str) -> ThresholdPolicyFile:
    """A `ThresholdPolicyFile` from a file's bytes; `PolicyFileError` naming `source`
    and the field."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyFileError(f"{source}: over {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise PolicyFileError(f"{source}: not UTF-8 (byte {e.start + 1})") from None
    try:
        value = STRICT_DECODER.decode(text)
    except RecursionError:
        raise PolicyFileError(f"{source}: not JSON: nested too deeply") from None
    except ValueError as e:
        raise PolicyFileError(f"{source}: not JSON: {e}") from None
    try:
        return ThresholdPolicyFile.model_validate(value)
    except ValidationError as e:
        raise PolicyFileError(f"{source}: {validation_problems(e)}") from None


def load_policy_file(path: str | Path) -> ThresholdPolicyFile:
    """`parse_policy_file` on a file, reading at most `MAX_POLICY_BYTES` + 1 bytes."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyFileError(f"{path}: cannot read the policy file: {e.strerror}") from None
    return parse_policy_file(data, str(path))


@dataclass(frozen=True)
class EffectiveThresholds:
    """The thresholds a worker applies, and what set each one."""

    thresholds: dict[str, float]  # label → threshold, in the checkpoint's label order
    policy_version: str  # recorded in each result (module docstring)
    sources: dict[str, str]  # label → "checkpoint", "policy <version>" or THRESHOLDS_ENV


def effective_thresholds(
    checkpoint: Mapping[str, float],
    labels: Sequence[str],
    policy: ThresholdPolicyFile | None = None,
    env: Mapping[str, float] | None = None,
) -> EffectiveThresholds:
    """The checkpoint's thresholds with the policy file's, then the environment's, on
    top; `UnknownOverrideLabelError` (policy or environment) for a label not in
    `labels`."""
    env = env or {}
    if policy is not None:
        check_override_labels(policy.thresholds, labels, f"policy {policy.version}")
    check_override_labels(env, labels, THRESHOLDS_ENV)
    thresholds: dict[str, float] = {}
    sources: dict[str, str] = {}
    for label in labels:
        if label in env:
            thresholds[label], sources[label] = env[label], THRESHOLDS_ENV
        elif policy is not None and label in policy.thresholds:
            thresholds[label] = policy.thresholds[label]
            sources[label] = f"policy {policy.version}"
        else:
            thresholds[label], sources[label] = float(checkpoint[label]), CHECKPOINT_POLICY
    return EffectiveThresholds(thresholds, policy_version(policy, env), sources)


def policy_version(policy: ThresholdPolicyFile | None, env: Mapping[str, float]) -> str:
    """`checkpoint`, the file's version, `env-<8 hex>`, or `<version>+env-<8 hex>`."""
    parts = [policy.version] if policy is not None else []
    if env:
        canonical = ",".join(f"{label}={env[label]!r}" for label in sorted(env))
        parts.append(_ENV_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:8])
    return "+".join(parts) or CHECKPOINT_POLICY
