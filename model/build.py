"""`retrain`, end to end: load data, train, evaluate, report, save, verify.

1. Train (`model.train.train`) on the training split plus any extra examples.
2. Score validation and test through the serving `Engine`; pick each label's threshold
   on validation by its policy (`model.label_plan`: the label spec, `--target-precision`,
   else max F1; `model.evaluation`).
3. Fit the TF-IDF baseline on the same splits and measure it the same way; measure
   both on long messages and short benign chat, and the model on the probes
   (`model.robustness`).
4. Write the checkpoint atomically with metrics, thresholds, per-label details
   (description, threshold policy and rule, support per split), warnings (labels too
   rare to evaluate, unreachable precision targets), the data fingerprint and the
   evaluation report (`report/`, see `model.report`).
5. Reload what was written and check it scores like the in-memory model did.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.checkpoint_save import save_checkpoint
from model.data import DataSplits, Example, load_splits
from model.engine import Engine, resolve_device
from model.evaluation import (
    EVAL_SPLITS,
    BaselineMeasured,
    EvaluationSet,
    Measured,
    measure,
    measure_baseline,
    parse_target_precision,
)
from model.label_plan import LabelPlan, label_details, plan_labels
from model.label_support import Support, rarity_warnings, support_of
from model.progress import Progress, quiet
from model.report import REPORT_DIR, report_files
from model.report_data import Scored, build_report, cross_domain
from model.robustness import robustness
from model.threshold_policy import rules_of, threshold_warnings
from model.train import TrainResult, torch_settings, train
from model.train_config import TrainConfig
from model.training_data import training_examples


@dataclass
class RetrainReport:
    output_dir: str
    version: str
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    validation: dict[str, dict[str, Any]]  # label → metrics
    test: dict[str, dict[str, Any]]
    data_fingerprint: str
    best_epoch: int
    train_seconds: float
    total_seconds: float
    config: dict[str, Any]
    baseline: dict[str, Any] = field(default_factory=dict)  # split → label → metrics
    cross_domain: dict[str, Any] = field(default_factory=dict)
    report_dir: str | None = None
    label_details: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain(
    output_dir: str | Path,
    config: TrainConfig | None = None,
    progress: Progress = quiet,
    splits: DataSplits | None = None,
    extra_examples: Sequence[Example] = (),
    plan: LabelPlan | None = None,
) -> RetrainReport:
    """Load data, train, evaluate through `Engine`, write the checkpoint atomically.

    `extra_examples` join the training set (see `model.data.merge_feedback`). `plan`
    gives each label's description and threshold policy (default: the policies of
    `config.target_precision`).
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    splits = splits or load_splits()
    if plan is None:
        plan = plan_labels(splits.labels, None, parse_target_precision(config.target_precision))
    progress(
        f"data: labels {', '.join(splits.labels)}; "
        f"train {len(splits.train)}, validation {len(splits.validation)}, "
        f"test {len(splits.test)}, fingerprint {splits.fingerprint[:12]}"
    )
    result = train(config, splits, progress, extra_examples)
    with torch_settings(config, resolve_device(config.device)):
        return _evaluate_and_save(
            output_dir, config, splits, result, progress, started, extra_examples, plan
        )


def _evaluate_and_save(
    output_dir: str | Path,
    config: TrainConfig,
    splits: DataSplits,
    result: TrainResult,
    progress: Progress,
    started: float,
    extra_examples: Sequence[Example],
    plan: LabelPlan,
) -> RetrainReport:
    """Steps 2-5 of the module docstring."""
    engine = Engine.from_model(
        result.model,
        result.vocab,
        result.labels,
        device=config.device,
        cpu_threads=None,
    )
    evaluated = _evaluate(engine, config, splits, extra_examples, plan, progress)
    report = _report(config, splits, result, evaluated, started) if config.report else None

    def extra_files(version: str, created_at: str) -> dict[str, bytes]:
        if report is None:
            return {}
        return report_files({**report, "version": version, "created_at": created_at})

    version = save_checkpoint(
        output_dir,
        result.model,
        result.vocab,
        result.labels,
        evaluated.lstm.thresholds,
        metrics=_checkpoint_metrics(config, splits, result, evaluated),
        data_fingerprint=splits.fingerprint,
        extra_files=extra_files,
    )
    _verify_written(output_dir, version, engine, evaluated.evaluation.texts["validation"][:64])
    _log_results(progress, evaluated)
    report_dir = str(Path(output_dir) / REPORT_DIR) if report is not None else None
    progress(
        f"wrote checkpoint {version} to {output_dir}"
        + (f", report in {report_dir}" if report_dir else "")
    )
    return RetrainReport(
        output_dir=str(output_dir),
        version=version,
        labels=result.labels,
        thresholds=evaluated.lstm.thresholds,
        validation=evaluated.lstm.metrics["validation"],
        test=evaluated.lstm.metrics["test"],
        data_fingerprint=splits.fingerprint,
        best_epoch=result.best_epoch,
        train_seconds=result.seconds,
        total_seconds=time.perf_counter() - started,
        config=asdict(config),
        baseline=evaluated.baseline_metrics,
        cross_domain=evaluated.crossed,
        report_dir=report_dir,
        label_details=evaluated.details,
        warnings=evaluated.warnings,
    )


