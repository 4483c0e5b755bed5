"""The report's robustness sections: long messages, short benign chat, probes.

Plain test sets are mostly single short comments, so they cannot show the two ways a
length-blind model fails: abuse diluted or cut off in a long message, and arbitrary
scores on short benign chat. Three measurements, each on validation and test (the
probes once), for the served model through `Engine` and, where it applies, for the
TF-IDF baseline:

Each section follows the model's labels: long messages need `insult` (the comments
they are built from), the short benign flag rates cover every label, and only the
probes of labels the model has are run; a section that does not apply is left out.

1. **Long messages** (`model.long_messages`): each insult-labelled comment of a split
   placed among 2-5 clean comments of the same split (seed `LONG_SEED`). ROC AUC and
   precision / recall / F1 at the threshold chosen on the plain validation set, beside
   the plain AUC of the same comments. Two diagnostics: the *ceiling*, the AUC of the
   maximum over each message's parts scored alone (what perfect windows could reach
   with this model's per-comment scores: the clean fillers' own false positives cap
   it), and the *evidence hit rate*, the share of flagged positive messages whose
   best evidence span overlaps the embedded comment.
2. **Short benign chat** (`model.short_chat`): the flag rate of every label on short
   benign messages (reviewed short SMS ham, and the held-out curated lines), with the
   flagged texts listed.
3. **Probes** (`model.probes`): fixed texts with a known right answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from model.data import DataSplits, Example
from model.engine import Engine
from model.evaluation import EVAL_SPLITS, EvaluationSet
from model.long_messages import LongMessage, long_messages
from model.metrics import binary_metrics, roc_auc
from model.probes import PROBES
from model.scores import Scores
from model.short_chat import short_benign

LONG_SEED = 2012
LONG_LABEL = "insult"
MAX_LISTED = 10  # flagged short texts listed per split

Predict = Callable[[Sequence[str]], np.ndarray]  # texts → [n, labels] probabilities


def robustness(
    engine: Engine,
    evaluation: EvaluationSet,
    splits: DataSplits,
    thresholds: Mapping[str, float],
    baseline: tuple[Predict, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The sections that apply (module docstring) of `{"long_messages",
    "short_benign", "probes"}`. `baseline` is its predict function and its thresholds
    (None: model rows only)."""
    models: dict[str, tuple[Predict, Mapping[str, float]]] = {
        "lstm": (lambda texts: engine.score(texts).probabilities, thresholds)
    }
    if baseline is not None:
        models["baseline"] = baseline
    sections: dict[str, Any] = {}
    if LONG_LABEL in engine.labels:
        sections["long_messages"] = {
            split: long_section(engine, evaluation.examples[split], models) for split in EVAL_SPLITS
        }
    sections["short_benign"] = {
        split: short_section(short_benign(splits, split), engine.labels, models)
        for split in EVAL_SPLITS
    }
    probes = probe_section(engine, thresholds)
    if probes:
        sections["probes"] = probes
    return sections


def long_section(
    engine: Engine,
    examples: Sequence[Example],
    models: Mapping[str, tuple[Predict, Mapping[str, float]]],
) -> dict[str, Any]:
    j = engine.labels.index(LONG_LABEL)
    known = [ex for ex in examples if ex.mask[j] > 0]
    built = long_messages(known, j, seed=LONG_SEED)
    targets = np.asarray([m.example.targets[j] for m in built])
    plain_targets = np.asarray([ex.targets[j] for ex in known])
    texts = [m.example.text for m in built]
    section: dict[str, Any] = {
        "label": LONG_LABEL,
        "seed": LONG_SEED,
        "messages": len(built),
        "positives": int(targets.sum()),
        "mean_chars": float(np.mean([len(t) for t in texts])) if texts else 0.0,
    }
    for name, (predict, thresholds) in models.items():
        threshold = thresholds[LONG_LABEL]
        if name == "lstm":
            scored = engine.score(texts)
            scores = scored.probabilities[:, j]
            section["windows_per_message"] = scored.num_windows / max(len(texts), 1)
            section["evidence_hit_rate"] = _evidence_hits(scored, built, j, threshold)
        else:
            scores = predict(texts)[:, j]
        plain = predict([ex.text for ex in known])[:, j]
        ceiling = np.asarray([max(plain[i] for i in m.parts) for m in built])
        section[name] = {
            **binary_metrics(targets, scores, threshold),
            "plain_roc_auc": roc_auc(plain_targets, plain),
            "ceiling_roc_auc": roc_auc(targets, ceiling),
            "negative_flag_rate": float((scores[targets <= 0.5] >= threshold).mean()),
        }
    return section


def _evidence_hits(
    scored: Scores, built: Sequence[LongMessage], label: int, threshold: float
) -> float | None:
    """Among flagged positive messages, the share whose best evidence span overlaps
    the embedded comment."""
    hits = flagged = 0
    for i, message in enumerate(built):
        if message.example.targets[label] <= 0.5:
            continue
        spans = scored.evidence(i, label, threshold)
        if not spans:
            continue
        flagged += 1
        best = max(spans, key=lambda span: span.score)
        hits += best.start < message.embedded_end and message.embedded_start < best.end
    return hits / flagged if flagged else None


def short_section(
    examples: Sequence[Example],
    labels: Sequence[str],
    models: Mapping[str, tuple[Predict, Mapping[str, float]]],
) -> dict[str, Any]:
    texts = [ex.text for ex in examples]
    sources = np.asarray([ex.source for ex in examples])
    section: dict[str, Any] = {
        "examples": len(texts),
        "by_source": {str(s): int((sources == s).sum()) for s in sorted(set(sources))},
    }
    for name, (predict, thresholds) in models.items():
        scores = predict(texts) if texts else np.zeros((0, len(labels)))
        flags = np.stack([scores[:, j] >= thresholds[label] for j, label in enumerate(labels)], 1)
        section[name] = {
            label: {
                "flag_rate": float(flags[:, j].mean()) if texts else float("nan"),
                "flagged": [texts[i] for i in np.flatnonzero(flags[:, j])[:MAX_LISTED]],
                "by_source": {
                    str(s): float(flags[sources == s, j].mean()) for s in sorted(set(sources))
                },
            }
            for j, label in enumerate(labels)
        }
    return section


def probe_section(engine: Engine, thresholds: Mapping[str, float]) -> list[dict[str, Any]]:
    """The probes of the labels the model has (`model.probes`)."""
    probes = [probe for probe in PROBES if probe.label in engine.labels]
    if not probes:
        return []
    scored = engine.score([probe.text for probe in probes])
    rows = []
    for i, probe in enumerate(probes):
        j = engine.labels.index(probe.label)
        score = float(scored.probabilities[i, j])
        flagged = score >= thresholds[probe.label]
        rows.append(
            {
                "name": probe.name,
                "label": probe.label,
                "chars": len(probe.text),
                "score": score,
                "flagged": flagged,
                "expected": probe.flagged,
                "ok": flagged == probe.flagged,
            }
        )
    return rows
