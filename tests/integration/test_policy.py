"""Thresholds and taxonomies that change while a worker runs, on the real broker: the
store's policy file flips `flagged` without retraining; a promotion that adds a label
reaches results and metrics, and one that removes it needs the operator's flag."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model.engine import Engine
from model.store import CheckpointStore
from tests.helpers import Consumed, TopicReader, ids_of, start_worker, wait_for
from tests.integration.test_reload import Flow, add, checkpoints_cli

pytestmark = pytest.mark.integration

NEW_POLICY = "flip-1"


def sequences(
    records: list[Consumed], field: Callable[[dict[str, Any]], object]
) -> dict[int, list[object]]:
    """Per partition, `field` of each result in offset order."""
    by_partition: dict[int, list[tuple[int, object]]] = defaultdict(list)
    for record in records:
        by_partition[record.value["partition"]].append(
            (record.value["offset"], field(record.value))
        )
    return {p: [v for _, v in sorted(pairs)] for p, pairs in by_partition.items()}


def switches_once(sequence: list[object], old: object, new: object) -> bool:
    """`old` … `old` `new` … `new`, both present."""
    if new not in sequence or sequence[0] != old:
        return False
    at = sequence.index(new)
    return set(sequence[:at]) == {old} and set(sequence[at:]) == {new}


def flipping_threshold(engine: Engine) -> float:
    """An insult threshold that flags the flow's messages the other way round from the
    checkpoint's 0.5 (their scores, from an untrained model, sit close together)."""
    scores = engine.score([f"message number {n}" for n in range(200)]).probabilities[:, 0]
    if float(sorted(scores)[100]) >= 0.5:
        return round((float(scores.max()) + 1.0) / 2, 6)
    return round(float(scores.min()) / 2, 6)


