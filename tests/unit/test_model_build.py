"""model/build.py: retrain end to end (evaluate, save, verify) and its reproducibility."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.build import retrain
from model.checkpoint import load_checkpoint
from model.data import LABELS, DataNotFoundError, load_splits
from model.engine import Engine
from model.train_config import TrainConfig
from tests.helpers import synthetic_config, synthetic_splits


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9}])
def test_retrain_on_synthetic_data_learns_and_writes_a_checkpoint(
    tmp_path: Path, extra: dict[str, float]
) -> None:
    config = TrainConfig.tiny(epochs=6, min_freq=1, eval_limit=None, limit=None, lr=0.01, **extra)
    lines: list[str] = []
    report = retrain(tmp_path / "ckpt", config, lines.append, splits=synthetic_splits())
    assert any("epoch 1/" in line for line in lines)
    for label in LABELS:
        assert report.validation[label]["roc_auc"] > 0.9
        assert 0.0 <= report.thresholds[label] <= 1.0
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.version == report.version
    assert loaded.data_fingerprint == "synthetic"
    assert loaded.metrics["test"]["spam"]["roc_auc"] == pytest.approx(
        report.test["spam"]["roc_auc"]
    )
    engine = Engine.load(tmp_path / "ckpt", device="cpu")
    probabilities = engine.score(["you idiot", "win a prize", "the a of"]).probabilities
    assert probabilities[0, 0] > probabilities[2, 0]
    assert probabilities[1, 1] > probabilities[2, 1]


def test_tiny_run_on_real_data(tmp_path: Path) -> None:
    """The config other test suites use for throw-away checkpoints."""
    try:
        splits = load_splits()
    except DataNotFoundError as e:
        pytest.skip(f"training data not installed: {e}")
    report = retrain(tmp_path / "current", TrainConfig.tiny(), lambda _line: None, splits)
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["version"] == report.version
    for split in (report.validation, report.test):
        for label in LABELS:
            metrics = split[label]
            assert metrics["examples"] > 0
            for name in ("roc_auc", "f1", "precision", "recall"):
                assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 1.0
    loaded = load_checkpoint(tmp_path / "current")
    assert loaded.data_fingerprint == splits.fingerprint
    assert loaded.labels == LABELS
    assert Engine.load(tmp_path / "current", device="cpu").version == report.version


def test_same_seed_gives_the_same_metrics(tmp_path: Path) -> None:
    config = synthetic_config(baseline=False, report=False)
    first = retrain(tmp_path / "a", config, lambda _: None, synthetic_splits())
    second = retrain(tmp_path / "b", config, lambda _: None, synthetic_splits())
    for split in ("validation", "test"):
        for label in LABELS:
            a = getattr(first, split)[label]
            b = getattr(second, split)[label]
            for name in ("roc_auc", "f1", "precision", "recall", "threshold"):
                assert abs(a[name] - b[name]) <= 0.002, (split, label, name)
    texts = ["you idiot", "win a prize", "the a of"]
    a_scores = Engine.load(tmp_path / "a", device="cpu").score(texts).probabilities
    b_scores = Engine.load(tmp_path / "b", device="cpu").score(texts).probabilities
    np.testing.assert_allclose(a_scores, b_scores, atol=1e-6)
