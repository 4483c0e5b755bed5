"""model/refresh.py: the retrain job's decision against the serving model, branch by branch
(training is replaced by writing a small fixed checkpoint: the decision is under test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model.build import RetrainReport
from model.checkpoint import WEIGHTS_FILE, load_checkpoint
from model.engine import Engine
from model.evaluation import evaluate, evaluation_examples
from model.gate import mean_auc
from model.refresh import refresh
from model.store import CheckpointStore
from tests.helpers import make_checkpoint, synthetic_config, synthetic_splits

CONFIG = synthetic_config(baseline=False, report=False)


class FixedTraining:
    """Stands in for `model.build.retrain`: writes the checkpoint of `seed` (the same
    seed gives the same version) and reports `auc` as its validation AUC."""

    def __init__(self, seed: int, auc: float = 0.8) -> None:
        self.seed, self.auc = seed, auc

    def __call__(self, output_dir: Path, *_: Any, **__: Any) -> RetrainReport:
        version = make_checkpoint(Path(output_dir), self.seed, auc=self.auc)
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


def test_a_serving_model_with_other_labels_holds_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changing what clients receive (the label set) is an operator's decision."""
    store, current = serving(tmp_path, seed=1, labels=("insult", "spam", "threat"))
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=2, auc=0.99))
    held = refresh(store, CONFIG, synthetic_splits())
    assert held.status == "held" and "label sets differ" in held.reason
    assert held.current_validation == {"insult": {}, "spam": {}, "threat": {}}
    assert store.current_version() == current
    assert held.version in [info.version for info in store.list()], "kept for a manual promote"

    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=3, auc=0.99))
    forced = refresh(store, CONFIG, synthetic_splits(), force=True)
    assert forced.status == "promoted"
    assert forced.reason.startswith("forced despite the gate: label sets differ")
    assert store.current_version() == forced.version


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