def test_a_policy_file_change_flips_flagged_while_messages_flow(
    kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    partitions = 2
    topics = make_topics(partitions=partitions)
    store = CheckpointStore(tmp_path / "store")
    version = add(store, tmp_path, 1)
    store.promote(version)
    threshold = flipping_threshold(Engine.load(store.root, device="cpu"))
    policy = tmp_path / "flip.json"
    policy.write_text(json.dumps({"version": NEW_POLICY, "thresholds": {"insult": threshold}}))
    worker = start_worker(
        kafka_bootstrap, topics, store.root, tmp_path, reload_interval_s="0.2", max_batch_size="16"
    )
    reader = TopicReader(kafka_bootstrap, topics["output"])
    try:
        with Flow(kafka_bootstrap, topics["input"], partitions) as flow:
            reader.read_until(100, timeout_s=120)
            done = checkpoints_cli("policy", "set", str(policy), "--store", str(store.root))
            assert done.returncode == 0, done.stderr

            def under_new_policy() -> int:
                reader.poll()
                return sum(1 for r in reader.records if r.value["policy_version"] == NEW_POLICY)

            wait_for(lambda: under_new_policy() >= 100, 120, "100 results under the new policy")
        reader.read_until(len(flow.sent), timeout_s=120)
        assert worker.metric("modstream_policy_reloads_total", result="ok") == 1
        assert worker.metric("modstream_category_threshold", category="insult") == threshold
        assert worker.metric("modstream_model_reloads_total", result="ok") == 0, "no retraining"
    finally:
        assert worker.stop() == 0, worker.logs()
    reader.read_to_end()
    ids = ids_of(reader.records)
    assert sorted(ids) == sorted(flow.sent) and len(ids) == len(set(ids)), "each answered once"
    flipped = 0
    for record in reader.records:
        result = record.value
        score, flag = result["category_scores"]["insult"], result["categories"]["insult"]
        assert result["model_version"] == version
        in_effect = threshold if result["policy_version"] == NEW_POLICY else 0.5
        assert result["policy_version"] in ("checkpoint", NEW_POLICY)
        assert flag is (score >= in_effect), result
        assert result["categories"]["spam"] is (result["category_scores"]["spam"] >= 0.5)
        flipped += result["policy_version"] == NEW_POLICY and flag is not (score >= 0.5)
    assert flipped >= 100, "the new policy changed flagged, without a new model"
    for partition, sequence in sequences(reader.records, lambda v: v["policy_version"]).items():
        assert switches_once(sequence, "checkpoint", NEW_POLICY), f"partition {partition}"
    (change,) = [e for e in worker.events("thresholds_changed") if e["reason"] == "policy"]
    assert change["policy_version"] == NEW_POLICY and change["thresholds"]["insult"] == threshold
    assert change["sources"] == {"insult": f"policy {NEW_POLICY}", "spam": "checkpoint"}


def test_a_promotion_that_adds_a_label_reaches_results_and_metrics_and_removing_it_is_asked(
    kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    partitions = 2
    topics = make_topics(partitions=partitions)
    store = CheckpointStore(tmp_path / "store", keep=10)
    old = add(store, tmp_path, 1)
    wider = add(store, tmp_path, 2, labels=("insult", "spam", "threat"))
    narrower = add(store, tmp_path, 3, labels=("insult", "spam"))
    store.promote(old)
    worker = start_worker(
        kafka_bootstrap, topics, store.root, tmp_path, reload_interval_s="0.2", max_batch_size="16"
    )
    reader = TopicReader(kafka_bootstrap, topics["output"])

    def results_of(model_version: str) -> int:
        reader.poll()
        return sum(1 for r in reader.records if r.value["model_version"] == model_version)

    try:
        with Flow(kafka_bootstrap, topics["input"], partitions) as flow:
            reader.read_until(60, timeout_s=120)
            promoted = checkpoints_cli("promote", wider, "--store", str(store.root))
            assert promoted.returncode == 0 and "labels added: threat" in promoted.stdout
            wait_for(lambda: results_of(wider) >= 60, 120, "60 results with the new label")
            assert worker.metric("modstream_category_score_count", category="threat") > 0
            assert worker.metric("modstream_model_label_changes_total", change="added") == 1

            refused = checkpoints_cli("promote", narrower, "--store", str(store.root))
            assert refused.returncode == 2 and "removes label(s) threat" in refused.stderr
            assert store.current_version() == wider
            allowed = checkpoints_cli(
                "promote", narrower, "--allow-label-change", "--store", str(store.root)
            )
            assert allowed.returncode == 0, allowed.stderr
            wait_for(lambda: results_of(narrower) >= 60, 120, "60 results without it")
        reader.read_until(len(flow.sent), timeout_s=120)
        _, metrics = worker.get("/metrics")
        assert 'category="threat"' not in metrics, "the removed category's series are gone"
        assert worker.metric("modstream_model_label_changes_total", change="removed") == 1
    finally:
        assert worker.stop() == 0, worker.logs()
    reader.read_to_end()
    ids = ids_of(reader.records)
    assert sorted(ids) == sorted(flow.sent) and len(ids) == len(set(ids)), "each answered once"
    keys = {
        old: ["insult", "spam"],
        wider: ["insult", "spam", "threat"],
        narrower: ["insult", "spam"],
    }
    for record in reader.records:
        result = record.value
        assert sorted(result["category_scores"]) == keys[result["model_version"]], result
        assert sorted(result["categories"]) == keys[result["model_version"]], result
    for partition, sequence in sequences(reader.records, lambda v: v["model_version"]).items():
        at_wider, at_narrower = sequence.index(wider), sequence.index(narrower)
        assert set(sequence[:at_wider]) == {old}, f"partition {partition}"
        assert set(sequence[at_wider:at_narrower]) == {wider}, f"partition {partition}"
        assert set(sequence[at_narrower:]) == {narrower}, f"partition {partition}"
    changes = worker.events("model_labels_changed")
    assert [(e["added"], e["removed"]) for e in changes] == [(["threat"], []), ([], ["threat"])]
