"""The evaluation report `retrain` writes into the checkpoint, under `report/`.

Files: `report.json` (everything, machine-readable), `report.md` (the same for people)
and, when matplotlib is installed, PNG figures: ROC and precision-recall curves and a
reliability (calibration) diagram per label, and the training curve. Without matplotlib
the JSON and Markdown are still written and the Markdown says the figures are missing.

The report lives inside the checkpoint directory, written into the staging directory
before the atomic rename, so it always describes exactly the weights beside it. It is
not part of the checkpoint's content hash and `load_checkpoint` only reads
`model.json` and `weights.safetensors`, so it can never stop a checkpoint from loading.

Models compared: `lstm` (the served model, scored through `Engine`) and `baseline`
(`model.baseline`), each with per-label thresholds chosen on validation.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.jsonsafe import json_safe
from model.metrics import average_precision, binary_metrics, brier, confusion

REPORT_DIR = "report"
JSON_FILE = "report.json"
MARKDOWN_FILE = "report.md"
SPLITS = ("validation", "test")
CURVE_POINTS = 200
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Scored:
    """One model's probabilities on one split ([n, labels]; rows in split order)."""

    probabilities: np.ndarray
    thresholds: Mapping[str, float]


@dataclass(frozen=True)
class SplitData:
    targets: np.ndarray  # [n, labels]
    mask: np.ndarray  # [n, labels]
    sources: Sequence[str]  # per row (e.g. "insults", "sms_spam")


# ------------------------------------------------------------------------ numbers


