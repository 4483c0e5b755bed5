"""Baseline, thresholds, the evaluation report and reproducibility of retrain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.baseline import fit_baseline
from model.build import retrain
from model.checkpoint import load_checkpoint, save_checkpoint
from model.data import LABELS, SOURCE_INSULTS, SOURCE_SMS, Example
from model.engine import Engine
from model.evaluation import choose_thresholds, parse_target_precision
from model.metrics import precision_recall_f1, precision_threshold, roc_auc
from model.report import JSON_FILE, MARKDOWN_FILE, REPORT_DIR
from model.train import TrainConfig
from model.training_data import spam_negative, training_examples
from tests.unit.test_model_train import synthetic_splits

# ---------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("seed", range(4))
def test_precision_threshold_is_the_lowest_cut_reaching_the_precision(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.6 + 0.4 * targets, 2)
    cut = precision_threshold(targets, scores, 0.9)
    assert cut is not None
    precision, recall, _ = precision_recall_f1(targets, scores, cut)
    assert precision >= 0.9
    # No lower distinct score keeps the precision with more recall.
    for lower in np.unique(scores[scores < cut]):
        p, r, _ = precision_recall_f1(targets, scores, lower)
        assert p < 0.9 or r <= recall


def test_precision_threshold_unreachable_and_degenerate() -> None:
    targets, scores = np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1])
    assert precision_threshold(targets, scores, 1.0) is None
    assert precision_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3]), 0.5) is None


def test_choose_thresholds_with_configured_precision() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (300, 2)).astype(np.float32)
    probs = np.clip(rng.random((300, 2)) * 0.7 + 0.3 * targets, 0, 1).astype(np.float32)
    mask = np.ones_like(targets)
    notes: dict[str, str] = {}
    default = choose_thresholds(probs, targets, mask, LABELS)
    picked = choose_thresholds(
        probs, targets, mask, LABELS, parse_target_precision("spam=0.95"), notes
    )
    assert picked["insult"] == default["insult"]
    assert notes == {"insult": "max_f1", "spam": "precision>=0.95"}
    assert precision_recall_f1(targets[:, 1], probs[:, 1], picked["spam"])[0] >= 0.95
    assert picked["spam"] >= default["spam"]
    notes.clear()
    choose_thresholds(probs, targets, mask, LABELS, {"*": 1.01}, notes)
    assert all("unreachable" in rule for rule in notes.values())


def test_parse_target_precision() -> None:
    assert parse_target_precision("") == {}
    assert parse_target_precision("0.9") == {"*": 0.9}
    assert parse_target_precision("spam=0.98, insult=0.8") == {"spam": 0.98, "insult": 0.8}
    for bad in ("spam=x", "1.5", "spam=0"):
        with pytest.raises(ValueError, match="target_precision"):
            parse_target_precision(bad)
    with pytest.raises(ValueError, match="target_precision"):
        TrainConfig(target_precision="nope")


# ------------------------------------------------------------------------ data rule


def test_comments_become_spam_negatives_in_training_only() -> None:
    comment = Example("you idiot", (1.0, 0.0), (1.0, 0.0), SOURCE_INSULTS)
    sms = Example("win a prize", (0.0, 1.0), (0.0, 1.0), SOURCE_SMS)
    assert spam_negative(comment, LABELS) == Example(
        "you idiot", (1.0, 0.0), (1.0, 1.0), SOURCE_INSULTS
    )
    assert spam_negative(sms, LABELS) == sms
    splits = synthetic_splits()
    with_rule = training_examples(TrainConfig.tiny(comments_spam_negative=True), splits)
    without = training_examples(TrainConfig.tiny(comments_spam_negative=False), splits)
    assert len(with_rule) == len(without)
    assert sum(ex.mask[1] for ex in with_rule) > sum(ex.mask[1] for ex in without)


# ------------------------------------------------------------------------ baseline


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


# -------------------------------------------------------------------------- report


def report_config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(
        epochs=3,
        min_freq=1,
        eval_limit=None,
        limit=None,
        lr=0.01,
        subword_buckets=512,
        subword_dim=8,
        pooling="meanmax",
        comments_spam_negative=True,
        baseline=True,
        report=True,
    )
    return TrainConfig.tiny(**(base | overrides))


def test_retrain_writes_report_inside_a_loadable_checkpoint(tmp_path: Path) -> None:
    lines: list[str] = []
    report = retrain(tmp_path / "ckpt", report_config(), lines.append, splits=synthetic_splits())
    directory = tmp_path / "ckpt"
    assert report.report_dir == str(directory / REPORT_DIR)
    loaded = load_checkpoint(directory)  # report/ beside the files does not disturb loading
    assert loaded.version == report.version

    # Stable, gate-friendly shape: metrics["validation"][label]["roc_auc"].
    for label in LABELS:
        assert 0.0 <= loaded.metrics["validation"][label]["roc_auc"] <= 1.0
        assert "roc_auc" in loaded.metrics["baseline"]["test"][label]
    assert "spam_on_insults" in loaded.metrics["cross_domain"]["lstm"]["validation"]

    data = json.loads((directory / REPORT_DIR / JSON_FILE).read_text())
    assert data["version"] == report.version
    assert set(data["models"]) == {"lstm", "baseline"}
    spam_test = data["models"]["lstm"]["test"]["spam"]
    assert {"confusion", "roc_curve", "pr_curve", "calibration", "ece"} <= set(spam_test)
    assert sum(spam_test["confusion"].values()) == spam_test["examples"]
    assert data["history"] and "validation_loss" in data["history"][0]
    assert data["data"]["fingerprint"] == "synthetic"

    markdown = (directory / REPORT_DIR / MARKDOWN_FILE).read_text()
    for section in (
        "## Per-label metrics",
        "## Confusion matrices at the chosen thresholds",
        "## Cross-domain flag rates",
        "## Calibration",
        "## Figures",
        "## Training curve",
        "## Data",
        "| baseline |",
    ):
        assert section in markdown
    assert report.version in markdown
    pngs = sorted(p.name for p in (directory / REPORT_DIR).glob("*.png"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert pngs == []
    else:
        assert pngs == sorted(
            [f"{kind}_{label}.png" for kind in ("roc", "pr", "calibration") for label in LABELS]
            + ["training_curve.png"]
        )
        for name in pngs:
            assert (directory / REPORT_DIR / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({name})" in markdown
    assert any("baseline" in line for line in lines)

    # Replacing the checkpoint replaces the report with it.
    again = retrain(directory, report_config(seed=7), lambda _: None, splits=synthetic_splits())
    assert json.loads((directory / REPORT_DIR / JSON_FILE).read_text())["version"] == again.version


def test_report_without_matplotlib_still_writes_json_and_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    retrain(tmp_path / "ckpt", report_config(baseline=False), lambda _: None, synthetic_splits())
    files = sorted(p.name for p in (tmp_path / "ckpt" / REPORT_DIR).iterdir())
    assert files == [JSON_FILE, MARKDOWN_FILE]
    assert (
        "matplotlib is not installed"
        in (tmp_path / "ckpt" / REPORT_DIR / MARKDOWN_FILE).read_text()
    )


def test_extra_files_cannot_escape_or_replace_checkpoint_files(tmp_path: Path) -> None:
    splits = synthetic_splits()
    config = TrainConfig.tiny(min_freq=1, limit=60)
    retrain(tmp_path / "ok", config, lambda _: None, splits)
    loaded = load_checkpoint(tmp_path / "ok")
    for bad in ("../escape.txt", "model.json", "/abs.txt"):
        with pytest.raises(ValueError, match="extra checkpoint file"):
            save_checkpoint(
                tmp_path / "bad",
                loaded.model,
                loaded.vocab,
                loaded.labels,
                loaded.thresholds,
                extra_files=lambda _v, _c, bad=bad: {bad: b"x"},
            )
        assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------- reproducibility


def test_same_seed_gives_the_same_metrics(tmp_path: Path) -> None:
    config = report_config(baseline=False, report=False)
    first = retrain(tmp_path / "a", config, lambda _: None, synthetic_splits())
    second = retrain(tmp_path / "b", config, lambda _: None, synthetic_splits())
    for split in ("validation", "test"):
        for label in LABELS:
            a = getattr(first, split)[label]
            b = getattr(second, split)[label]
            for name in ("roc_auc", "f1", "precision", "recall", "threshold"):
                assert abs(a[name] - b[name]) <= 0.002, (split, label, name)
    texts = ["you idiot", "win a prize", "the a of"]
    a_scores = Engine.load(tmp_path / "a", device="cpu").score(texts).probabilities
    b_scores = Engine.load(tmp_path / "b", device="cpu").score(texts).probabilities
    np.testing.assert_allclose(a_scores, b_scores, atol=1e-6)


@pytest.mark.parametrize("move", [False, True])
def test_report_travels_with_the_checkpoint_into_a_store(tmp_path: Path, move: bool) -> None:
    from model.store import CheckpointStore

    config = report_config(baseline=False, epochs=1)
    report = retrain(tmp_path / "ckpt", config, lambda _: None, synthetic_splits())
    store = CheckpointStore(tmp_path / "store")
    version = store.add(tmp_path / "ckpt", move=move)
    assert version == report.version
    copied = store.version_dir(version) / REPORT_DIR
    assert json.loads((copied / JSON_FILE).read_text())["version"] == version
    assert (copied / MARKDOWN_FILE).is_file()
    store.promote(version)
    assert load_checkpoint(store.root).version == version
