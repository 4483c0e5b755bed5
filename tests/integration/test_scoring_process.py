"""The worker with its model in a scoring process (`MODSTREAM_SCORING=process`), against
the real broker: the results the in-process worker would publish (scores, and flags by
the thresholds in effect), a scoring process
killed mid-stream costing nothing, and no process left behind at SIGTERM."""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from model.engine import Engine
from model.threshold_overrides import policy_version
from tests.helpers import (
    SteadyProducer,
    TopicReader,
    ids_of,
    produce,
    request_bytes,
    start_worker,
    wait_committed,
    wait_for,
)

pytestmark = pytest.mark.integration

TEXTS = [
    "you are a complete idiot",
    "Free entry! Text WIN to 87121 to claim your prize now",
    "see you at lunch tomorrow",
    "what a pathetic loser " + "and then some more words " * 80,  # several windows
    "",
]


def scoring_process_of(worker_pid: int) -> int:
    """The worker's one child process (Linux /proc)."""
    children = [
        int(pid)
        for task in Path(f"/proc/{worker_pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert len(children) == 1, children
    return children[0]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_results_are_the_in_process_ones_and_sigterm_leaves_no_process(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=3)
    messages = [
        (f"k-{n}".encode(), request_bytes(f"m-{n}", TEXTS[n % len(TEXTS)] + f" #{n}"))
        for n in range(200)
    ] + [(b"bad", b"{not json")]
    produce(kafka_bootstrap, topics["input"], messages)
    engine = Engine.load(tiny_checkpoint, device="cpu")
    texts = {f"m-{n}": TEXTS[n % len(TEXTS)] + f" #{n}" for n in range(200)}
    # MODSTREAM_THRESHOLDS moves one label's threshold so that at least one flag differs
    # from the checkpoint's: the worker, not the scoring process, applies thresholds.
    label, own = engine.labels[0], engine.thresholds[engine.labels[0]]
    column = sorted(
        {round(float(s.probabilities[0]), 6) for s in engine.score(list(texts.values())).texts()}
    )
    below = [p for p in column if 0.0 < p < own]
    override = below[-1] if below else min(1.0, column[-1] + 1e-6)
    thresholds = engine.thresholds | {label: override}
    group = f"g-process-{uuid.uuid4().hex[:8]}"
    worker = start_worker(
        kafka_bootstrap,
        topics,
        tiny_checkpoint,
        tmp_path,
        group=group,
        scoring="process",
        thresholds=f"{label}={override!r}",
    )
    child = scoring_process_of(worker.proc.pid)
    try:
        results = TopicReader(kafka_bootstrap, topics["output"]).read_until(200)
        dead = TopicReader(kafka_bootstrap, topics["dead_letter"]).read_until(1)
        wait_committed(kafka_bootstrap, group, topics["input"], 60, "every offset committed")
    finally:
        assert worker.stop() == 0, worker.logs()
    wait_for(lambda: gone(child), 10, "the scoring process to end with the worker")
    assert [e["mode"] for e in worker.events("scoring_mode")] == ["process"]
    assert len(worker.events("scoring_process_started")) == 1
    assert sorted(ids_of(results)) == sorted(f"m-{n}" for n in range(200))
    assert dead[0].value["error_kind"] == "invalid_json"
    scores = engine.score([texts[r.value["id"]] for r in results])
    flipped = 0
    for record, scored in zip(results, scores.texts(), strict=True):
        assert record.value["model_version"] == engine.version
        expected = {
            name: round(float(p), 6)
            for name, p in zip(engine.labels, scored.probabilities, strict=True)
        }
        assert record.value["category_scores"] == expected
        assert record.value["categories"] == {
            name: expected[name] >= thresholds[name] for name in engine.labels
        }
        assert record.value["policy_version"] == policy_version(None, {label: override})
        assert record.value["coverage"]["windows"] == len(scored.plan.windows)
        flipped += record.value["categories"][label] != (expected[label] >= own)
    assert flipped > 0, "the override changed no flag: the test would not notice it ignored"


def test_a_scoring_process_killed_mid_stream_loses_and_repeats_nothing(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=3)
    group = f"g-kill-{uuid.uuid4().hex[:8]}"
    worker = start_worker(
        kafka_bootstrap, topics, tiny_checkpoint, tmp_path, group=group, scoring="process"
    )
    first = scoring_process_of(worker.proc.pid)
    reader = TopicReader(kafka_bootstrap, topics["output"])
    try:
        with SteadyProducer(kafka_bootstrap, topics["input"], "s") as producer:
            reader.read_until(100)
            os.kill(first, signal.SIGKILL)
            wait_for(
                lambda: worker.metric("modstream_scoring_process_restarts_total") == 1,
                60,
                "the restart to be counted",
            )
            after_restart = producer.sent + 100
            reader.read_until(after_restart, timeout_s=120)
            second = scoring_process_of(worker.proc.pid)
        sent = producer.stop()
        wait_committed(kafka_bootstrap, group, topics["input"], 120, "every offset committed")
        results = reader.read_until(len(sent))
    finally:
        assert worker.stop() == 0, worker.logs()
    ids = Counter(ids_of(results))
    assert set(ids) == sent, f"lost: {sorted(sent - set(ids))[:5]}"
    assert max(ids.values()) == 1, "the batch in hand is scored again, not published twice"
    (died,) = worker.events("scoring_process_died")
    assert died["pid"] == first and died["ended"] == "killed by SIGKILL"
    assert second != first
