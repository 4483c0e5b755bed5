"""The evaluation report for people: `report.md`, rendered from the report dict.

Why its own module: it only formats what `model.report_data.build_report` computed
(tables per split, label and model; robustness sections when present) and knows nothing
of how the numbers were made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from model.report_data import SPLITS


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the report prints it: fixed digits, "n/a" for missing or non-finite."""
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
        *_warning_lines(report.get("warnings", [])),
        *_label_lines(report.get("label_details", {})),
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
                    f"| {split} | {label} | {name} | {fmt(m['roc_auc'])} | "
                    f"{fmt(m['average_precision'])} | {fmt(m['f1'])} | "
                    f"{fmt(m['precision'])} | {fmt(m['recall'])} | "
                    f"{fmt(m['threshold'], 3)} | {m['examples']} ({m['positives']}) |"
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
        "Each label fired on a corpus that never labelled it, at its threshold (none "
        "when every corpus knows every label). Spam on insult comments is a "
        "false-positive rate if no comment is spam (the assumption "
        "`comments_spam_negative` trains with); the others are flag rates.",
        "",
        "| split | model | what | n | flag rate | mean score | p95 score |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        for name in names:
            for what, c in models[name].get(split, {}).get("cross_domain", {}).items():
                lines.append(
                    f"| {split} | {name} | {what} | {c['examples']} | {fmt(c['flag_rate'])} | "
                    f"{fmt(c['mean_score'])} | {fmt(c['p95_score'])} |"
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
                        f"| {split} | {label} | {name} | {fmt(m['ece'])} | {fmt(m['brier'])} |"
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
            lines.append(f"| {int(h['epoch'])} | " + " | ".join(fmt(h.get(k)) for k in keys) + " |")
        lines.append("")
        lines.append(f"Best epoch (kept): {report.get('best_epoch', '?')}.")
    lines += ["", "## Data", ""]
    for name, value in report.get("data", {}).items():
        lines.append(f"- {name}: {value}")
    lines += ["", "## Training configuration", "", "```json"]
    lines.append(json.dumps(report.get("config", {}), indent=1, sort_keys=True))
    lines += ["```", ""]
    for name, value in report.get("timings", {}).items():
        lines.append(f"- {name}: {fmt(value, 1)} s")
    lines.append("")
    return "\n".join(lines)


def _warning_lines(warnings: Sequence[str]) -> list[str]:
    """The run's warnings (labels too rare to evaluate, unreachable targets), up front."""
    if not warnings:
        return []
    return ["", "## Warnings", "", *(f"- {warning}" for warning in warnings)]


def _support(counts: Mapping[str, Any] | None) -> str:
    if not counts:
        return "n/a"
    text = f"{counts['positives']} / {counts['known']}"
    return f"**{text}** (too rare)" if counts.get("too_rare") else text


def _label_lines(details: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per label: what it means, how its threshold was chosen, its support."""
    if not details:
        return []
    lines = [
        "",
        "## Labels",
        "",
        "Support: positives / examples that know the label, in the examples trained on "
        "and measured on; **too rare** marks fewer than 30 positives or 30 negatives, "
        "too few for its metrics to tell models apart.",
        "",
        "| label | description | threshold policy | rule | threshold | train | validation | test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, d in details.items():
        policy = d["threshold_policy"]
        shown = (
            policy
            if isinstance(policy, str)
            else ", ".join(f"{k} {v:g}" for k, v in policy.items())
        )
        support = d.get("support", {})
        description = str(d.get("description", "")).replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {label} | {description} | {shown} ({d['threshold_policy_source']}) | "
            f"{d['threshold_rule']} | {fmt(d['threshold'], 3)} | "
            f"{_support(support.get('train'))} | {_support(support.get('validation'))} | "
            f"{_support(support.get('test'))} |"
        )
    return lines


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
                    f"{fmt(section['mean_chars'], 0)} | {fmt(m['roc_auc'])} | "
                    f"{fmt(m['plain_roc_auc'])} | {fmt(m['ceiling_roc_auc'])} | "
                    f"{fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} | "
                    f"{fmt(m['negative_flag_rate'])} | {fmt(m['threshold'], 3)} |"
                )
        lines.append("")
        for split, section in long.items():
            lines.append(
                f"- {split}: {fmt(section.get('windows_per_message'), 2)} windows per message; "
                f"evidence hit rate {fmt(section.get('evidence_hit_rate'))} (flagged "
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
                rates = " | ".join(fmt(m[label]["flag_rate"]) for label in labels)
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
                f"| {p['name']} | {p['label']} | {p['chars']} | {fmt(p['score'], 3)} | "
                f"{p['flagged']} | {p['expected']} | {'yes' if p['ok'] else '**no**'} |"
            )
    return lines
