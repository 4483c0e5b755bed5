from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from model.build import retrain
from model.checkpoint import load_checkpoint
from model.data import (
    LABELS,
    SOURCE_INSULTS,
    SOURCE_SMS,
    DataNotFoundError,
    DataSplits,
    Example,
    load_splits,
)
from model.engine import Engine
from model.metrics import best_f1_threshold, precision_recall_f1, roc_auc
from model.train import TrainConfig, train
from model.training_data import length_bucketed_batches

# ------------------------------------------------------------------------- metrics


def brute_force_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[targets == 1], scores[targets == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.3 * targets, 1)  # rounding creates ties
    assert roc_auc(targets, scores) == pytest.approx(brute_force_auc(targets, scores))


def test_roc_auc_edge_cases() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_threshold_is_optimal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 80)
    scores = np.round(rng.random(80) * 0.7 + 0.3 * targets, 2)
    threshold = best_f1_threshold(targets, scores)
    best_possible = max(precision_recall_f1(targets, scores, t)[2] for t in np.unique(scores))
    assert precision_recall_f1(targets, scores, threshold)[2] == pytest.approx(best_possible)


def test_best_f1_threshold_separable_and_degenerate() -> None:
    threshold = best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.7, 0.9]))
    assert 0.3 < threshold <= 0.7  # midway between the classes
    assert best_f1_threshold(np.array([0, 0]), np.array([0.1, 0.2])) == 0.5


# ------------------------------------------------------------------------ batching


def test_batches_cover_every_example_once_and_are_seeded() -> None:
    lengths = np.random.default_rng(0).integers(1, 200, 1000)
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(3))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(1 <= len(b) <= 32 for b in batches)
    again = length_bucketed_batches(lengths, 32, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    # Bucketing keeps padding small compared with random batches.
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 1.2 * lengths.sum()


# ------------------------------------------------------------------------ training


FILLER = "the a of to and we you it is was on for with this that"
SOURCES = {"insult": SOURCE_INSULTS, "spam": SOURCE_SMS}


def synthetic_splits(seed: int = 0) -> DataSplits:
    """A learnable toy corpus, so training is tested even without the data packages."""
    rng = random.Random(seed)
    filler = FILLER.split()

    def make(label: str, positive: bool) -> Example:
        words = [rng.choice(filler) for _ in range(rng.randint(0, 12))]
        if positive:
            words.insert(rng.randint(0, len(words)), "idiot" if label == "insult" else "prize")
        i = LABELS.index(label)
        targets = tuple(float(positive) if j == i else 0.0 for j in range(len(LABELS)))
        mask = tuple(1.0 if j == i else 0.0 for j in range(len(LABELS)))
        return Example(" ".join(words), targets, mask, SOURCES[label])

    def split(n: int) -> list[Example]:
        return [make(rng.choice(LABELS), rng.random() < 0.4) for _ in range(n)]

    return DataSplits(split(300), split(80), split(80), fingerprint="synthetic")


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9}])
def test_training_is_deterministic_with_a_seed(extra: dict[str, float]) -> None:
    splits = synthetic_splits()
    config = TrainConfig.tiny(limit=120, epochs=2, min_freq=1, **extra)
    first, second = train(config, splits), train(config, splits)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name

    def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert without_timing(first.history) == without_timing(second.history)


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
