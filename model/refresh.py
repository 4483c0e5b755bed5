"""The periodic retrain job, Kafka-free: train a candidate, add it to the store, gate, promote.

1. Train on the given splits (plus extra examples, e.g. merged moderator feedback) and
   write the checkpoint inside the store, then add it as a version (a rename).
2. Measure the serving checkpoint on the very validation examples the candidate was
   measured on, through the same `Engine` path.
3. `model.gate.should_promote` decides (on the labels both models have: a candidate
   that removes or renames one is held unless `allow_label_change`, see
   `model.label_change`); promotion switches the store's pointer, and running workers
   pick the new version up on their next reload check. A held candidate stays in the
   store, listed, for an operator to promote by hand. A candidate the store's policy
   file cannot apply to (`model.store_policy`) is held whatever the gate says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from model.build import RetrainReport, retrain
from model.checkpoint import CheckpointError
from model.data import DataSplits, Example
from model.engine import Engine, EngineError
from model.evaluation import evaluation_examples, metrics_from_scores
from model.gate import DEFAULT_TOLERANCE, mean_auc, should_promote
from model.label_plan import LabelPlan
from model.progress import Progress, quiet
from model.store import CheckpointStore
from model.store_policy import policy_conflict, read_policy
from model.threshold_overrides import PolicyFileError
from model.train_config import TrainConfig
from model.training_data import label_arrays

Status = Literal["promoted", "held", "unchanged"]


@dataclass
class RefreshOutcome:
    status: Status
    version: str  # the candidate
    previous: str | None  # current before the job
    current: str | None  # current after the job
    reason: str
    tolerance: float
    candidate_mean_auc: float
    current_mean_auc: float | None
    report: RetrainReport
    current_validation: dict[str, dict[str, Any]] | None = None
    pruned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "version": self.version,
            "previous": self.previous,
            "current": self.current,
            "reason": self.reason,
            "tolerance": self.tolerance,
            "candidate_mean_auc": self.candidate_mean_auc,
            "current_mean_auc": self.current_mean_auc,
            "current_validation": self.current_validation,
            "pruned": self.pruned,
            "report": self.report.to_dict(),
        }


def refresh(
    store: CheckpointStore,
    config: TrainConfig,
    splits: DataSplits,
    extra_examples: list[Example] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    progress: Progress = quiet,
    plan: LabelPlan | None = None,
    allow_label_change: bool = False,
) -> RefreshOutcome:
    """Steps 1-3 of the module docstring (`plan`: `model.build.retrain`'s). Raises on
    training or store failures."""
    with store.incoming() as staging:
        report = retrain(staging, config, progress, splits, extra_examples or [], plan)
        version = store.add(staging, move=True)
    previous = store.current_version()
    candidate_auc = mean_auc(report.validation)
    if previous == version:
        return RefreshOutcome(
            status="unchanged",
            version=version,
            previous=previous,
            current=previous,
            reason="the candidate is identical to the current version",
            tolerance=tolerance,
            candidate_mean_auc=candidate_auc,
            current_mean_auc=candidate_auc,
            report=report,
        )

    current_metrics, problem = _measure_current(store, config, splits)
    promote, reason = should_promote(
        report.validation, current_metrics, tolerance, allow_label_change
    )
    if problem is not None and current_metrics is None:
        reason = f"{problem}; {reason}"
    if force and not promote:
        promote, reason = True, f"forced despite the gate: {reason}"
    conflict = _policy_problem(store, report.labels)
    if promote and conflict is not None:
        promote, reason = False, f"{conflict}; {reason}"
    progress(f"gate: {'promote' if promote else 'hold'}: {reason}")
    pruned: list[str] = []
    if promote:
        # The gate (or --force) has ruled on the label change already.
        change = store.promote(version, allow_label_change=True)
        pruned = list(change.pruned)
    return RefreshOutcome(
        status="promoted" if promote else "held",
        version=version,
        previous=previous,
        current=store.current_version(),
        reason=reason,
        tolerance=tolerance,
        candidate_mean_auc=candidate_auc,
        current_mean_auc=mean_auc(current_metrics) if current_metrics else None,
        report=report,
        current_validation=current_metrics,
        pruned=pruned,
    )


def _measure_current(
    store: CheckpointStore, config: TrainConfig, splits: DataSplits
) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """The serving model's validation metrics, or (None, why) when there is none to use."""
    current_dir = store.current_dir()
    if current_dir is None:
        return None, None
    try:
        engine = Engine.load(current_dir, device=config.device)
    except (CheckpointError, EngineError) as exc:
        return None, f"current checkpoint unusable ({exc})"
    # Measured on the labels the data has too; any other is left empty (the gate
    # compares the labels both models have).
    shared = [label for label in engine.labels if label in splits.labels]
    if not shared:
        return {label: {} for label in engine.labels}, None
    validation = evaluation_examples(config, splits, "validation")  # the candidate's
    probabilities = engine.score([ex.text for ex in validation]).probabilities
    targets, mask = label_arrays(validation)
    model_columns = [engine.labels.index(label) for label in shared]
    data_columns = [splits.labels.index(label) for label in shared]
    measured = metrics_from_scores(
        probabilities[:, model_columns],
        targets[:, data_columns],
        mask[:, data_columns],
        shared,
        engine.thresholds,
    )
    return {label: measured.get(label, {}) for label in engine.labels}, None


def _policy_problem(store: CheckpointStore, labels: tuple[str, ...]) -> str | None:
    """Why the store's policy file keeps the candidate from serving, if it does."""
    try:
        why = policy_conflict(read_policy(store.root), labels)
    except PolicyFileError as exc:
        return f"the store's policy file is unusable ({exc})"
    return None if why is None else f"{why}: change the policy, then promote by hand"
