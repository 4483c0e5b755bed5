"""model/baseline.py: the TF-IDF baseline the LSTM is compared with."""

from __future__ import annotations

import numpy as np

from model.baseline import fit_baseline
from model.data import LABELS
from model.metrics import roc_auc
from tests.helpers import synthetic_splits


def test_baseline_fits_a_tiny_subset_and_separates_it() -> None:
    splits = synthetic_splits()
    baseline = fit_baseline(splits.train[:200], LABELS, seed=0)
    probs = baseline.predict([ex.text for ex in splits.test])
    assert probs.shape == (len(splits.test), 2) and probs.dtype == np.float32
    for j in range(2):
        known = [i for i, ex in enumerate(splits.test) if ex.mask[j] > 0]
        targets = np.array([splits.test[i].targets[j] for i in known])
        assert roc_auc(targets, probs[known, j]) > 0.9
    assert baseline.predict([]).shape == (0, 2)
