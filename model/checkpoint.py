"""Checkpoints: a directory holding `weights.safetensors` + `model.json`.

Why this shape:
- safetensors only, never pickle: a checkpoint is data, and loading one must not be
  able to run code.
- `version` is a content hash of the weights bytes and the metadata (minus the version
  field itself), so the version a worker reports identifies exactly what it scores
  with, and a weights file paired with the wrong `model.json` (e.g. read half-way
  through a swap) is detected instead of served.
- Saving (`model.checkpoint_save`) writes a complete sibling directory first and then
  renames it into place, so readers see the old checkpoint or the new one, never a mix.
- Fields of a removed feature (`RETIRED_CONFIG_FIELDS`) still load at the value that
  switched the feature off, since such a checkpoint describes exactly today's model;
  any other value is refused by name, never silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import torch
from safetensors.torch import load as load_safetensors

from model.errors import ExitCode, ModstreamError
from model.label_names import LabelNameError, check_label_names
from model.network import Classifier, ModelConfig
from model.paths import CHECKPOINT_DIR_ENV as CHECKPOINT_DIR_ENV
from model.paths import META_FILE as META_FILE
from model.paths import STORE_POINTER as STORE_POINTER
from model.paths import STORE_VERSIONS_DIR as STORE_VERSIONS_DIR
from model.paths import WEIGHTS_FILE as WEIGHTS_FILE
from model.paths import default_checkpoint_dir as default_checkpoint_dir
from model.paths import resolve_checkpoint_dir as resolve_checkpoint_dir
from model.tokenizer import SUPPORTED_TOKENIZER_VERSIONS, TOKENIZER_VERSION
from model.vocab import Vocab

FORMAT_VERSION = 1
MAX_WEIGHTS_BYTES = 1 << 30  # 1 GiB: far above any model this project trains
MAX_META_BYTES = 64 << 20  # 64 MiB: the vocabulary dominates; 20k tokens is ~300 KB
VERSION_CHARS = 12
# The wide path (a hashed n-gram bag whose linear logits added to the head's; README
# "What was tried", E10-E17) was removed from the code. Checkpoints written while it
# existed carry its fields in `config`, at these values when it was off.
RETIRED_CONFIG_FIELDS: Mapping[str, int | float] = MappingProxyType(
    {
        "wide_buckets": 0,
        "wide_word_max_n": 2,
        "wide_char_min_n": 2,
        "wide_char_max_n": 5,
        "wide_dropout": 0.0,
    }
)


class CheckpointError(ModstreamError):
    exit_code = ExitCode.CHECKPOINT

    """Base class: any checkpoint that cannot be served."""


class CheckpointMissingError(CheckpointError):
    """The directory or one of its files does not exist."""


class CheckpointCorruptError(CheckpointError):
    """The files exist but are unreadable, inconsistent or fail validation."""


class CheckpointVersionError(CheckpointError):
    """Written by an incompatible format or tokenizer version."""


class RetiredFeatureError(CheckpointVersionError):
    """The config switches on a feature this code no longer has (a field of
    `RETIRED_CONFIG_FIELDS` at any value but its off one)."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: Classifier  # on CPU, eval mode
    config: ModelConfig
    vocab: Vocab
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    metrics: dict[str, Any]
    data_fingerprint: str
    created_at: str
    version: str
    path: Path
    tokenizer: str = TOKENIZER_VERSION  # what it was trained with (model.tokenizer)


def compute_version(weights: bytes, meta: Mapping[str, Any]) -> str:
    """Hash of the exact weights bytes and the canonical JSON of `meta` minus `version`."""
    body = {k: v for k, v in meta.items() if k != "version"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(weights).digest())
    digest.update(canonical.encode("utf-8"))
    return digest.hexdigest()[:VERSION_CHARS]


# ---------------------------------------------------------------------------- loading


