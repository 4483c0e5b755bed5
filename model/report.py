"""The evaluation report `retrain` writes into the checkpoint, under `report/`.

Files: `report.json` (everything, machine-readable), `report.md` (the same for people)
and, when matplotlib is installed, PNG figures: ROC and precision-recall curves with a
marker at each model's chosen threshold, a reliability (calibration) diagram with the
examples per bin, per label; and the training curve with the kept epoch marked. Each
model has one colour in every figure. Without matplotlib
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
    lines += _robustness_lines(report, labels)
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


def _robustness_lines(report: Mapping[str, Any], labels: Sequence[str]) -> list[str]:
    """Long messages, short benign chat and probes (`model.robustness`), when present."""
    lines: list[str] = []
    long = report.get("long_messages")
    if long:
        first = next(iter(long.values()))
        lines += [
            "",
            "## Long messages",
            "",
            f"Each {first['label']}-labelled comment of the split placed among 2-5 clean "
            f"comments of the same split (seed {first['seed']}), at the thresholds chosen "
            "on the plain validation set. *plain*: the same comments alone; *ceiling*: "
            "each message scored as the maximum over its parts scored alone (the most "
            "any reading of the whole message could get from this model's per-comment "
            "scores: the clean fillers' own false positives cap it).",
            "",
            "| split | model | n (pos) | mean chars | ROC AUC | plain AUC | ceiling AUC | "
            "precision | recall | F1 | clean flagged | threshold |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for split, section in long.items():
            for name in ("lstm", "baseline"):
                m = section.get(name)
                if m is None:
                    continue
                lines.append(
                    f"| {split} | {name} | {section['messages']} ({section['positives']}) | "
                    f"{_fmt(section['mean_chars'], 0)} | {_fmt(m['roc_auc'])} | "
                    f"{_fmt(m['plain_roc_auc'])} | {_fmt(m['ceiling_roc_auc'])} | "
                    f"{_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | "
                    f"{_fmt(m['negative_flag_rate'])} | {_fmt(m['threshold'], 3)} |"
                )
        lines.append("")
        for split, section in long.items():
            lines.append(
                f"- {split}: {_fmt(section.get('windows_per_message'), 2)} windows per message; "
                f"evidence hit rate {_fmt(section.get('evidence_hit_rate'))} (flagged "
                "positives whose best evidence span overlaps the embedded comment)"
            )
    short = report.get("short_benign")
    if short:
        lines += [
            "",
            "## Short benign chat",
            "",
            "Reviewed short SMS ham (at most 30 characters) and the held-out curated chat "
            "lines (`model.short_chat`), negative for every label: any flag is a false "
            "positive.",
            "",
            "| split | model | n | " + " | ".join(f"{label} flag rate" for label in labels) + " |",
            "|---|---|---|" + "---|" * len(labels),
        ]
        for split, section in short.items():
            for name in ("lstm", "baseline"):
                m = section.get(name)
                if m is None:
                    continue
                rates = " | ".join(_fmt(m[label]["flag_rate"]) for label in labels)
                lines.append(f"| {split} | {name} | {section['examples']} | {rates} |")
        lines.append("")
        for split, section in short.items():
            for label in labels:
                flagged = section.get("lstm", {}).get(label, {}).get("flagged", [])
                if flagged:
                    shown = ", ".join(json.dumps(text) for text in flagged)
                    lines.append(f"- {split}, {label} (lstm) flagged: {shown}")
    probes = report.get("probes")
    if probes:
        lines += [
            "",
            "## Probes",
            "",
            "| probe | label | chars | score | flagged | expected | ok |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in probes:
            lines.append(
                f"| {p['name']} | {p['label']} | {p['chars']} | {_fmt(p['score'], 3)} | "
                f"{p['flagged']} | {p['expected']} | {'yes' if p['ok'] else '**no**'} |"
            )
    return lines


# Figures: 7x6 in at 110 dpi, 693x605 px once cropped (a ROC curve; 764x605 with the
# calibration counts): readable in a Markdown viewer without zooming. They were 4.5x4 in
# at 80 dpi, 345x315 px, with 7 pt legends. A model keeps its colour in every figure;
# the split is the line style (test solid, validation dashed).
FIGURE_SIZE = (7.0, 6.0)
FIGURE_DPI = 110
FONT_SIZE = 11
MODEL_COLOURS = {"lstm": "tab:blue", "baseline": "tab:orange"}
SPARE_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:brown")
SPLIT_STYLES = {"test": "-", "validation": "--"}


def model_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per model, the same in every figure (and every report)."""
    spare = iter(SPARE_COLOURS)
    return {name: MODEL_COLOURS.get(name) or next(spare, "tab:grey") for name in names}


def operating_point(section: Mapping[str, Any], kind: str) -> tuple[float, float] | None:
    """Where the chosen threshold sits on a ROC (fpr, tpr) or precision-recall (recall,
    precision) curve, from the confusion matrix at that threshold."""
    c = section["confusion"]
    positives, negatives, flagged = c["tp"] + c["fn"], c["fp"] + c["tn"], c["tp"] + c["fp"]
    if not positives or not negatives:
        return None
    recall = c["tp"] / positives
    if kind == "roc_curve":
        return c["fp"] / negatives, recall
    return (recall, c["tp"] / flagged) if flagged else None


def figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """matplotlib Figures by PNG file name; {} when matplotlib is missing. Per label: ROC
    and precision-recall curves (both splits, each model, a marker at its chosen
    threshold) and a reliability diagram with its bin counts; and the training curve
    with the kept epoch marked."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    plt.rcParams.update({"font.size": FONT_SIZE, "legend.fontsize": FONT_SIZE - 1})
    models: dict[str, Any] = report["models"]
    colours = model_colours(list(models))
    out: dict[str, Any] = {}
    for label in report["labels"]:
        for kind in ("roc_curve", "pr_curve"):
            out[f"{kind.replace('_curve', '')}_{label}.png"] = _curve_figure(
                plt, models, colours, label, kind
            )
        out[f"calibration_{label}.png"] = _calibration_figure(plt, models, colours, label)
    history = report.get("history", [])
    if history:
        out["training_curve.png"] = _training_figure(plt, history, report.get("best_epoch"))
    return out


def _curve_figure(
    plt: Any, models: Mapping[str, Any], colours: Mapping[str, str], label: str, kind: str
) -> Any:
    title, xlab, ylab = {
        "roc_curve": ("ROC", "false-positive rate", "true-positive rate"),
        "pr_curve": ("precision-recall", "recall", "precision"),
    }[kind]
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    for name, per_split in models.items():
        for split in SPLITS:
            m = per_split.get(split, {}).get(label)
            if not m or not m[kind]["x"]:
                continue
            score = (
                f"AUC {_fmt(m['roc_auc'], 3)}"
                if kind == "roc_curve"
                else f"AP {_fmt(m['average_precision'], 3)}"
            )
            ax.plot(
                m[kind]["x"],
                m[kind]["y"],
                SPLIT_STYLES[split],
                color=colours[name],
                linewidth=2,
                label=f"{name} {split} ({score})",
            )
            point = operating_point(m, kind)
            if point is not None:
                ax.plot(
                    *point,
                    "o",
                    color=colours[name],
                    markersize=9,
                    markerfacecolor=colours[name] if split == "test" else "white",
                    markeredgewidth=2,
                    label=f"{name} {split} at threshold {_fmt(m['threshold'], 3)}",
                )
    if kind == "roc_curve":
        ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(title=f"{label}: {title}", xlabel=xlab, ylabel=ylab, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if kind == "roc_curve" else "lower left")
    return fig


def _calibration_figure(
    plt: Any, models: Mapping[str, Any], colours: Mapping[str, str], label: str
) -> Any:
    """Reliability on test above, how many test examples fell in each bin below (a
    point made of 3 examples is noise; the counts say which ones)."""
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=FIGURE_SIZE, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    present = [(n, s["test"][label]) for n, s in models.items() if s.get("test", {}).get(label)]
    width = 1.0 / CALIBRATION_BINS / max(len(present), 1)
    for index, (name, m) in enumerate(present):
        bins = m["calibration"]
        if not bins:
            continue
        xs = [b["mean_probability"] for b in bins]
        ys = [b["positive_rate"] for b in bins]
        colour = colours[name]
        ax.plot(xs, ys, "o-", color=colour, label=f"{name} test (ECE {_fmt(m['ece'], 3)})")
        for x, y, b in zip(xs, ys, bins, strict=True):
            ax.annotate(
                str(b["count"]),
                (x, y),
                textcoords="offset points",
                xytext=(5, -14 if index % 2 else 6),
                fontsize=FONT_SIZE - 3,
                color=colour,
            )
        ax.axvline(
            m["threshold"],
            color=colour,
            linestyle="--",
            alpha=0.7,
            label=f"{name} threshold {_fmt(m['threshold'], 3)}",
        )
        counts.bar(
            [b["low"] + width * (index + 0.5) for b in bins],
            [b["count"] for b in bins],
            width=width,
            color=colour,
            label=name,
        )
    ax.set(
        title=f"{label}: reliability on test (numbers: examples per bin)",
        ylabel="observed positive rate",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    counts.set(xlabel="mean predicted probability", ylabel="examples per bin")
    counts.grid(alpha=0.3)
    return fig


def _training_figure(plt: Any, history: Sequence[Mapping[str, Any]], best_epoch: Any) -> Any:
    fig, (left, right) = plt.subplots(1, 2, figsize=(FIGURE_SIZE[0] * 2, FIGURE_SIZE[1] * 0.8))
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if "validation_loss" in history[0]:
        left.plot(epochs, [h["validation_loss"] for h in history], "o-", label="val loss")
    left.set(title="loss", xlabel="epoch")
    for key in history[0]:
        if key.startswith("validation_auc_") or key == "validation_mean_auc":
            right.plot(epochs, [h[key] for h in history], "o-", label=key)
    right.set(title="validation ROC AUC", xlabel="epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if isinstance(best_epoch, int | float):
            ax.axvline(best_epoch, color="black", linestyle="--", label=f"kept: epoch {best_epoch}")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def render_images(report: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG figures by file name; {} when matplotlib is missing."""
    images: dict[str, bytes] = {}
    for name, fig in figures(report).items():
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
        plt.close(fig)
        images[name] = buffer.getvalue()
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