def _thin(xs: np.ndarray, ys: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    if len(xs) > points:
        keep = np.unique(np.linspace(0, len(xs) - 1, points).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return {"x": [round(float(v), 5) for v in xs], "y": [round(float(v), 5) for v in ys]}


def roc_curve(targets: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """False-positive rate (x) against true-positive rate (y), one point per cut."""
    positive = np.asarray(targets) > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return {"x": [], "y": []}
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    ranked = np.asarray(scores, np.float64)[order]
    tp, fp = np.cumsum(positive[order]), np.cumsum(~positive[order])
    last = np.r_[ranked[1:] != ranked[:-1], True]
    return _thin(np.r_[0.0, fp[last] / n_neg], np.r_[0.0, tp[last] / n_pos])


def pr_curve(targets: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """Recall (x) against precision (y), one point per cut."""
    positive = np.asarray(targets) > 0.5
    n_pos = int(positive.sum())
    if n_pos == 0:
        return {"x": [], "y": []}
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    ranked = np.asarray(scores, np.float64)[order]
    tp, fp = np.cumsum(positive[order]), np.cumsum(~positive[order])
    last = np.r_[ranked[1:] != ranked[:-1], True]
    return _thin(tp[last] / n_pos, tp[last] / (tp[last] + fp[last]))


def calibration(
    targets: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[dict[str, float]]:
    """Equal-width probability bins: mean predicted probability vs observed positive
    rate (a perfectly calibrated model has them equal)."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(targets) > 0.5
    which = np.minimum((scores * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            out.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "count": count,
                    "mean_probability": float(scores[inside].mean()),
                    "positive_rate": float(positive[inside].mean()),
                }
            )
    return out


def expected_calibration_error(bins: Sequence[Mapping[str, float]]) -> float:
    total = sum(b["count"] for b in bins)
    if not total:
        return math.nan
    return float(
        sum(b["count"] * abs(b["mean_probability"] - b["positive_rate"]) for b in bins) / total
    )


def label_section(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    bins = calibration(targets, scores)
    return {
        **binary_metrics(targets, scores, threshold),
        "average_precision": average_precision(targets, scores),
        "brier": brier(targets, scores),
        "ece": expected_calibration_error(bins),
        "confusion": confusion(targets, scores, threshold),
        "roc_curve": roc_curve(targets, scores),
        "pr_curve": pr_curve(targets, scores),
        "calibration": bins,
    }


def cross_domain(
    data: SplitData, scored: Scored, labels: Sequence[str], source_of: Mapping[str, str]
) -> dict[str, Any]:
    """For each label, how often it fires on the *other* corpus, at its threshold.

    `source_of` maps a label to the corpus that labels it; rows of every other source
    were never labelled for it. For spam on insult comments this is a false-positive
    rate under the assumption that no comment is spam; for insult on SMS it is a flag
    rate (a few SMS may really be insulting).
    """
    out: dict[str, Any] = {}
    sources = np.asarray(list(data.sources))
    for j, label in enumerate(labels):
        for source in sorted(set(data.sources) - {source_of.get(label, "")}):
            rows = sources == source
            if not rows.any():
                continue
            scores = scored.probabilities[rows, j]
            out[f"{label}_on_{source}"] = {
                "examples": int(rows.sum()),
                "flag_rate": float((scores >= scored.thresholds[label]).mean()),
                "mean_score": float(scores.mean()),
                "p95_score": float(np.quantile(scores, 0.95)),
            }
    return out


def build_report(
    labels: Sequence[str],
    splits: Mapping[str, SplitData],
    models: Mapping[str, Mapping[str, Scored]],
    source_of: Mapping[str, str],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """`models[name][split]`: each model's scores per split. `extra` is merged in
    (version, fingerprint, history, config, timings...)."""
    body: dict[str, Any] = {"labels": list(labels), "models": {}}
    for name, per_split in models.items():
        section: dict[str, Any] = {}
        for split_name, scored in per_split.items():
            data = splits[split_name]
            known = data.mask > 0
            section[split_name] = {
                label: label_section(
                    data.targets[known[:, j], j],
                    scored.probabilities[known[:, j], j],
                    scored.thresholds[label],
                )
                for j, label in enumerate(labels)
            }
            section[split_name]["cross_domain"] = cross_domain(data, scored, labels, source_of)
        body["models"][name] = section
    return {**extra, **body}


# ---------------------------------------------------------------------- rendering


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return "n/a" if value is None else str(value)


def _rules(rules: Mapping[str, str]) -> str:
    return ", ".join(f"{label}: {rule}" for label, rule in rules.items()) or "max_f1"


def render_markdown(report: Mapping[str, Any], images: Sequence[str]) -> str:
    labels: list[str] = report["labels"]
    models: dict[str, Any] = report["models"]
    names = list(models)
    lines = [
        f"# Evaluation report: model {report.get('version', '?')}",
        "",
        f"Created {report.get('created_at', '?')}; data fingerprint "
        f"`{report.get('data_fingerprint', '?')}`. Thresholds were chosen on validation "
        f"({_rules(report.get('threshold_rules', {}))}); test numbers use them unchanged.",
        "",
        "## Per-label metrics",
        "",
        "| split | label | model | ROC AUC | avg precision | F1 | precision | recall | "
        "threshold | n (pos) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        for label in labels:
            for name in names:
                m = models[name].get(split, {}).get(label)
                if m is None:
                    continue
                lines.append(
                    f"| {split} | {label} | {name} | {_fmt(m['roc_auc'])} | "
                    f"{_fmt(m['average_precision'])} | {_fmt(m['f1'])} | "
                    f"{_fmt(m['precision'])} | {_fmt(m['recall'])} | "
                    f"{_fmt(m['threshold'], 3)} | {m['examples']} ({m['positives']}) |"
                )
    lines += ["", "## Confusion matrices at the chosen thresholds", ""]
    lines += [
        "| split | label | model | TP | FP | FN | TN |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        for label in labels:
            for name in names:
                m = models[name].get(split, {}).get(label)
                if m is not None:
                    c = m["confusion"]
                    lines.append(
                        f"| {split} | {label} | {name} | {c['tp']} | {c['fp']} | "
                        f"{c['fn']} | {c['tn']} |"
                    )
    lines += [
        "",
        "## Cross-domain flag rates",
        "",
        "Each label fired on the corpus that never labelled it, at its threshold. Spam on "
        "insult comments is a false-positive rate if no comment is spam (the assumption "
        "`comments_spam_negative` trains with); insult on SMS is a flag rate.",
        "",
        "| split | model | what | n | flag rate | mean score | p95 score |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        for name in names:
            for what, c in models[name].get(split, {}).get("cross_domain", {}).items():
                lines.append(
                    f"| {split} | {name} | {what} | {c['examples']} | {_fmt(c['flag_rate'])} | "
                    f"{_fmt(c['mean_score'])} | {_fmt(c['p95_score'])} |"
                )
    lines += [
        "",
        "## Calibration",
        "",
        "Expected calibration error (10 equal-width bins) and Brier score.",
        "",
        "| split | label | model | ECE | Brier |",
        "|---|---|---|---|---|",
    ]
    for split in SPLITS:
        for label in labels:
            for name in names:
                m = models[name].get(split, {}).get(label)
                if m is not None:
                    lines.append(
                        f"| {split} | {label} | {name} | {_fmt(m['ece'])} | {_fmt(m['brier'])} |"
                    )
    lines += ["", "## Figures", ""]
    if images:
        lines += [f"![{name}]({name})" for name in images]
    else:
        lines.append("matplotlib is not installed, so no figures were drawn.")
    history = report.get("history", [])
    lines += ["", "## Training curve", ""]
    if history:
        keys = [k for k in history[0] if k != "epoch"]
        lines.append("| epoch | " + " | ".join(keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for h in history:
            lines.append(
                f"| {int(h['epoch'])} | " + " | ".join(_fmt(h.get(k)) for k in keys) + " |"
            )
        lines.append("")
        lines.append(f"Best epoch (kept): {report.get('best_epoch', '?')}.")
    lines += ["", "## Data", ""]
    for name, value in report.get("data", {}).items():
        lines.append(f"- {name}: {value}")
    lines += ["", "## Training configuration", "", "```json"]
    lines.append(json.dumps(report.get("config", {}), indent=1, sort_keys=True))
    lines += ["```", ""]
    for name, value in report.get("timings", {}).items():
        lines.append(f"- {name}: {_fmt(value, 1)} s")
    lines.append("")
    return "\n".join(lines)


def render_images(report: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG figures by file name; {} when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    images: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        images[name] = buffer.getvalue()

    models: dict[str, Any] = report["models"]
    for label in report["labels"]:
        for kind, title, xlab, ylab in (
            ("roc_curve", "ROC", "false-positive rate", "true-positive rate"),
            ("pr_curve", "precision-recall", "recall", "precision"),
        ):
            fig, ax = plt.subplots(figsize=(4.5, 4))
            for name, per_split in models.items():
                for split in SPLITS:
                    m = per_split.get(split, {}).get(label)
                    if m and m[kind]["x"]:
                        style = "-" if split == "test" else "--"
                        ax.plot(
                            m[kind]["x"],
                            m[kind]["y"],
                            style,
                            label=f"{name} {split} (AUC {_fmt(m['roc_auc'], 3)})"
                            if kind == "roc_curve"
                            else f"{name} {split} (AP {_fmt(m['average_precision'], 3)})",
                        )
            if kind == "roc_curve":
                ax.plot([0, 1], [0, 1], ":", color="grey")
            ax.set(title=f"{label}: {title}", xlabel=xlab, ylabel=ylab, xlim=(0, 1), ylim=(0, 1.02))
            ax.legend(fontsize=7, loc="lower right" if kind == "roc_curve" else "lower left")
            save(fig, f"{kind.replace('_curve', '')}_{label}.png")
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
        for name, per_split in models.items():
            m = per_split.get("test", {}).get(label)
            if m and m["calibration"]:
                xs = [b["mean_probability"] for b in m["calibration"]]
                ys = [b["positive_rate"] for b in m["calibration"]]
                ax.plot(xs, ys, "o-", label=f"{name} test (ECE {_fmt(m['ece'], 3)})")
        ax.set(
            title=f"{label}: reliability (test)",
            xlabel="mean predicted probability",
            ylabel="observed positive rate",
            xlim=(0, 1),
            ylim=(0, 1),
        )
        ax.legend(fontsize=7, loc="upper left")
        save(fig, f"calibration_{label}.png")
    history = report.get("history", [])
    if history:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        epochs = [h["epoch"] for h in history]
        left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
        if "validation_loss" in history[0]:
            left.plot(epochs, [h["validation_loss"] for h in history], "o-", label="val loss")
        left.set(title="loss", xlabel="epoch")
        left.legend(fontsize=7)
        for key in history[0]:
            if key.startswith("validation_auc_") or key == "validation_mean_auc":
                right.plot(epochs, [h[key] for h in history], "o-", label=key)
        right.set(title="validation ROC AUC", xlabel="epoch")
        right.legend(fontsize=7)
        save(fig, "training_curve.png")
    return images


def report_files(report: Mapping[str, Any], with_images: bool = True) -> dict[str, bytes]:
    """Relative path → bytes for everything under `report/`."""
    images = render_images(report) if with_images else {}
    files = {f"{REPORT_DIR}/{name}": data for name, data in images.items()}
    files[f"{REPORT_DIR}/{MARKDOWN_FILE}"] = render_markdown(report, sorted(images)).encode()
    files[f"{REPORT_DIR}/{JSON_FILE}"] = (
        json.dumps(json_safe(report), indent=1, sort_keys=True, allow_nan=False) + "\n"
    ).encode()
    return files
