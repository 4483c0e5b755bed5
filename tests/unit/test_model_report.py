"""model/report.py: the evaluation report written into a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.build import retrain
from model.checkpoint import load_checkpoint, save_checkpoint
from model.data import LABELS
from model.report import JSON_FILE, MARKDOWN_FILE, REPORT_DIR
from model.train import TrainConfig
from tests.helpers import synthetic_config, synthetic_splits


def test_retrain_writes_report_inside_a_loadable_checkpoint(tmp_path: Path) -> None:
    lines: list[str] = []
    report = retrain(tmp_path / "ckpt", synthetic_config(), lines.append, splits=synthetic_splits())
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
    again = retrain(directory, synthetic_config(seed=7), lambda _: None, splits=synthetic_splits())
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
    retrain(tmp_path / "ckpt", synthetic_config(baseline=False), lambda _: None, synthetic_splits())
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


@pytest.mark.parametrize("move", [False, True])
def test_report_travels_with_the_checkpoint_into_a_store(tmp_path: Path, move: bool) -> None:
    from model.store import CheckpointStore

    config = synthetic_config(baseline=False, epochs=1)
    report = retrain(tmp_path / "ckpt", config, lambda _: None, synthetic_splits())
    store = CheckpointStore(tmp_path / "store")
    version = store.add(tmp_path / "ckpt", move=move)
    assert version == report.version
    copied = store.version_dir(version) / REPORT_DIR
    assert json.loads((copied / JSON_FILE).read_text())["version"] == version
    assert (copied / MARKDOWN_FILE).is_file()
    store.promote(version)
    assert load_checkpoint(store.root).version == version
