"""Where checkpoints live: names and the default location, without importing torch.

`worker/setting_groups.py` needs the default checkpoint directory to describe its fields, and
every `modstream` command builds its parser from those fields. Importing torch costs
2.3 s of a `--help` (measured with `python -X importtime`), so these names live here
and `model.checkpoint` re-exports them.
"""

from __future__ import annotations

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
