"""`modstream retrain` as a periodic job (feedback topic, gate, store) and `checkpoints`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model.data import DataNotFoundError, find_data_files
from model.engine import Engine
from model.store import CheckpointStore
from tests.helpers import REPO_ROOT, committed_offsets, end_offsets, make_checkpoint, produce

# Tiny, but trained long and hard enough (3 epochs, lr 0.01) for weighted feedback to
# move the scores of its texts clearly: measured +0.15..0.27 and -0.14..0.25.
# Like TrainConfig.tiny: a few dozen steps are too few for a weight average (EMA), which
# would mostly keep the starting weights and hide what the feedback changed.
TINY = [
    "--epochs", "3", "--lr", "0.01", "--limit", "400", "--eval-limit", "200",
    "--embed-dim", "16", "--hidden-dim", "16", "--max-vocab", "2000", "--device", "cpu",
    "--ema-decay", "0",
]  # fmt: skip
INSULTS = [
    "zorblat quintessa frumious bandersnatch",
    "you utter walnut of a person",
    "go boil your head, cabbage brain",
]
NOT_INSULTS = ["you are a stupid idiot", "shut up you moron", "what a pathetic loser"]


def modstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"one JSON line expected on stdout, got {done.stdout!r}"
    summary: dict[str, Any] = json.loads(lines[0])
    assert summary["exit_code"] == done.returncode
    return summary


def feedback(text: str, labels: dict[str, bool], n: int) -> bytes:
    return json.dumps(
        {
            "id": f"fb-{n}",
            "text": text,
            "labels": labels,
            "reviewer": "moderator-1",
            "decided_at": f"2024-05-01T12:00:{n:02d}Z",
        }
    ).encode()


@pytest.fixture(scope="module")
def data_installed() -> None:
    try:
        find_data_files()
    except DataNotFoundError as exc:
        pytest.skip(f"training data not installed: {exc}")


def test_retrain_with_feedback_moves_scores_promotes_and_the_gate_can_hold(
    data_installed: None,
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    store_root = tmp_path / "store"

    # 1. A first model: nothing is current, so it is promoted.
    base = modstream("retrain", "--store", str(store_root), *TINY)
    summary = summary_of(base)
    assert base.returncode == 0, base.stderr
    assert summary["status"] == "promoted" and summary["previous"] is None
    base_version = summary["version"]

    # 2. Moderators correct some texts; a few records are broken.
    topic = make_topics(partitions=2, roles=("feedback",))["feedback"]
    records: list[tuple[bytes | None, bytes | None]] = []
    for n, text in enumerate(INSULTS):
        records.append((None, feedback(text, {"insult": True}, n)))
    for n, text in enumerate(NOT_INSULTS, start=len(INSULTS)):
        records.append((None, feedback(text, {"insult": False}, n)))
    records += [
        (None, b"{not json"),
        (b"tombstone", None),
        (None, feedback("a new kind of harm", {"threat": True}, 40)),
        (None, json.dumps({"id": "x", "text": "no labels"}).encode()),
    ]
    produce(kafka_bootstrap, topic, records, partition_of=lambda n: n % 2)
    group = f"modstream-retrain-{uuid.uuid4().hex[:6]}"

    # 3. Retrain with the feedback, weighted so a handful of texts count.
    tuned = modstream(
        "retrain", "--store", str(store_root), "--feedback-topic", topic,
        "--kafka-bootstrap", kafka_bootstrap, "--feedback-group", group,
        "--feedback-weight", "20", "--force", *TINY,
    )  # fmt: skip
    summary = summary_of(tuned)
    assert tuned.returncode == 0, tuned.stderr
    assert summary["status"] == "promoted" and summary["previous"] == base_version
    fed = summary["feedback"]
    assert fed["consumed"] == len(records)
    assert fed["valid"] == len(INSULTS) + len(NOT_INSULTS)
    assert fed["skipped"] == {
        "invalid_json": 1,
        "null_value": 1,
        "unknown_label": 1,
        "missing_field": 1,
    }
    assert fed["merge"]["texts"] == 6 and fed["merge"]["train_examples_added"] == 6 * 20
    assert fed["committed"] is True
    assert committed_offsets(kafka_bootstrap, group) == end_offsets(kafka_bootstrap, topic)
    tuned_version = summary["version"]
    assert tuned_version != base_version

    # The corrected texts moved in the direction the moderators gave.
    texts = INSULTS + NOT_INSULTS
    store = CheckpointStore(store_root)
    before = Engine.load(store.version_dir(base_version), device="cpu").score(texts)
    after = Engine.load(store_root, device="cpu").score(texts)  # the store's current
    insult = list(after.probabilities[:, 0] - before.probabilities[:, 0])
    raised, lowered = insult[: len(INSULTS)], insult[len(INSULTS) :]
    assert all(delta > 0 for delta in raised) and sum(raised) / len(raised) > 0.05, insult
    assert all(delta < 0 for delta in lowered) and sum(lowered) / len(lowered) < -0.05, insult

    # 4. A gate that demands a big improvement holds the candidate; nothing changes.
    held = modstream("retrain", "--store", str(store_root), "--gate-tolerance", "-1", *TINY)
    summary = summary_of(held)
    assert held.returncode == 10, held.stderr
    assert summary["status"] == "held"
    assert summary["current"] == tuned_version and summary["previous"] == tuned_version
    assert summary["current_mean_auc"] is not None and "tolerance -1" in summary["reason"]
    assert store.current_version() == tuned_version
    assert summary["version"] in store.versions(), "a held candidate stays, promotable"

    listing = modstream("checkpoints", "list", "--store", str(store_root), "--json")
    assert listing.returncode == 0, listing.stderr
    document = json.loads(listing.stdout)
    assert document["current"] == tuned_version and document["previous"] == base_version
    assert [v["version"] for v in document["versions"]] == [
        base_version,
        tuned_version,
        summary["version"],
    ]


def test_retrain_reports_an_unreachable_feedback_topic_as_exit_4(
    data_installed: None, kafka_bootstrap: str, tmp_path: Path
) -> None:
    done = modstream(
        "retrain", "--store", str(tmp_path / "store"), "--feedback-topic", "no-such-topic",
        "--kafka-bootstrap", kafka_bootstrap, "--feedback-timeout-s", "5", *TINY,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    summary = summary_of(done)
    assert summary["status"] == "error" and "no-such-topic" in summary["error"]
    assert not (tmp_path / "store" / "current").exists()


def test_checkpoints_cli_exit_codes(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    store = CheckpointStore(store_root)
    make_checkpoint(tmp_path / "a", 1)
    make_checkpoint(tmp_path / "b", 2)
    a, b = store.add(tmp_path / "a"), store.add(tmp_path / "b")

    done = modstream("checkpoints", "list", "--store", str(store_root))
    assert done.returncode == 0 and a in done.stdout and b in done.stdout

    done = modstream("checkpoints", "promote", "0123456789ab", "--store", str(store_root))
    assert done.returncode == 2
    assert "0123456789ab" in done.stderr and a in done.stderr, "names the known versions"

    done = modstream("checkpoints", "rollback", "--store", str(store_root))
    assert done.returncode == 1 and "nothing to roll back" in done.stderr

    # MODSTREAM_CHECKPOINT_DIR may name the store root or its current link.
    for setting in (store_root, store_root / "current"):
        env = {"MODSTREAM_CHECKPOINT_DIR": str(setting)}
        done = modstream("checkpoints", "promote", a, env=env)
        assert done.returncode == 0, done.stderr
    assert store.current_version() == a
    done = modstream("checkpoints", "promote", b, env={"MODSTREAM_CHECKPOINT_DIR": str(store_root)})
    assert done.returncode == 0 and store.current_version() == b
    done = modstream("checkpoints", "rollback", "--store", str(store_root))
    assert done.returncode == 0 and store.current_version() == a

    # A plain checkpoint directory is not a store.
    done = modstream("checkpoints", "list", "--store", str(tmp_path / "a"))
    assert done.returncode == 2 and "plain checkpoint directory" in done.stderr

    # `retrain --output` refuses to overwrite a store's link with a plain directory.
    done = modstream("retrain", "--output", str(store_root / "current"), *TINY)
    assert done.returncode == 2 and "--store" in done.stderr
    assert summary_of(done)["status"] == "error"
