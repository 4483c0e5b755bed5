"""Measuring a model: thresholds, per-label metrics, and the examples measured on.

Every label is measured only on the examples that know it (insult comments vs SMS
spam, a user's rows that give the label), through `Engine`, so the numbers written
into a checkpoint are those of the code that serves it. A threshold per label is
chosen on validation by its policy (`model.threshold_policy`: max F1, the lowest cut
reaching a target precision, or a fixed value; `model.label_plan` says which label
gets which). The TF-IDF baseline (`model.baseline`) is measured on the same examples
the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from model.baseline import BaselineUnavailableError, fit_baseline
from model.data import DataSplits, Example
from model.engine import Engine
from model.label_spec import ThresholdPolicy
from model.metrics import best_f1_threshold, binary_metrics, precision_threshold, roc_auc
from model.progress import Progress
from model.report_data import Scored, SplitData
from model.threshold_policy import ChosenThreshold, choose_by_policy, thresholds_of
from model.training_data import label_arrays, subset

if TYPE_CHECKING:  # train_config.py imports this module
    from model.train_config import TrainConfig

EvalSplit = Literal["validation", "test"]
EVAL_SPLITS: tuple[EvalSplit, ...] = ("validation", "test")
_SEED_OFFSETS: dict[str, int] = {"validation": 1, "test": 2}  # the train subset uses the seed


def parse_target_precision(spec: str) -> dict[str, float]:
    """ "" → {}; "0.9" → {"*": 0.9}; "spam=0.98,insult=0.8" → per label."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        label, sep, value = part.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"target_precision: {part!r} is not LABEL=PRECISION") from None
        if not 0.0 < number <= 1.0:
            raise ValueError(f"target_precision: {number} must be in (0, 1]")
        out[label.strip() if sep else "*"] = number
    return out


def per_label_auc(
    probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    known = mask > 0
    return {
        label: roc_auc(targets[known[:, j], j], probabilities[known[:, j], j])
        for j, label in enumerate(labels)
    }


def mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def choose_thresholds(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    labels: Sequence[str],
    target_precision: dict[str, float] | None = None,
    notes: dict[str, str] | None = None,
) -> dict[str, float]:
    """Per label: max F1, or, where `target_precision` names the label (or "*"), the
    lowest cut whose validation precision reaches it (max F1 if none does). `notes`,
    if given, receives the rule applied per label. (`measure` chooses by policy,
    `model.threshold_policy.choose_by_policy`, which gives these same cuts.)"""
    known = mask > 0
    wanted = target_precision or {}
    thresholds: dict[str, float] = {}
    for j, label in enumerate(labels):
        y, p = targets[known[:, j], j], probabilities[known[:, j], j]
        goal = wanted.get(label, wanted.get("*"))
        cut = precision_threshold(y, p, goal) if goal is not None else None
        if cut is not None:
            thresholds[label] = cut
            rule = f"precision>={goal:g}"
        else:
            thresholds[label] = best_f1_threshold(y, p)
            rule = "max_f1" if goal is None else f"max_f1 (precision {goal:g} unreachable)"
        if notes is not None:
            notes[label] = rule
    return thresholds


def evaluate(
    engine: Engine, examples: Sequence[Example], thresholds: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per-label metrics, computed on the examples that know the label."""
    probabilities = engine.score([ex.text for ex in examples]).probabilities
    targets, mask = label_arrays(examples)
    return metrics_from_scores(probabilities, targets, mask, engine.labels, thresholds)


def metrics_from_scores(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    labels: Sequence[str],
    thresholds: dict[str, float],
) -> dict[str, dict[str, Any]]:
    known = mask > 0
    return {
        label: binary_metrics(
            targets[known[:, j], j], probabilities[known[:, j], j], thresholds[label]
        )
        for j, label in enumerate(labels)
    }


def masked_log_loss(probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean binary log loss over known entries (the validation curve beside train loss)."""
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    losses = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    known = mask > 0
    return float(losses[known].mean()) if known.any() else math.nan


def evaluation_examples(config: TrainConfig, splits: DataSplits, split: EvalSplit) -> list[Example]:
    """The examples of `split` a run measures on: all of them, or `config.eval_limit`
    picked at random with a seed of their own. Early stopping, the checkpoint's
    metrics and the promotion gate (which measures the serving model on the
    candidate's validation examples) all call this, so they see the same data."""
    examples = splits.validation if split == "validation" else splits.test
    return subset(examples, config.eval_limit, config.seed + _SEED_OFFSETS[split])


Metrics = dict[str, dict[str, Any]]  # label → metrics (`model.metrics.binary_metrics`)


@dataclass(frozen=True)
class EvaluationSet:
    """The evaluation splits (`evaluation_examples`), as texts and label arrays."""

    examples: dict[str, list[Example]]  # split → examples
    texts: dict[str, list[str]]
    data: dict[str, SplitData]

    @classmethod
    def of(cls, config: TrainConfig, splits: DataSplits) -> EvaluationSet:
        examples: dict[str, list[Example]] = {
            name: evaluation_examples(config, splits, name) for name in EVAL_SPLITS
        }
        return cls(
            examples=examples,
            texts={name: [ex.text for ex in part] for name, part in examples.items()},
            data={
                name: SplitData(*label_arrays(part), [ex.source for ex in part])
                for name, part in examples.items()
            },
        )


@dataclass(frozen=True)
class Measured:
    """One model on the evaluation splits, with thresholds chosen on validation."""

    chosen: dict[str, ChosenThreshold]  # label → threshold, rule, policy, support
    scored: dict[str, Scored]  # split → probabilities and thresholds (for the report)
    metrics: dict[str, Metrics]  # split → label → metrics

    @property
    def thresholds(self) -> dict[str, float]:
        return thresholds_of(self.chosen)


def measure(
    probabilities: Mapping[str, np.ndarray],
    evaluation: EvaluationSet,
    labels: Sequence[str],
    policies: Mapping[str, ThresholdPolicy],
) -> Measured:
    """Thresholds on validation by each label's policy (`choose_by_policy`; none:
    max F1), then every split's metrics at those thresholds."""
    val = evaluation.data["validation"]
    chosen = choose_by_policy(probabilities["validation"], val.targets, val.mask, labels, policies)
    thresholds = thresholds_of(chosen)
    return Measured(
        chosen=chosen,
        scored={name: Scored(p, thresholds) for name, p in probabilities.items()},
        metrics={
            name: metrics_from_scores(probabilities[name], d.targets, d.mask, labels, thresholds)
            for name, d in evaluation.data.items()
        },
    )


@dataclass(frozen=True)
class BaselineMeasured:
    name: str
    seconds: float  # fitting time
    measured: Measured
    predict: Callable[[Sequence[str]], np.ndarray]  # texts → [n, labels] probabilities


def measure_baseline(
    train_examples: Sequence[Example],
    evaluation: EvaluationSet,
    labels: Sequence[str],
    policies: Mapping[str, ThresholdPolicy],
    seed: int,
    progress: Progress,
) -> BaselineMeasured | None:
    """The TF-IDF baseline fitted on `train_examples` and measured like the LSTM;
    None (with a line saying why) without scikit-learn."""
    try:
        baseline = fit_baseline(train_examples, labels, seed)
    except BaselineUnavailableError as e:
        progress(f"baseline: skipped ({e})")
        return None
    probabilities = {name: baseline.predict(texts) for name, texts in evaluation.texts.items()}
    return BaselineMeasured(
        baseline.name,
        baseline.seconds,
        measure(probabilities, evaluation, labels, policies),
        baseline.predict,
    )