def load_checkpoint(directory: str | Path) -> LoadedCheckpoint:
    """Validate everything before building the model; never unpickles.

    `directory` may also be a checkpoint store root or its `current` pointer
    (see `resolve_checkpoint_dir`); `LoadedCheckpoint.path` is the resolved directory.
    """
    path = resolve_checkpoint_dir(directory)
    if not path.is_dir():
        raise CheckpointMissingError(f"checkpoint directory {path} does not exist")
    weights = _read_limited(path / WEIGHTS_FILE, MAX_WEIGHTS_BYTES)
    meta_bytes = _read_limited(path / META_FILE, MAX_META_BYTES)

    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorruptError(f"{path / META_FILE} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointCorruptError(f"{path / META_FILE} must hold a JSON object")
    fields = _MetaReader(meta, path / META_FILE)

    format_version = fields.get("format_version", int)
    if format_version != FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{path}: format_version {format_version} is not supported (expected {FORMAT_VERSION})"
        )
    tokenizer = fields.get("tokenizer", str)
    if tokenizer not in SUPPORTED_TOKENIZER_VERSIONS:
        raise CheckpointVersionError(
            f"{path}: trained with tokenizer {tokenizer!r}, this code reads "
            f"{', '.join(SUPPORTED_TOKENIZER_VERSIONS)}"
        )
    version = fields.get("version", str)
    config = fields.parse(
        "config", dict, lambda raw: ModelConfig.from_dict(_without_retired(raw, path / META_FILE))
    )
    vocab = fields.parse("vocab", dict, Vocab.from_dict)
    labels = tuple(fields.get("labels", list))
    thresholds_raw = fields.get("thresholds", dict)
    metrics = fields.get("metrics", dict)
    data_fingerprint = fields.get("data_fingerprint", str)
    created_at = fields.get("created_at", str)

    try:  # any label set the naming rule allows, in any order (model.label_names)
        check_label_names(labels, "")
    except LabelNameError as e:
        fields.fail("labels", f"is invalid{e}")
    if len(labels) != config.num_labels:
        fields.fail(
            "labels", f"has {len(labels)} entries but config.num_labels={config.num_labels}"
        )
    if len(vocab) != config.vocab_size:
        fields.fail("vocab", f"has {len(vocab)} tokens but config.vocab_size={config.vocab_size}")
    if set(thresholds_raw) != set(labels):
        fields.fail("thresholds", f"keys {sorted(thresholds_raw)} must equal labels {list(labels)}")
    thresholds: dict[str, float] = {}
    for label in labels:
        value = thresholds_raw[label]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            fields.fail(f"thresholds.{label}", f"must be a number in [0, 1], got {value!r}")
        thresholds[label] = float(value)

    try:
        tensors = load_safetensors(weights)
    except Exception as e:  # the Rust parser raises its own exception type
        raise CheckpointCorruptError(
            f"{path / WEIGHTS_FILE} is not a valid safetensors file: {e}"
        ) from e
    model = Classifier(config)
    _check_tensors(tensors, model.state_dict(), path / WEIGHTS_FILE)

    expected_version = compute_version(weights, meta)
    if version != expected_version:
        raise CheckpointCorruptError(
            f"{path}: version field {version!r} does not match content hash {expected_version!r}"
            " (files modified or mixed from two checkpoints)"
        )

    model.load_state_dict(tensors, strict=True)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedCheckpoint(
        model=model,
        config=config,
        vocab=vocab,
        labels=labels,
        thresholds=thresholds,
        metrics=metrics,
        data_fingerprint=data_fingerprint,
        created_at=created_at,
        version=version,
        path=path,
        tokenizer=tokenizer,
    )


def _without_retired(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """`config` minus the retired fields, each of which must hold its off value."""
    kept = dict(config)
    for name, off in RETIRED_CONFIG_FIELDS.items():
        if name not in kept:
            continue
        value = kept.pop(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != off:
            raise RetiredFeatureError(
                f"{where}: field 'config.{name}' is {value!r}, but the wide path it configures "
                f"was removed from this code; only {off!r} (off) loads. Retrain the model."
            )
    return kept


def _read_limited(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError as e:
        raise CheckpointMissingError(f"checkpoint file {path} does not exist") from e
    except OSError as e:
        raise CheckpointCorruptError(f"cannot read {path}: {e}") from e
    if len(data) > limit:
        raise CheckpointCorruptError(f"{path} is larger than the {limit} byte limit")
    if not data:
        raise CheckpointCorruptError(f"{path} is empty")
    return data


def _check_tensors(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], where: Path
) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointCorruptError(
            f"{where}: tensor names do not match the config (missing {missing}, unexpected "
            f"{unexpected})"
        )
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise CheckpointCorruptError(
                f"{where}: tensor {name!r} is {got.dtype}{list(got.shape)} but the config "
                f"needs {want.dtype}{list(want.shape)}"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            # A NaN or infinite weight makes every score NaN: refuse it here rather
            # than let results fail validation batch after batch.
            bad = int((~torch.isfinite(got)).sum())
            raise CheckpointCorruptError(
                f"{where}: tensor {name!r} holds {bad} NaN or infinite value(s)"
            )


class _MetaReader:
    """Typed field access whose errors name the file and the field."""

    def __init__(self, meta: dict[str, Any], where: Path) -> None:
        self.meta = meta
        self.where = where

    def fail(self, name: str, problem: str) -> NoReturn:
        raise CheckpointCorruptError(f"{self.where}: field {name!r} {problem}")

    def get(self, name: str, kind: type) -> Any:
        if name not in self.meta:
            self.fail(name, "is missing")
        value = self.meta[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(name, f"must be of type {kind.__name__}, got {type(value).__name__}")
        return value

    def parse(self, name: str, kind: type, parser: Any) -> Any:
        raw = self.get(name, kind)
        try:
            return parser(raw)
        except (ValueError, TypeError) as e:
            self.fail(name, f"is invalid: {e}")
