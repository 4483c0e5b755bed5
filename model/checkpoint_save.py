"""Writing a checkpoint: `save_checkpoint` (the format is `model.checkpoint`).

Why its own module: only retraining writes checkpoints, while every worker reads them;
the write protocol (stage, sync, rename) is kept apart from the reading and its checks.

Saving writes a complete sibling directory first and then renames it into place, so
readers see the old checkpoint or the new one, never a mix. Extra files (the evaluation
report under `report/`) are written into the same staging directory, so they always
describe the weights beside them; they are not hashed into `version` and loading never
reads them. Replacing an existing directory takes two renames (old aside, new in); a
reader that hits the instant in between gets `CheckpointMissingError` and may simply
retry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safetensors.torch import save as save_safetensors

from model.checkpoint import (
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    compute_version,
)
from model.durable import fsync_dir, write_synced
from model.jsonsafe import json_safe
from model.network import Classifier
from model.tokenizer import TOKENIZER_VERSION
from model.vocab import Vocab


def save_checkpoint(
    directory: str | Path,
    model: Classifier,
    vocab: Vocab,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    metrics: Mapping[str, Any] | None = None,
    data_fingerprint: str = "",
    created_at: str | None = None,
    extra_files: Callable[[str, str], Mapping[str, bytes]] | None = None,
) -> str:
    """Atomically write (or replace) the checkpoint at `directory`; returns its version.

    `extra_files(version, created_at)` may return more files (relative path → bytes) to
    write beside the two checkpoint files, e.g. an evaluation report naming the version.
    """
    target = Path(directory)
    labels = tuple(labels)
    if len(labels) != model.config.num_labels:
        raise ValueError(f"{len(labels)} labels for a model with {model.config.num_labels}")
    if set(thresholds) != set(labels):
        raise ValueError(f"thresholds must cover exactly the labels {labels}")
    if len(vocab) != model.config.vocab_size:
        raise ValueError(f"vocab has {len(vocab)} tokens, model expects {model.config.vocab_size}")

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = save_safetensors(tensors)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "tokenizer": TOKENIZER_VERSION,
        "config": model.config.to_dict(),
        "labels": list(labels),
        "thresholds": {label: float(thresholds[label]) for label in labels},
        "metrics": json_safe(dict(metrics or {})),
        "data_fingerprint": data_fingerprint,
        "created_at": created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        "vocab": vocab.to_dict(),
    }
    version = compute_version(weights, meta)
    meta_bytes = json.dumps({"version": version, **meta}, indent=1, allow_nan=False) + "\n"

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the checkpoint from other users
        write_synced(staging / WEIGHTS_FILE, weights)
        write_synced(staging / META_FILE, meta_bytes.encode("utf-8"))
        if extra_files is not None:
            _write_extra(staging, extra_files(version, meta["created_at"]))
        fsync_dir(staging)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return version


def _write_extra(staging: Path, files: Mapping[str, bytes]) -> None:
    for name, data in files.items():
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"extra checkpoint file {name!r} must be a relative path inside")
        if relative.parts[0] in (WEIGHTS_FILE, META_FILE):
            raise ValueError(f"extra checkpoint file {name!r} would replace a checkpoint file")
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o755)
        write_synced(path, data)


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists() and not target.is_symlink():
        os.rename(staging, target)
        return
    if not target.is_dir():
        raise CheckpointError(f"{target} exists and is not a directory; refusing to replace")
    aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
