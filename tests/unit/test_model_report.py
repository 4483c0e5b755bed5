"""model/report.py: the evaluation report written into a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.build import retrain
from model.checkpoint import load_checkpoint
from model.checkpoint_save import save_checkpoint
from model.data import LABELS
from model.report import JSON_FILE, MARKDOWN_FILE, REPORT_DIR
from model.train_config import TrainConfig
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
    # Long messages, short benign chat and probes, for both models where they apply.
    for split in ("validation", "test"):
        long = data["long_messages"][split]
        assert (
            long["messages"]
            == loaded.metrics["validation" if split == "validation" else "test"]["insult"][
                "examples"
            ]
        )
        for name in ("lstm", "baseline"):
            assert 0.0 <= long[name]["roc_auc"] <= 1.0
            assert {"plain_roc_auc", "ceiling_roc_auc", "recall", "negative_flag_rate"} <= set(
                long[name]
            )
        short = data["short_benign"][split]
        assert short["examples"] > 0 and 0.0 <= short["lstm"]["insult"]["flag_rate"] <= 1.0
    assert len(data["probes"]) >= 10 and {"score", "ok"} <= set(data["probes"][0])
    assert loaded.metrics["long_messages"]["test"]["lstm"]["roc_auc"] == pytest.approx(
        data["long_messages"]["test"]["lstm"]["roc_auc"]
    )

    markdown = (directory / REPORT_DIR / MARKDOWN_FILE).read_text()
    for section in (
        "## Per-label metrics",
        "## Confusion matrices at the chosen thresholds",
        "## Cross-domain flag rates",
        "## Long messages",
        "## Short benign chat",
        "## Probes",
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


def _sample_report() -> dict[str, object]:
    """A report of two models on both splits, from random scores with real structure."""
    import numpy as np

    from model.report_data import Scored, SplitData, build_report

    rng = np.random.default_rng(0)
    labels = ("insult", "spam")
    splits, models = {}, {"lstm": {}, "baseline": {}}  # type: ignore[var-annotated]
    for split in ("validation", "test"):
        targets = (rng.random((300, 2)) < 0.3).astype(np.float32)
        splits[split] = SplitData(targets, np.ones_like(targets), ["insults"] * 300)
        for name, noise in (("lstm", 0.3), ("baseline", 0.5)):
            scores = np.clip(targets * 0.35 + rng.random((300, 2)) * (0.4 + noise), 0, 1)
            models[name][split] = Scored(scores, {"insult": 0.5, "spam": 0.45})
    history = [
        {
            "epoch": float(e),
            "train_loss": 1 / e,
            "validation_loss": 1.2 / e,
            "validation_mean_auc": 0.8,
        }
        for e in (1, 2, 3)
    ]
    return build_report(labels, splits, models, {"history": history, "best_epoch": 2})


def test_figures_are_readable_and_mark_thresholds_kept_epoch_and_bin_counts() -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    from model.report_figures import FIGURE_DPI, figures, operating_point, render_images

    report = _sample_report()
    drawn = figures(report)
    colours: dict[str, set[str]] = {}
    for name in ("roc_insult.png", "pr_insult.png", "calibration_insult.png"):
        for line in drawn[name].axes[0].get_lines():
            model = line.get_label().split(" ")[0]
            if model in ("lstm", "baseline"):
                colours.setdefault(model, set()).add(to_hex(line.get_color()))
    assert len(colours["lstm"]) == 1 and len(colours["baseline"]) == 1, "one colour per model"
    assert colours["lstm"] != colours["baseline"]

    section = report["models"]["lstm"]["test"]["insult"]  # type: ignore[index]
    roc = drawn["roc_insult.png"].axes[0]
    (marker,) = [
        line for line in roc.get_lines() if line.get_label() == "lstm test at threshold 0.500"
    ]
    assert tuple(marker.get_xydata()[0]) == pytest.approx(operating_point(section, "roc_curve"))
    pr = drawn["pr_insult.png"].axes[0]
    assert [line for line in pr.get_lines() if "at threshold" in str(line.get_label())]

    reliability, counts = drawn["calibration_insult.png"].axes
    written = sorted(int(text.get_text()) for text in reliability.texts)
    expected = sorted(
        b["count"]
        for name in ("lstm", "baseline")
        for b in report["models"][name]["test"]["insult"]["calibration"]  # type: ignore[index]
    )
    assert written == expected, "every bin's count is written beside its point"
    assert sorted(int(bar.get_height()) for bar in counts.patches) == expected

    for ax in drawn["training_curve.png"].axes:
        assert any(line.get_label() == "kept: epoch 2" for line in ax.get_lines())

    for name, png in render_images(report).items():
        width = int.from_bytes(png[16:20], "big")
        height = int.from_bytes(png[20:24], "big")
        assert width >= 600 and height >= 500, f"{name} is {width}x{height} px"
    assert FIGURE_DPI >= 100


def test_cross_domain_rates_cover_only_sources_that_never_know_the_label() -> None:
    """From the masks: the user's rows know `threat` (some of them), so no
    `threat_on_user`; the insult comments never do, so `threat_on_insults`; and
    `insult_on_user` only counts because no user row knows insult."""
    import numpy as np

    from model.report_data import Scored, SplitData, cross_domain

    labels = ("insult", "threat")
    sources = ["insults", "insults", "user", "user", "user"]
    mask = np.asarray([[1, 0], [1, 0], [0, 1], [0, 0], [0, 1]], np.float32)
    targets = np.asarray([[1, 0], [0, 0], [0, 1], [0, 0], [0, 0]], np.float32)
    scores = np.asarray([[0.9, 0.8], [0.1, 0.2], [0.7, 0.9], [0.2, 0.1], [0.6, 0.3]])
    crossed = cross_domain(
        SplitData(targets, mask, sources), Scored(scores, {"insult": 0.5, "threat": 0.5}), labels
    )
    assert set(crossed) == {"insult_on_user", "threat_on_insults"}
    assert crossed["insult_on_user"]["examples"] == 3
    assert crossed["insult_on_user"]["flag_rate"] == pytest.approx(2 / 3)
    assert crossed["threat_on_insults"]["flag_rate"] == pytest.approx(1 / 2)
