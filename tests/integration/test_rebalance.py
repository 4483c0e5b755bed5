"""worker/rebalance.py on the real broker: a member joins under steady traffic.

kafka-python 3 runs the rebalance listener on its I/O thread, where a synchronous commit
raises; before the listener awaited an asynchronous commit, every revocation logged
`commit_failed` and the next owner repeated the batches in hand. Now the revoked
partitions are handed over exactly where their answers end: nothing is lost, nothing is
answered twice, and no commit fails.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    SteadyProducer,
    TopicReader,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    ids_of,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("pipeline_depth", "assignment"),
    [("0", "range"), (None, "range"), (None, "cooperative-sticky")],
    ids=["depth0-eager", "pipelined-eager", "pipelined-cooperative"],
)
def test_a_member_joining_under_traffic_takes_over_exactly_where_answers_end(
    pipeline_depth: str | None,
    assignment: str,
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    topics = make_topics(partitions=4)
    group = f"g-rebalance-{uuid.uuid4().hex[:8]}"
    options = {"assignment_strategy": assignment, "max_batch_size": "64"}
    if pipeline_depth is not None:
        options["pipeline_depth"] = pipeline_depth

    def start() -> WorkerProcess:
        return start_worker(
            kafka_bootstrap, topics, tiny_checkpoint, tmp_path, group=group, **options
        )

    reader = TopicReader(kafka_bootstrap, topics["output"])
    workers: list[WorkerProcess] = []
    with SteadyProducer(kafka_bootstrap, topics["input"], "r") as producer:
        try:
            workers.append(start())
            reader.read_until(200, timeout_s=120)
            workers.append(start())
            wait_for(
                lambda: all(
                    w.metric("modstream_assigned_partitions") == 2
                    and w.metric("modstream_messages_total", outcome="ok") > 0
                    for w in workers
                ),
                120,
                "two workers sharing the partitions, both answering",
                step_s=0.5,
            )
            sent = producer.stop()
            wait_for(
                lambda: (
                    committed_offsets(kafka_bootstrap, group)
                    == end_offsets(kafka_bootstrap, topics["input"])
                ),
                120,
                "every input offset committed",
                step_s=0.5,
            )
        finally:
            codes = [w.stop() for w in workers]
    assert codes == [0] * len(workers), [w.logs() for w in workers]
    ids = ids_of(reader.read_to_end())
    reader.close()

    revocations = workers[0].events("partitions_revoked")
    failures = [e for w in workers for e in w.events("commit_failed")]
    failures += [e for w in workers for e in w.events("revocation_failed")]
    duplicates = sum(count - 1 for count in Counter(ids).values())
    record_property("duplicates", duplicates)
    record_property("revocations", len(revocations))
    print(f"\n{len(sent)} inputs, {len(revocations)} revocations, duplicates {duplicates}")
    assert revocations, "the first worker handed partitions over"
    assert not failures, failures
    assert all(e["batches_left_in_flight"] == 0 for e in revocations), revocations
    assert sent <= set(ids), f"{len(sent - set(ids))} ids lost"
    # Every answered record was committed before its partition moved, and every record
    # in hand but unanswered was released: the new owner repeats none.
    assert duplicates == 0, [i for i, c in Counter(ids).items() if c > 1][:10]
