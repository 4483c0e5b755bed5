"""model/refresh.py: the retrain job's decision against the serving model, branch by branch
(training is replaced by writing a small fixed checkpoint: the decision is under test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.build import RetrainReport
from model.checkpoint import WEIGHTS_FILE, load_checkpoint
from model.engine import Engine
from model.evaluation import evaluate, evaluation_examples
from model.gate import mean_auc
from model.metrics import roc_auc
from model.refresh import refresh
from model.store import CheckpointStore
from model.store_policy import set_policy
from tests.helpers import make_checkpoint, synthetic_config, synthetic_splits

CONFIG = synthetic_config(baseline=False, report=False)


class FixedTraining:
    """Stands in for `model.build.retrain`: writes the checkpoint of `seed` (the same
    seed gives the same version) and reports `auc` as its validation AUC."""

    def __init__(
        self, seed: int, auc: float = 0.8, labels: tuple[str, ...] = ("insult", "spam")
    ) -> None:
        self.seed, self.auc, self.labels = seed, auc, labels

    def __call__(self, output_dir: Path, *_: Any, **__: Any) -> RetrainReport:
        version = make_checkpoint(Path(output_dir), self.seed, self.labels, auc=self.auc)
        checkpoint = load_checkpoint(output_dir)
        return RetrainReport(
            output_dir=str(output_dir),
            version=version,
            labels=checkpoint.labels,
            thresholds=checkpoint.thresholds,
            validation={label: {"roc_auc": self.auc} for label in checkpoint.labels},
            test={},
            data_fingerprint="synthetic",
            best_epoch=1,
            train_seconds=0.0,
            total_seconds=0.0,
            config={},
        )


def serving(tmp_path: Path, seed: int, **checkpoint: Any) -> tuple[CheckpointStore, str]:
    store = CheckpointStore(tmp_path / "store")
    make_checkpoint(tmp_path / f"serving-{seed}", seed, **checkpoint)
    version = store.add(tmp_path / f"serving-{seed}")
    store.promote(version)
    return store, version


def test_a_candidate_identical_to_the_serving_version_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, current = serving(tmp_path, seed=1)
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=1))
    outcome = refresh(store, CONFIG, synthetic_splits())
    assert outcome.status == "unchanged"
    assert outcome.version == outcome.previous == outcome.current == current
    assert "identical" in outcome.reason
    assert outcome.current_mean_auc == outcome.candidate_mean_auc
    assert store.current_version() == current
    assert [info.version for info in store.list()] == [current]


def test_an_unusable_serving_version_is_replaced_and_the_reason_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, current = serving(tmp_path, seed=1)
    weights = store.root / "versions" / current / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=2, auc=0.55))
    outcome = refresh(store, CONFIG, synthetic_splits())
    assert outcome.status == "promoted"
    assert outcome.reason.startswith("current checkpoint unusable (")
    assert outcome.current_mean_auc is None and outcome.current_validation is None
    assert outcome.previous == current and store.current_version() == outcome.version != current


def test_a_candidate_that_removes_a_label_holds_unless_allowed_or_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking a category away from clients is an operator's decision."""
    store, current = serving(tmp_path, seed=1, labels=("insult", "spam", "threat"))
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=2, auc=0.99))
    held = refresh(store, CONFIG, synthetic_splits())
    assert held.status == "held" and "removes threat" in held.reason
    assert "--allow-label-change" in held.reason
    validation = held.current_validation
    assert validation is not None and validation["threat"] == {}, "no data for it"
    assert {"roc_auc", "f1"} <= set(validation["insult"]), "the shared labels are measured"
    assert store.current_version() == current
    assert held.version in [info.version for info in store.list()], "kept for a manual promote"

    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=3, auc=0.99))
    allowed = refresh(store, CONFIG, synthetic_splits(), allow_label_change=True)
    assert allowed.status == "promoted", allowed.reason
    assert "over the shared labels" in allowed.reason and "removes threat" in allowed.reason
    assert store.history()[-1]["labels_removed"] == ["threat"]

    store.rollback()
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=4, auc=0.99))
    forced = refresh(store, CONFIG, synthetic_splits(), force=True)
    assert forced.status == "promoted"
    assert forced.reason.startswith("forced despite the gate: the candidate removes threat")
    assert store.current_version() == forced.version


def test_a_candidate_that_adds_a_label_is_gated_on_the_shared_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, current = serving(tmp_path, seed=1, labels=("insult",))
    splits = synthetic_splits()
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=2, auc=0.99))
    outcome = refresh(store, CONFIG, splits)
    assert outcome.status == "promoted", outcome.reason
    assert "adds spam" in outcome.reason and "shared labels ['insult']" in outcome.reason
    validation = outcome.current_validation
    assert validation is not None and set(validation) == {"insult"}
    # The serving model's only column, against the data's insult column (the first).
    engine = Engine.load(store.root / "versions" / current, device="cpu")
    known = [ex for ex in evaluation_examples(CONFIG, splits, "validation") if ex.mask[0]]
    scores = engine.score([ex.text for ex in known]).probabilities[:, 0]
    expected = roc_auc(np.array([ex.targets[0] for ex in known]), scores)
    assert validation["insult"]["roc_auc"] == pytest.approx(expected)
    assert outcome.current_mean_auc == pytest.approx(expected)
    assert store.history()[-1]["labels_added"] == ["spam"]


def test_a_candidate_the_store_policy_cannot_apply_to_is_held_even_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, current = serving(tmp_path, seed=1)
    set_policy(store.root, b'{"version": "p1", "thresholds": {"spam": 0.9}}', "p.json")
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=2, labels=("insult",)))
    outcome = refresh(store, CONFIG, synthetic_splits(), force=True, allow_label_change=True)
    assert outcome.status == "held"
    assert outcome.reason.startswith("policy p1 (policy.json) sets thresholds for spam")
    assert store.current_version() == current


def test_the_serving_model_is_measured_on_the_candidates_validation_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, current = serving(tmp_path, seed=1)
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=2, auc=0.2))
    splits = synthetic_splits()
    outcome = refresh(store, CONFIG, splits)
    engine = Engine.load(store.root / "versions" / current, device="cpu")
    expected = evaluate(
        engine, evaluation_examples(CONFIG, splits, "validation"), engine.thresholds
    )
    assert outcome.current_validation == expected
    assert outcome.current_mean_auc == pytest.approx(mean_auc(expected))
    assert outcome.status == "held" and store.current_version() == current
    assert "0.2000" in outcome.reason, "the candidate's own AUC, as reported by training"
