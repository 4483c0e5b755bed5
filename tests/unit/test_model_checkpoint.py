from __future__ import annotations

import builtins
import json
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import model.checkpoint_save as checkpoint_save_module
from model.checkpoint import (
    META_FILE,
    RETIRED_CONFIG_FIELDS,
    WEIGHTS_FILE,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMissingError,
    CheckpointVersionError,
    RetiredFeatureError,
    compute_version,
    default_checkpoint_dir,
    load_checkpoint,
)
from model.checkpoint_save import save_checkpoint
from model.engine import Engine
from model.errors import ExitCode
from model.network import Classifier, ModelConfig
from model.tokenizer import TOKENIZER_V2, TOKENIZER_VERSION
from model.vocab import Vocab
from tests.helpers import make_checkpoint, tiny_model

LABELS = ("insult", "spam")
TEXTS = ["you idiot", "", "free prize, call now!!!", "hello there friend " * 20, "ok"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(seed: int = 0) -> tuple[Classifier, Vocab]:
    return tiny_model(TEXTS, seed)


def save(directory: Path, model: Classifier, vocab: Vocab, **kwargs: Any) -> str:
    defaults: dict[str, Any] = dict(
        thresholds={"insult": 0.4, "spam": 0.7},
        metrics={"validation": {"insult": {"roc_auc": 0.9, "nan_metric": float("nan")}}},
        data_fingerprint="abc123",
        created_at="2024-01-01T00:00:00+00:00",
    )
    return save_checkpoint(directory, model, vocab, LABELS, **(defaults | kwargs))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    model, vocab = build()
    save(tmp_path / "ckpt", model, vocab)
    return tmp_path / "ckpt"


def test_round_trip_gives_identical_scores_and_metadata(tmp_path: Path) -> None:
    model, vocab = build()
    version = save(tmp_path / "ckpt", model, vocab)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.version == version
    assert loaded.labels == LABELS
    assert loaded.thresholds == {"insult": 0.4, "spam": 0.7}
    assert loaded.vocab == vocab
    assert loaded.config == model.config
    assert loaded.data_fingerprint == "abc123"
    assert loaded.metrics["validation"]["insult"]["nan_metric"] is None  # NaN → null
    assert not loaded.model.training

    before = Engine.from_model(model, vocab, LABELS, device="cpu").score(TEXTS).probabilities
    engine = Engine.load(tmp_path / "ckpt", device="cpu")
    assert engine.version == version
    assert engine.thresholds == loaded.thresholds
    np.testing.assert_array_equal(engine.score(TEXTS).probabilities, before)


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    model, vocab = build(seed=0)
    first = save(tmp_path / "a", model, vocab)
    assert save(tmp_path / "b", model, vocab) == first  # same content, same version
    with torch.no_grad():
        model.head.bias.add_(0.01)
    assert save(tmp_path / "c", model, vocab) != first
    assert save(tmp_path / "d", *build(seed=0), thresholds={"insult": 0.5, "spam": 0.7}) != first


def test_saving_over_an_existing_checkpoint_replaces_it_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "current"
    first = save(target, *build(seed=0))
    second = save(target, *build(seed=1))
    assert first != second
    assert load_checkpoint(target).version == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]  # no temp/old dirs left
    assert sorted(p.name for p in target.iterdir()) == [META_FILE, WEIGHTS_FILE]


def test_weights_file_is_plain_safetensors(checkpoint: Path) -> None:
    raw = (checkpoint / WEIGHTS_FILE).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert "head.weight" in header
    assert not raw.startswith(b"\x80")  # not a pickle stream


