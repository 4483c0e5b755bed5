"""Checkpoints are data with size limits: an oversized file is refused before parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

import model.checkpoint as checkpoint_module
from model.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointCorruptError, load_checkpoint
from tests.unit.test_model_checkpoint import build, save


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model, vocab = build()
    save(tmp_path / "ckpt", model, vocab)
    return tmp_path / "ckpt"


@pytest.mark.parametrize(
    ("limit", "file"), [("MAX_META_BYTES", META_FILE), ("MAX_WEIGHTS_BYTES", WEIGHTS_FILE)]
)
def test_files_over_the_limit_are_refused(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, limit: str, file: str
) -> None:
    size = (checkpoint / file).stat().st_size
    load_checkpoint(checkpoint)  # fine at the real limits
    monkeypatch.setattr(checkpoint_module, limit, size - 1)
    with pytest.raises(CheckpointCorruptError, match=rf"{file}.*larger than the {size - 1} byte"):
        load_checkpoint(checkpoint)


def test_limits_are_generous_but_bounded() -> None:
    assert checkpoint_module.MAX_META_BYTES <= 64 << 20
    assert checkpoint_module.MAX_WEIGHTS_BYTES <= 1 << 30
