"""Where checkpoints live: names, the default location, which directory a path names
and the version it holds, without importing torch.

`worker/setting_groups.py` needs the default checkpoint directory to describe its fields, and
every `modstream` command builds its parser from those fields. Importing torch costs
2.3 s of a `--help` (measured with `python -X importtime`), so these names live here
and `model.checkpoint` (`model.store` for `peek_version`) re-exports them: a worker
whose model runs in its scoring process never imports torch (worker/scoring_process.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CHECKPOINT_DIR_ENV = "MODSTREAM_CHECKPOINT_DIR"
# A checkpoint store (model/store.py) is a root holding `versions/<version>/` and a
# `current` symlink to the serving one; loaders accept the root wherever a checkpoint
# directory is expected.
STORE_VERSIONS_DIR = "versions"
STORE_POINTER = "current"
META_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"


def default_checkpoint_dir() -> Path:
    """`$MODSTREAM_CHECKPOINT_DIR`, else `checkpoints/current` under the repo root.

    The repo root is used when running from a source checkout (a `pyproject.toml` sits
    beside this package); an installed package falls back to the working directory.
    `checkpoints/` is the default checkpoint store and `current` its pointer, so this
    path always names the serving checkpoint (a plain directory works too).
    """
    env = os.environ.get(CHECKPOINT_DIR_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return base / "checkpoints" / "current"


def resolve_checkpoint_dir(directory: str | Path) -> Path:
    """The concrete checkpoint directory that `directory` designates.

    A store root resolves through its `current` pointer (a link, or the plain directory
    older releases wrote there); a symlink (such as the pointer
    itself) resolves to its target, once, so that both files are then read from the
    same immutable version directory even if the pointer moves meanwhile. A plain
    checkpoint directory is returned unchanged.
    """
    path = Path(directory)
    if not (path / META_FILE).exists() and (path / STORE_POINTER).exists():
        path = path / STORE_POINTER  # a store root, or one holding a plain `current/`
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def peek_version(directory: str | Path) -> str | None:
    """The `version` field of a checkpoint's model.json, or None if unreadable.

    Cheap compared with `load_checkpoint` (no weights, no validation): for listings and
    change detection, never for deciding what to serve.
    """
    try:
        meta = json.loads((Path(directory) / META_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    version = meta.get("version") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None
