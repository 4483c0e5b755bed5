"""The linear baseline every report shows beside the LSTM: TF-IDF + logistic regression.

Per label, on the examples that know it: word 1-2-gram and character 2-5-gram
(`char_wb`) TF-IDF features, sublinear term frequency, `min_df=2`, concatenated, then an
L2 logistic regression with C=1 and balanced class weights (C picked on validation from
{1, 4, 10}). Thresholds are chosen on validation the same way as the LSTM's, so both
columns of a report are measured alike.

scikit-learn is a training/evaluation dependency only (the `dev` extra): the worker
never imports this module, and `retrain` skips the baseline, saying so, without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.data import Example
from model.errors import ModstreamError

BASELINE_NAME = "tfidf-word12-char25-logreg-C1"
BASELINE_C = 1.0


class BaselineUnavailableError(ModstreamError, ImportError):
    """scikit-learn is not installed."""


@dataclass
class Baseline:
    labels: tuple[str, ...]
    models: dict[str, Any]  # label → fitted sklearn Pipeline
    seconds: float
    name: str = BASELINE_NAME

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [n, labels] probabilities (NaN for a label without a model)."""
        out = np.full((len(texts), len(self.labels)), np.nan, dtype=np.float32)
        if not texts:
            return out
        for j, label in enumerate(self.labels):
            model = self.models.get(label)
            if model is not None:
                out[:, j] = model.predict_proba(list(texts))[:, 1]
        return out


def _pipeline(seed: int) -> Any:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union
    except ImportError as e:  # pragma: no cover - exercised where sklearn is absent
        raise BaselineUnavailableError(
            "scikit-learn is not installed (pip install -e '.[dev]')"
        ) from e
    features = make_union(
        TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2),
        TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(2, 5), min_df=2),
    )
    classifier = LogisticRegression(
        C=BASELINE_C, max_iter=2000, class_weight="balanced", random_state=seed
    )
    return make_pipeline(features, classifier)


def fit_baseline(
    examples: Sequence[Example],
    labels: Sequence[str],
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Baseline:
    """One pipeline per label on the examples whose mask knows it (both classes needed)."""
    started = time.perf_counter()
    models: dict[str, Any] = {}
    for j, label in enumerate(labels):
        known = [ex for ex in examples if ex.mask[j] > 0]
        targets = np.asarray([ex.targets[j] > 0.5 for ex in known], dtype=np.int64)
        if len(set(targets.tolist())) < 2:
            continue
        model = _pipeline(seed)
        model.fit([ex.text for ex in known], targets)
        models[label] = model
        if progress:
            progress(f"baseline {label}: fitted on {len(known)} examples")
    return Baseline(tuple(labels), models, time.perf_counter() - started)
