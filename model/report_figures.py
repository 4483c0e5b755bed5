"""The evaluation report's PNG figures, drawn with matplotlib when it is installed.

Why its own module: plotting is optional (matplotlib is not a serving dependency) and
the largest part of the report; it reads the report dict only, like the Markdown.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from model.report_data import CALIBRATION_BINS, SPLITS
from model.report_markdown import fmt

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
                f"AUC {fmt(m['roc_auc'], 3)}"
                if kind == "roc_curve"
                else f"AP {fmt(m['average_precision'], 3)}"
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
                    label=f"{name} {split} at threshold {fmt(m['threshold'], 3)}",
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
        ax.plot(xs, ys, "o-", color=colour, label=f"{name} test (ECE {fmt(m['ece'], 3)})")
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
            label=f"{name} threshold {fmt(m['threshold'], 3)}",
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
