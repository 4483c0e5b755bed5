"""`modstream worker` at start: MODSTREAM_THRESHOLDS and the store's policy file must fit
the model before anything connects (exit 2 / exit 3, naming what is wrong)."""

from __future__ import annotations

import json
from pathlib import Path

from model.store import CheckpointStore
from tests.helpers import free_port, make_checkpoint
from tests.unit.test_cli_help import imported, messages, modstream


def worker(checkpoint: Path, **env: str) -> tuple[int, str, set[str]]:
    done = modstream(
        "worker",
        env={
            "MODSTREAM_CHECKPOINT_DIR": str(checkpoint),
            "MODSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # never reached
            "MODSTREAM_METRICS_PORT": "0",
            "MODSTREAM_DEVICE": "cpu",
            **env,
        },
        importtime=True,
    )
    return done.returncode, messages(done.stderr), imported(done.stderr)


def test_bad_overrides_exit_2_naming_the_variable_before_torch_loads(tmp_path: Path) -> None:
    code, err, loaded = worker(tmp_path / "none", MODSTREAM_THRESHOLDS="insult=0.8,spam=1.5")
    assert code == 2
    assert "--thresholds / MODSTREAM_THRESHOLDS" in err and "spam: 1.5 must be in (0, 1]" in err
    assert "torch" not in loaded


def test_an_override_for_a_label_the_model_lacks_exits_2(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "plain", 1)
    code, err, _ = worker(tmp_path / "plain", MODSTREAM_THRESHOLDS="insult=0.8,threat=0.5")
    assert code == 2, err
    assert "MODSTREAM_THRESHOLDS: threat not among the checkpoint's labels (insult, spam)" in err
    assert '"event": "thresholds_unusable"' in err


def test_a_store_policy_the_model_does_not_fit_exits_3(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    make_checkpoint(tmp_path / "src", 1)
    store.promote(store.add(tmp_path / "src"))
    (store.root / "policy.json").write_text(
        json.dumps({"version": "p1", "thresholds": {"threat": 0.5}})
    )  # by hand: `checkpoints policy set` refuses it
    code, err, _ = worker(store.root)
    assert code == 3, err
    assert "policy p1 (policy.json) sets thresholds for threat" in err