@dataclass(frozen=True)
class _Evaluated:
    """Steps 2-3: the trained model and the baseline on the evaluation splits."""

    evaluation: EvaluationSet
    lstm: Measured
    baseline: BaselineMeasured | None
    models: dict[str, dict[str, Scored]]  # "lstm" (and "baseline") → split → scores
    crossed: dict[str, dict[str, Any]]  # model → split → cross-domain flag rates
    robust: dict[str, Any]  # long messages, short benign chat, probes
    support: dict[str, dict[str, Support]]  # split → label → examples trained / measured on
    details: dict[str, dict[str, Any]]  # label → `model.label_plan.label_details`
    warnings: list[str]  # unreachable precision targets, labels too rare to evaluate

    @property
    def threshold_rules(self) -> dict[str, str]:
        """label → the rule that chose its threshold."""
        return rules_of(self.lstm.chosen)

    @property
    def baseline_metrics(self) -> dict[str, Any]:
        """`{"name": …, split: label → metrics}`, or {} without a baseline."""
        if self.baseline is None:
            return {}
        return {"name": self.baseline.name, **self.baseline.measured.metrics}


def _evaluate(
    engine: Engine,
    config: TrainConfig,
    splits: DataSplits,
    extra_examples: Sequence[Example],
    plan: LabelPlan,
    progress: Progress,
) -> _Evaluated:
    labels = engine.labels
    evaluation = EvaluationSet.of(config, splits)
    probabilities = {
        name: engine.score(texts).probabilities for name, texts in evaluation.texts.items()
    }
    lstm = measure(probabilities, evaluation, labels, plan.policies)
    training = training_examples(config, splits) + list(extra_examples)
    baseline = None
    if config.baseline:
        baseline = measure_baseline(
            training, evaluation, labels, plan.policies, config.seed, progress
        )
    models = {"lstm": lstm.scored}
    if baseline is not None:
        models["baseline"] = baseline.measured.scored
    crossed: dict[str, dict[str, Any]] = {
        model_name: {
            name: cross_domain(evaluation.data[name], scored[name], labels) for name in EVAL_SPLITS
        }
        for model_name, scored in models.items()
    }
    robust = robustness(
        engine,
        evaluation,
        splits,
        lstm.thresholds,
        None if baseline is None else (baseline.predict, baseline.measured.thresholds),
    )
    support: dict[str, dict[str, Support]] = {"train": support_of(training, labels)}
    for name in EVAL_SPLITS:
        support[name] = support_of(evaluation.examples[name], labels)
    warnings = threshold_warnings(lstm.chosen) + rarity_warnings(support["test"], "test")
    details = label_details(plan, lstm.chosen, support)
    return _Evaluated(
        evaluation, lstm, baseline, models, crossed, robust, support, details, warnings
    )


def _checkpoint_metrics(
    config: TrainConfig, splits: DataSplits, result: TrainResult, evaluated: _Evaluated
) -> dict[str, Any]:
    """`model.json`'s metrics (README: Evaluation report)."""
    return {
        "validation": evaluated.lstm.metrics["validation"],
        "test": evaluated.lstm.metrics["test"],
        "training": {
            "best_epoch": result.best_epoch,
            "best_validation_mean_auc": result.best_validation_auc,
            "seconds": result.seconds,
            "train_examples": min(len(splits.train), config.limit or len(splits.train)),
            "history": result.history,
            "embeddings": result.embeddings,
        },
        "train_config": asdict(config),
        "threshold_rules": evaluated.threshold_rules,
        "label_details": evaluated.details,
        "warnings": evaluated.warnings,
        "baseline": evaluated.baseline_metrics,
        "cross_domain": evaluated.crossed,
        **evaluated.robust,
    }