def test_loading_never_unpickles(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle must not be used to load checkpoints")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert load_checkpoint(checkpoint).version


def test_missing_directory_and_files(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(CheckpointMissingError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (checkpoint / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointMissingError, match=WEIGHTS_FILE):
        load_checkpoint(checkpoint)


def test_truncated_weights(checkpoint: Path) -> None:
    weights = checkpoint / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointCorruptError, match=WEIGHTS_FILE):
        load_checkpoint(checkpoint)


def test_empty_weights(checkpoint: Path) -> None:
    (checkpoint / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(CheckpointCorruptError, match="empty"):
        load_checkpoint(checkpoint)


def test_bad_json(checkpoint: Path) -> None:
    (checkpoint / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointCorruptError, match=r"model\.json is not valid JSON"):
        load_checkpoint(checkpoint)


def edit_meta(checkpoint: Path, **changes: Any) -> None:
    path = checkpoint / META_FILE
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"labels": None}, "labels"),
        ({"labels": ["insult"]}, "labels"),
        ({"labels": "insult"}, "labels"),
        ({"thresholds": {"insult": 0.5}}, "thresholds"),
        ({"thresholds": {"insult": 0.5, "spam": 2.0}}, "thresholds.spam"),
        ({"config": {"vocab_size": 3}}, "config"),
        ({"vocab": {"tokens": ["a"]}}, "vocab"),
        ({"version": 7}, "version"),
        ({"created_at": None}, "created_at"),
    ],
)
def test_invalid_fields_are_named(checkpoint: Path, changes: dict[str, Any], field: str) -> None:
    edit_meta(checkpoint, **changes)
    with pytest.raises(CheckpointCorruptError, match=f"field '{field}'"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        (["Insult", "spam"], "'Insult' is not a label name"),
        (["insult", "insult"], "label 'insult' appears twice"),
        (["insult", "text"], "'text' is reserved"),
        (["insult", "spam=0.8"], "is not a label name"),
        (["insult", 3], "label names are strings"),
    ],
)
def test_labels_follow_the_label_name_rule(
    checkpoint: Path, labels: list[object], says: str
) -> None:
    edit_meta(checkpoint, labels=labels, thresholds=dict.fromkeys(map(str, labels), 0.5))
    with pytest.raises(CheckpointCorruptError, match="field 'labels'") as raised:
        load_checkpoint(checkpoint)
    assert says in str(raised.value)


def test_any_valid_label_set_loads(tmp_path: Path) -> None:
    """A taxonomy of its own, in its own order, loads with its thresholds."""
    labels = ("self_harm", "harassment", "scam")
    version = make_checkpoint(tmp_path / "own", 4, labels=labels)
    loaded = load_checkpoint(tmp_path / "own")
    assert (loaded.version, loaded.labels) == (version, labels)
    assert loaded.thresholds == dict.fromkeys(labels, 0.5)


def test_unsupported_format_version(checkpoint: Path) -> None:
    edit_meta(checkpoint, format_version=99)
    with pytest.raises(CheckpointVersionError, match="format_version 99"):
        load_checkpoint(checkpoint)


def test_other_tokenizer_version(checkpoint: Path) -> None:
    edit_meta(checkpoint, tokenizer="some-other-tokenizer")
    with pytest.raises(CheckpointVersionError, match="tokenizer"):
        load_checkpoint(checkpoint)


def test_shapes_that_do_not_match_the_config(checkpoint: Path) -> None:
    meta = json.loads((checkpoint / META_FILE).read_text())
    edit_meta(checkpoint, config=meta["config"] | {"hidden_dim": 7})
    with pytest.raises(CheckpointCorruptError, match=r"tensor '.*' is torch\.float32\[.*config"):
        load_checkpoint(checkpoint)


def test_weights_from_another_model_are_rejected(tmp_path: Path) -> None:
    model, vocab = build()
    save(tmp_path / "small", model, vocab)
    bigger = Classifier(ModelConfig(vocab_size=len(vocab), num_labels=2, embed_dim=8, hidden_dim=9))
    save(tmp_path / "big", bigger, vocab)
    (tmp_path / "small" / WEIGHTS_FILE).write_bytes((tmp_path / "big" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointCorruptError, match="needs"):
        load_checkpoint(tmp_path / "small")


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, bad_value: float) -> None:
    """Saved with a consistent content hash, so only the finiteness check can catch it."""
    model, vocab = build()
    with torch.no_grad():
        model.head.weight[0, 0] = bad_value
    save(tmp_path / "ckpt", model, vocab)
    with pytest.raises(CheckpointCorruptError, match="NaN or infinite"):
        load_checkpoint(tmp_path / "ckpt")


def test_tampered_content_fails_the_version_check(tmp_path: Path, checkpoint: Path) -> None:
    edit_meta(checkpoint, thresholds={"insult": 0.1, "spam": 0.7})
    with pytest.raises(CheckpointCorruptError, match="does not match content hash"):
        load_checkpoint(checkpoint)
    # Same-shape weights from another checkpoint: mixed files are detected too.
    other = tmp_path / "other"
    save(other, *build(seed=5))
    save(checkpoint, *build(seed=0))
    (checkpoint / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointCorruptError, match="does not match content hash"):
        load_checkpoint(checkpoint)


