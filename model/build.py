"""`retrain`, end to end: load data, train, evaluate, report, save, verify.

1. Train (`model.train.train`) on the training split plus any extra examples.
2. Score validation and test through the serving `Engine`; pick each label's threshold
   on validation (`model.evaluation`).
3. Fit the TF-IDF baseline on the same splits and measure it the same way.
4. Write the checkpoint atomically with metrics, thresholds, the data fingerprint and
   the evaluation report (`report/`, see `model.report`).
5. Reload what was written and check it scores like the in-memory model did.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.baseline import BaselineUnavailableError, fit_baseline
from model.checkpoint import save_checkpoint
from model.data import DataSplits, Example, label_counts, load_splits
from model.engine import Engine, resolve_device
from model.evaluation import (
    EVAL_SPLITS,
    LABEL_SOURCES,
    choose_thresholds,
    evaluation_examples,
    metrics_from_scores,
    parse_target_precision,
)
from model.progress import Progress, quiet
from model.report import REPORT_DIR, Scored, SplitData, build_report, cross_domain, report_files
from model.train import TrainConfig, TrainResult, torch_settings, train
from model.training_data import label_arrays, training_examples


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain(
    output_dir: str | Path,
    config: TrainConfig | None = None,
    progress: Progress = quiet,
    splits: DataSplits | None = None,
    extra_examples: Sequence[Example] = (),
) -> RetrainReport:
    """Load data, train, evaluate through `Engine`, write the checkpoint atomically.

    `extra_examples` join the training set (see `model.data.merge_feedback`).
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    splits = splits or load_splits()
    progress(
        f"data: train {len(splits.train)}, validation {len(splits.validation)}, "
        f"test {len(splits.test)}, fingerprint {splits.fingerprint[:12]}"
    )
    result = train(config, splits, progress, extra_examples)
    with torch_settings(config, resolve_device(config.device)):
        return _evaluate_and_save(
            output_dir, config, splits, result, progress, started, extra_examples
        )


def _evaluate_and_save(
    output_dir: str | Path,
    config: TrainConfig,
    splits: DataSplits,
    result: TrainResult,
    progress: Progress,
    started: float,
    extra_examples: Sequence[Example] = (),
) -> RetrainReport:
    labels = result.labels
    engine = Engine.from_model(
        result.model,
        result.vocab,
        labels,
        device=config.device,
        max_tokens=config.max_tokens,
        cpu_threads=None,
    )
    parts: dict[str, list[Example]] = {
        name: evaluation_examples(config, splits, name) for name in EVAL_SPLITS
    }
    data = {
        name: SplitData(*label_arrays(examples), [ex.source for ex in examples])
        for name, examples in parts.items()
    }
    texts = {name: [ex.text for ex in examples] for name, examples in parts.items()}
    probs = {name: engine.score(texts[name]).probabilities for name in parts}
    rules = parse_target_precision(config.target_precision)
    notes: dict[str, str] = {}
    val = data["validation"]
    thresholds = choose_thresholds(probs["validation"], val.targets, val.mask, labels, rules, notes)
    lstm = {name: Scored(probs[name], thresholds) for name in parts}
    measured = {
        name: metrics_from_scores(probs[name], d.targets, d.mask, labels, thresholds)
        for name, d in data.items()
    }
    models = {"lstm": lstm}

    baseline_metrics: dict[str, Any] = {}
    baseline_seconds = 0.0
    if config.baseline:
        try:
            baseline = fit_baseline(
                training_examples(config, splits) + list(extra_examples), labels, config.seed
            )
        except BaselineUnavailableError as e:
            progress(f"baseline: skipped ({e})")
        else:
            baseline_seconds = baseline.seconds
            b_probs = {name: baseline.predict(texts[name]) for name in parts}
            b_thresholds = choose_thresholds(
                b_probs["validation"], val.targets, val.mask, labels, rules
            )
            models["baseline"] = {name: Scored(b_probs[name], b_thresholds) for name in parts}
            baseline_metrics = {
                "name": baseline.name,
                **{
                    name: metrics_from_scores(
                        b_probs[name], d.targets, d.mask, labels, b_thresholds
                    )
                    for name, d in data.items()
                },
            }
    crossed = {
        model_name: {
            name: cross_domain(data[name], scored[name], labels, LABEL_SOURCES) for name in parts
        }
        for model_name, scored in models.items()
    }

    metrics = {
        "validation": measured["validation"],
        "test": measured["test"],
        "training": {
            "best_epoch": result.best_epoch,
            "best_validation_mean_auc": result.best_validation_auc,
            "seconds": result.seconds,
            "train_examples": min(len(splits.train), config.limit or len(splits.train)),
            "history": result.history,
            "embeddings": result.embeddings,
        },
        "train_config": asdict(config),
        "threshold_rules": notes,
        "baseline": baseline_metrics,
        "cross_domain": crossed,
    }
    report: dict[str, Any] | None = None
    if config.report:
        report = build_report(
            labels,
            data,
            models,
            LABEL_SOURCES,
            {
                "data_fingerprint": splits.fingerprint,
                "data": {
                    "fingerprint": splits.fingerprint,
                    **{
                        f"{name} examples (known, positive)": label_counts(examples)
                        for name, examples in (("train", splits.train), *parts.items())
                    },
                    "embeddings": result.embeddings,
                },
                "thresholds": thresholds,
                "threshold_rules": notes,
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

    def extra_files(version: str, created_at: str) -> dict[str, bytes]:
        if report is None:
            return {}
        return report_files({**report, "version": version, "created_at": created_at})

    version = save_checkpoint(
        output_dir,
        result.model,
        result.vocab,
        labels,
        thresholds,
        metrics=metrics,
        data_fingerprint=splits.fingerprint,
        extra_files=extra_files,
    )
    _verify_written(output_dir, version, engine, texts["validation"][:64])
    for split_name in parts:
        for model_name, split_metrics in (
            ("lstm", measured[split_name]),
            ("baseline", baseline_metrics.get(split_name, {})),
        ):
            for label, m in split_metrics.items():
                progress(
                    f"{split_name} {label} {model_name}: auc {m['roc_auc']:.4f} f1 {m['f1']:.4f} "
                    f"precision {m['precision']:.4f} recall {m['recall']:.4f} "
                    f"@ {m['threshold']:.3f} (n={m['examples']})"
                )
    for what, c in crossed["lstm"]["validation"].items():
        progress(f"validation {what} lstm: flag rate {c['flag_rate']:.4f} (n={c['examples']})")
    report_dir = str(Path(output_dir) / REPORT_DIR) if report is not None else None
    progress(
        f"wrote checkpoint {version} to {output_dir}"
        + (f", report in {report_dir}" if report_dir else "")
    )
    return RetrainReport(
        output_dir=str(output_dir),
        version=version,
        labels=labels,
        thresholds=thresholds,
        validation=measured["validation"],
        test=measured["test"],
        data_fingerprint=splits.fingerprint,
        best_epoch=result.best_epoch,
        train_seconds=result.seconds,
        total_seconds=time.perf_counter() - started,
        config=asdict(config),
        baseline=baseline_metrics,
        cross_domain=crossed,
        report_dir=report_dir,
    )


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
