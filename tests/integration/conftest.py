"""Fixtures for tests that run the worker: a small real checkpoint trained once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from model.build import retrain
from model.train import TrainConfig


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Trained on a slice of the real data in seconds; good enough to exercise the path."""
    directory = tmp_path_factory.mktemp("checkpoint") / "current"
    retrain(directory, TrainConfig.tiny(), lambda _line: None)
    yield directory