def _report(
    config: TrainConfig,
    splits: DataSplits,
    result: TrainResult,
    evaluated: _Evaluated,
    started: float,
) -> dict[str, Any]:
    """The evaluation report (`model.report`) before its version is known."""
    baseline_seconds = evaluated.baseline.seconds if evaluated.baseline is not None else 0.0
    return build_report(
        result.labels,
        evaluated.evaluation.data,
        evaluated.models,
        {
            "data_fingerprint": splits.fingerprint,
            "data": {
                "fingerprint": splits.fingerprint,
                "embeddings": result.embeddings,
            },
            "thresholds": evaluated.lstm.thresholds,
            "threshold_rules": evaluated.threshold_rules,
            "label_details": evaluated.details,
            "warnings": evaluated.warnings,
            **evaluated.robust,
            "best_epoch": result.best_epoch,
            "history": result.history,
            "config": asdict(config),
            "timings": {
                "lstm training": result.seconds,
                "baseline fit": baseline_seconds,
                "until report": time.perf_counter() - started,
            },
        },
    )


def _log_results(progress: Progress, evaluated: _Evaluated) -> None:
    """One line per split, label and model, then the LSTM's cross-domain flag rates."""
    for split_name in EVAL_SPLITS:
        for model_name, split_metrics in (
            ("lstm", evaluated.lstm.metrics[split_name]),
            ("baseline", evaluated.baseline_metrics.get(split_name, {})),
        ):
            for label, m in split_metrics.items():
                progress(
                    f"{split_name} {label} {model_name}: auc {m['roc_auc']:.4f} f1 {m['f1']:.4f} "
                    f"precision {m['precision']:.4f} recall {m['recall']:.4f} "
                    f"@ {m['threshold']:.3f} (n={m['examples']})"
                )
    for what, c in evaluated.crossed["lstm"]["validation"].items():
        progress(f"validation {what} lstm: flag rate {c['flag_rate']:.4f} (n={c['examples']})")
    for split_name, section in evaluated.robust.get("long_messages", {}).items():
        for model_name in ("lstm", "baseline"):
            if model_name in section:
                m = section[model_name]
                progress(
                    f"{split_name} long messages {model_name}: auc {m['roc_auc']:.4f} "
                    f"(plain {m['plain_roc_auc']:.4f}, ceiling {m['ceiling_roc_auc']:.4f}) "
                    f"recall {m['recall']:.4f} precision {m['precision']:.4f} "
                    f"(n={section['messages']})"
                )
    for split_name, section in evaluated.robust["short_benign"].items():
        for model_name in ("lstm", "baseline"):
            rates = section.get(model_name, {})
            if rates:
                shown = ", ".join(f"{label} {r['flag_rate']:.4f}" for label, r in rates.items())
                progress(
                    f"{split_name} short benign {model_name}: flag rate {shown} "
                    f"(n={section['examples']})"
                )
    probes = evaluated.robust.get("probes", [])
    failed = [p["name"] for p in probes if not p["ok"]]
    progress(f"probes: {len(probes) - len(failed)} ok, failed: {failed}")
    for warning in evaluated.warnings:
        progress(f"warning: {warning}")


def _verify_written(directory: str | Path, version: str, engine: Engine, texts: list[str]) -> None:
    """Reload what was written and check it scores like the in-memory model did."""
    loaded = Engine.load(
        directory, device=str(engine.device), max_tokens=engine.max_tokens, cpu_threads=None
    )
    if loaded.version != version:
        raise RuntimeError(f"reloaded checkpoint has version {loaded.version}, wrote {version}")
    if texts:
        expected = engine.score(texts).probabilities
        got = loaded.score(texts).probabilities
        if not np.allclose(expected, got, atol=1e-5):
            raise RuntimeError("reloaded checkpoint scores differ from the trained model")