def add_config_fields(checkpoint: Path, **extra: Any) -> None:
    """Adds `extra` to model.json's config and re-hashes the version, as the code of
    that time wrote them (so only the fields themselves can make loading fail)."""
    path = checkpoint / META_FILE
    meta = json.loads(path.read_text())
    meta["config"] |= extra
    meta["version"] = compute_version((checkpoint / WEIGHTS_FILE).read_bytes(), meta)
    path.write_text(json.dumps(meta))


def test_a_checkpoint_with_the_wide_path_off_still_loads_and_scores_the_same(
    checkpoint: Path,
) -> None:
    before = Engine.load(checkpoint, device="cpu").score(TEXTS).probabilities
    add_config_fields(checkpoint, **RETIRED_CONFIG_FIELDS)
    assert '"wide_dropout": 0.0' in (checkpoint / META_FILE).read_text()  # as written then
    loaded = load_checkpoint(checkpoint)
    assert loaded.config == build()[0].config
    assert not any(name.startswith("wide") for name in loaded.model.state_dict())
    engine = Engine.load(checkpoint, device="cpu")
    np.testing.assert_array_equal(engine.score(TEXTS).probabilities, before)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wide_buckets", 262_144),
        ("wide_word_max_n", 1),
        ("wide_char_min_n", 3),
        ("wide_char_max_n", 0),
        ("wide_dropout", 0.5),
        ("wide_buckets", False),  # a bool is not the number 0
        ("wide_buckets", "0"),
        ("wide_dropout", None),
    ],
)
def test_a_retired_field_at_another_value_is_refused_by_name(
    checkpoint: Path, field: str, value: Any
) -> None:
    add_config_fields(checkpoint, **(dict(RETIRED_CONFIG_FIELDS) | {field: value}))
    pattern = re.escape(f"field 'config.{field}' is {value!r}") + ".*wide path.*removed"
    with pytest.raises(RetiredFeatureError, match=pattern) as caught:
        Engine.load(checkpoint, device="cpu")
    assert isinstance(caught.value, CheckpointError)
    assert caught.value.exit_code is ExitCode.CHECKPOINT


def test_all_errors_share_a_base_class() -> None:
    for error in (
        CheckpointMissingError,
        CheckpointCorruptError,
        CheckpointVersionError,
        RetiredFeatureError,
    ):
        assert issubclass(error, CheckpointError)


def test_failed_save_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "current"
    version = save(target, *build(seed=0))
    real_open = builtins.open

    def failing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode and str(file).endswith(META_FILE):
            raise OSError("disk full")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(OSError, match="disk full"):
        save(target, *build(seed=1))
    monkeypatch.undo()
    assert load_checkpoint(target).version == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]


def test_default_checkpoint_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODSTREAM_CHECKPOINT_DIR", str(tmp_path / "x"))
    assert default_checkpoint_dir() == tmp_path / "x"
    monkeypatch.delenv("MODSTREAM_CHECKPOINT_DIR")
    assert default_checkpoint_dir().parts[-2:] == ("checkpoints", "current")


def test_a_checkpoint_of_the_previous_tokenizer_still_serves_as_it_was_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A v2 checkpoint (before rule 6 joined spelled-out words) loads after an upgrade
    and reads texts with v2's rules; a v3 one joins them."""
    model, vocab = build()
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_save_module, "TOKENIZER_VERSION", TOKENIZER_V2)
        save(tmp_path / "v2", model, vocab)
    save(tmp_path / "v3", model, vocab)
    assert load_checkpoint(tmp_path / "v2").tokenizer == TOKENIZER_V2
    assert load_checkpoint(tmp_path / "v3").tokenizer == TOKENIZER_VERSION

    text = "you are so s t u p i d today"

    def tokens(directory: Path) -> tuple[str, ...]:
        (window,) = Engine.load(directory, device="cpu")._planner.plan(text).windows
        return window.tokens

    assert "stupid" not in tokens(tmp_path / "v2")
    assert tokens(tmp_path / "v2")[3:9] == ("s", "t", "u", "p", "i", "d")
    assert "stupid" in tokens(tmp_path / "v3")
