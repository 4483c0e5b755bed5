"""Hot reload in a running worker on the real broker: promote, corrupt, roll back, SIGHUP."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer

from model.checkpoint import META_FILE, WEIGHTS_FILE
from model.store import CheckpointStore
from tests.helpers import (
    REPO_ROOT,
    Consumed,
    TopicReader,
    WorkerProcess,
    ids_of,
    make_checkpoint,
    produce,
    request_bytes,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration


def reloads(worker: WorkerProcess, result: str) -> float:
    return worker.metric("modstream_model_reloads_total", result=result)


def add(store: CheckpointStore, tmp_path: Path, seed: int, **kwargs: object) -> str:
    source = tmp_path / f"src-{seed}"
    make_checkpoint(source, seed, **kwargs)  # type: ignore[arg-type]
    return store.add(source)


def checkpoints_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "checkpoints", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Flow:
    """Produces uniquely numbered requests in small chunks until stopped."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.sent: list[str] = []
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self._topic = topic
        self._partitions = partitions
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Flow:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            n = 0
            while not self._stop.is_set():
                futures = []
                for _ in range(30):
                    message_id = f"flow-{n}"
                    futures.append(
                        self._producer.send(
                            self._topic,
                            key=message_id.encode(),
                            value=request_bytes(message_id, f"message number {n}"),
                            partition=n % self._partitions,
                        )
                    )
                    n += 1
                for future in futures:
                    future.get(timeout=30)
                self.sent.extend(f"flow-{m}" for m in range(n - 30, n))
                self._stop.wait(0.05)  # pacing: a steady trickle, not synchronisation
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self._producer.close()
        assert self.error is None, self.error


def versions_by_partition(records: list[Consumed]) -> dict[int, list[str]]:
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for record in records:
        by_partition[record.value["partition"]].append(
            (record.value["offset"], record.value["model_version"])
        )
    return {p: [v for _, v in sorted(pairs)] for p, pairs in by_partition.items()}


def test_promotion_while_messages_flow_switches_once_per_partition_and_loses_nothing(
    kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    partitions = 3
    topics = make_topics(partitions=partitions)
    store = CheckpointStore(tmp_path / "store")
    old, new = add(store, tmp_path, 1), add(store, tmp_path, 2)
    store.promote(old)
    worker = start_worker(
        kafka_bootstrap,
        topics,
        store.root,
        tmp_path,
        reload_interval_s="0.2",
        max_batch_size="16",
    )
    reader = TopicReader(kafka_bootstrap, topics["output"])
    try:
        with Flow(kafka_bootstrap, topics["input"], partitions) as flow:
            reader.read_until(150, timeout_s=120)
            store.promote(new)

            def new_results() -> int:
                reader.poll()
                return sum(1 for r in reader.records if r.value["model_version"] == new)

            wait_for(lambda: new_results() >= 150, 120, "150 results from the new version")
        reader.read_until(len(flow.sent), timeout_s=120)
        assert reloads(worker, "ok") == 1
        assert reloads(worker, "failed") == 0
    finally:
        assert worker.stop() == 0, worker.logs()
    reader.read_to_end()
    ids = ids_of(reader.records)
    assert sorted(ids) == sorted(flow.sent), "every message answered"
    assert len(ids) == len(set(ids)), "and none twice"
    for partition, sequence in versions_by_partition(reader.records).items():
        switch = sequence.index(new) if new in sequence else len(sequence)
        assert 0 < switch < len(sequence), f"partition {partition} did not see both versions"
        assert set(sequence[:switch]) == {old}, f"partition {partition}: {sequence}"
        assert set(sequence[switch:]) == {new}, f"partition {partition}: switched back"
    assert [e["new_version"] for e in worker.events("model_swapped")] == [new]


def test_corrupt_checkpoints_never_serve_and_rollback_restores(
    kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    topics = make_topics(partitions=1)
    store = CheckpointStore(tmp_path / "store", keep=10)
    first, second = add(store, tmp_path, 1), add(store, tmp_path, 2)
    store.promote(first)
    # A threshold override for spam: a version without spam must not serve.
    worker = start_worker(
        kafka_bootstrap,
        topics,
        store.root,
        tmp_path,
        reload_interval_s="0.2",
        thresholds="spam=0.5",
    )
    reader = TopicReader(kafka_bootstrap, topics["output"])
    sent = 0

    def versions_of_next(count: int) -> set[str]:
        nonlocal sent
        produce(
            kafka_bootstrap,
            topics["input"],
            [(None, request_bytes(f"m-{n}", "hello")) for n in range(sent, sent + count)],
        )
        sent += count
        return {r.value["model_version"] for r in reader.read_until(sent)[sent - count :]}

    try:
        assert versions_of_next(10) == {first}
        store.promote(second)
        wait_for(lambda: reloads(worker, "ok") == 1, 120, "the second version swapped in")
        assert versions_of_next(10) == {second}

        truncated = add(store, tmp_path, 3)
        weights = store.versions_dir / truncated / WEIGHTS_FILE
        weights.write_bytes(weights.read_bytes()[:-100])
        bad_json = add(store, tmp_path, 4)
        (store.versions_dir / bad_json / META_FILE).write_text('{"version": "x", ')
        lacks_spam = add(store, tmp_path, 5, labels=("insult",))

        # The operator CLI refuses to promote files that do not load...
        refused = checkpoints_cli("promote", truncated, "--store", str(store.root))
        assert refused.returncode == 3, refused.stderr
        assert store.current_version() == second
        # ...but the worker must survive them anyway (disk damage, hand edits).
        for n, bad in enumerate((truncated, bad_json, lacks_spam), start=1):
            store.promote(bad, verify=False, allow_label_change=True)
            wait_for(lambda n=n: reloads(worker, "failed") == n, 120, f"failure {n} counted")
            assert versions_of_next(10) == {second}, "the old model keeps serving"
            assert worker.get("/readyz")[0] == 200
            rolled = checkpoints_cli("rollback", "--store", str(store.root))
            assert rolled.returncode == 0, rolled.stderr
            assert store.current_version() == second
        rolled = checkpoints_cli("rollback", "--store", str(store.root))
        assert rolled.returncode == 0 and first in rolled.stdout, rolled.stdout + rolled.stderr
        wait_for(lambda: reloads(worker, "ok") == 2, 120, "rolled back to the first version")
        assert versions_of_next(10) == {first}
        assert reloads(worker, "failed") == 3, "each bad version failed once, never retried"
        info = worker.metric(
            "modstream_model_info", device="cpu", labels="insult,spam", version=first
        )
        assert info == 1.0
    finally:
        assert worker.stop() == 0, worker.logs()
    failures = worker.events("model_reload_failed")
    assert [f["serving_version"] for f in failures] == [second] * 3
    assert "weights" in failures[0]["error"]
    assert "JSON" in failures[1]["error"]
    assert "MODSTREAM_THRESHOLDS sets thresholds for spam" in failures[2]["error"]


def test_sighup_checks_at_once_when_polling_is_off(
    kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    topics = make_topics(partitions=1)
    store = CheckpointStore(tmp_path / "store")
    old, new = add(store, tmp_path, 1), add(store, tmp_path, 2)
    store.promote(old)
    worker = start_worker(kafka_bootstrap, topics, store.root, tmp_path, reload_interval_s="0")
    try:
        store.promote(new)
        worker.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(worker, "ok") == 1, 120, "reload after SIGHUP")
        produce(kafka_bootstrap, topics["input"], [(b"k", request_bytes("after", "hello"))])
        results = TopicReader(kafka_bootstrap, topics["output"]).read_until(1)
        assert results[0].value["model_version"] == new
        assert worker.proc.poll() is None, "SIGHUP must not stop the worker"
    finally:
        assert worker.stop() == 0, worker.logs()
    assert [e["new_version"] for e in worker.events("model_swapped")] == [new]
