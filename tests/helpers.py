"""Shared helpers for tests that talk to the real broker or run the worker process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

if TYPE_CHECKING:  # torch stays unimported for the Kafka-only users (bench/)
    from model.data import DataSplits
    from model.network import Classifier
    from model.train_config import TrainConfig
    from model.vocab import Vocab

REPO_ROOT = Path(__file__).resolve().parents[1]


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.05
) -> Any:
    """Polls `condition` until truthy; fails with `what` when the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(step_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    partition_of: Callable[[int], int | None] | None = None,
) -> int:
    """Sends (key, value) pairs and waits for every acknowledgement; returns the count."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = []
        for n, (key, value) in enumerate(records):
            partition = partition_of(n) if partition_of else None
            futures.append(producer.send(topic, key=key, value=value, partition=partition))
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=30)
        return len(futures)
    finally:
        producer.close()


def request_bytes(message_id: str, text: str) -> bytes:
    return json.dumps({"id": message_id, "text": text}).encode()


@dataclass
class Consumed:
    key: bytes | None
    value: dict[str, Any]
    partition: int
    offset: int
    timestamp_ms: int


class TopicReader:
    """Reads a topic from the beginning without a group, accumulating records."""

    def __init__(
        self, bootstrap: str, topic: str, isolation_level: str = "read_uncommitted"
    ) -> None:
        self.topic = topic
        self.records: list[Consumed] = []
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            isolation_level=isolation_level,
        )
        partitions = wait_for(
            lambda: self._consumer.partitions_for_topic(topic), 30, f"partitions of {topic}"
        )
        self._tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)

    def poll(self) -> list[Consumed]:
        batch = self._consumer.poll(timeout_ms=200)
        new = [
            Consumed(r.key, json.loads(r.value), r.partition, r.offset, r.timestamp)
            for records in batch.values()
            for r in records
        ]
        self.records.extend(new)
        return new

    def read_to_end(self, timeout_s: float = 60) -> list[Consumed]:
        """Everything written to the topic so far (up to its current end offsets)."""
        ends = self._consumer.end_offsets(self._tps)

        def caught_up() -> bool:
            self.poll()
            return all(self._consumer.position(tp) >= end for tp, end in ends.items())

        wait_for(caught_up, timeout_s, f"the end of {self.topic}")
        return self.records

    def read_until(self, count: int, timeout_s: float = 60) -> list[Consumed]:
        def enough() -> bool:
            self.poll()
            return len(self.records) >= count

        wait_for(enough, timeout_s, f"{count} records on {self.topic} (have {len(self.records)})")
        return self.records

    def close(self) -> None:
        self._consumer.close()


def committed_offsets(bootstrap: str, group: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def wait_committed(
    bootstrap: str, group: str, topic: str, timeout_s: float, what: str
) -> dict[int, int]:
    """Waits until `group` has committed every partition of `topic` up to its end."""
    ends: dict[int, int] = {}

    def caught_up() -> bool:
        nonlocal ends
        ends = end_offsets(bootstrap, topic)
        return committed_offsets(bootstrap, group) == ends

    wait_for(caught_up, timeout_s, what)
    return ends


class WorkerProcess:
    """`modstream worker` as a real child process (real signals, real exit codes)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.metrics_port = int(env["MODSTREAM_METRICS_PORT"])
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2
            ) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.logs()}")
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout_s, "worker readiness", step_s=0.1)

    def stop(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the worker's /metrics (0 when absent or unreachable)."""
        status, body = self.get("/metrics")
        value = metric_value(body, name, **labels) if status == 200 else None
        return value if value is not None else 0.0

    def events(self, event: str) -> list[dict[str, Any]]:
        """The worker's JSON log lines whose `event` is `event`, in order."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
        return found

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]


def worker_process_env(
    bootstrap: str, topics: dict[str, str], group: str, **settings: str
) -> dict[str, str]:
    """The MODSTREAM_* variables of a `modstream worker` child process (tests and bench/):
    its broker, topics and group, /metrics on a free loopback port, the CPU. `settings`
    add or override (`log_level="debug"` is MODSTREAM_LOG_LEVEL)."""
    env = {
        "MODSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "MODSTREAM_INPUT_TOPIC": topics["input"],
        "MODSTREAM_OUTPUT_TOPIC": topics["output"],
        "MODSTREAM_DEAD_LETTER_TOPIC": topics["dead_letter"],
        "MODSTREAM_GROUP_ID": group,
        "MODSTREAM_METRICS_HOST": "127.0.0.1",
        "MODSTREAM_METRICS_PORT": str(free_port()),
        "MODSTREAM_DEVICE": "cpu",
    }
    env.update({f"MODSTREAM_{k.upper()}": v for k, v in settings.items()})
    return env


def worker_env(
    bootstrap: str, topics: dict[str, str], checkpoint: Path, group: str, **extra: str
) -> dict[str, str]:
    """A worker as the tests run it: this checkpoint, one torch thread, info logs."""
    defaults = {"checkpoint_dir": str(checkpoint), "torch_threads": "1", "log_level": "info"}
    return worker_process_env(bootstrap, topics, group, **(defaults | extra))


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a text exposition, or None when it is absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def start_worker(
    bootstrap: str,
    topics: dict[str, str],
    checkpoint: Path,
    tmp_path: Path,
    *,
    group: str | None = None,
    **extra: str,
) -> WorkerProcess:
    """A ready worker process (its own consumer group unless `group` is given)."""
    import uuid

    worker = WorkerProcess(
        worker_env(bootstrap, topics, checkpoint, group or f"g-{uuid.uuid4().hex[:8]}", **extra),
        tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log",
    )
    worker.wait_ready(timeout_s=120)
    return worker


def ids_of(records: Sequence[Consumed]) -> list[str]:
    return [r.value["id"] for r in records]


def tiny_model(texts: Sequence[str], seed: int, **config: Any) -> tuple[Classifier, Vocab]:
    """An untrained small classifier in eval mode (milliseconds to build), the same for
    the same seed; its vocabulary is the tokens of `texts`. `config` overrides
    `ModelConfig` fields; two labels, 8-d embeddings and 6 hidden units otherwise."""
    import torch

    from model.network import Classifier, ModelConfig
    from model.tokenizer import tokenize
    from model.vocab import Vocab

    torch.manual_seed(seed)
    vocab = Vocab.build([tokenize(" ".join(texts))], min_freq=1)
    defaults: dict[str, Any] = {"num_labels": 2, "embed_dim": 8, "hidden_dim": 6}
    model = Classifier(ModelConfig(vocab_size=len(vocab), **(defaults | config)))
    return model.eval(), vocab


def make_checkpoint(
    directory: Path,
    seed: int,
    labels: Sequence[str] = ("insult", "spam"),
    auc: float = 0.8,
    nan_weights: bool = False,
) -> str:
    """A small untrained checkpoint (milliseconds to write); different seeds, different
    versions. Returns the version."""
    import torch

    from model.checkpoint_save import save_checkpoint

    model, vocab = tiny_model(
        ["you idiot free prize call now hello"],
        seed,
        num_labels=len(labels),
        embed_dim=4,
        hidden_dim=3,
    )
    if nan_weights:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float("nan"))
    return save_checkpoint(
        directory,
        model,
        vocab,
        labels,
        dict.fromkeys(labels, 0.5),
        metrics={"validation": {label: {"roc_auc": auc} for label in labels}},
        created_at=f"2024-01-01T00:00:{seed % 60:02d}+00:00",
    )


class SteadyProducer:
    """Produces numbered requests at a bounded rate from a thread until stopped."""

    def __init__(self, bootstrap: str, topic: str, prefix: str, per_tick: int = 25) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, reconnect_backoff_max_ms=1000
        )
        self._topic = topic
        self._prefix = prefix
        self._per_tick = per_tick
        self._stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)

    def __enter__(self) -> SteadyProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        # Paced by the stop event's timeout: ~per_tick / 0.1 s messages per second.
        while not self._stop.wait(0.1):
            futures = [
                self._producer.send(
                    self._topic,
                    key=f"k-{self._prefix}-{n}".encode(),
                    value=request_bytes(f"{self._prefix}-{n}", f"steady message {n}"),
                )
                for n in range(self.sent, self.sent + self._per_tick)
            ]
            for future in futures:
                future.get(timeout=60)
            self.sent += len(futures)

    def stop(self) -> set[str]:
        """Stops producing; returns every id the broker acknowledged."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=90)
        self._producer.close(timeout=10)
        return {f"{self._prefix}-{n}" for n in range(self.sent)}


SYNTHETIC_FILLER = "the a of to and we you it is was on for with this that"


def synthetic_splits(seed: int = 0) -> DataSplits:
    """A learnable toy corpus, so training is tested even without the data packages:
    insult positives contain "idiot", spam positives "prize"; each example knows one label."""
    import random

    from model.data import LABELS, SOURCE_INSULTS, SOURCE_SMS, DataSplits, Example

    sources = {"insult": SOURCE_INSULTS, "spam": SOURCE_SMS}
    rng = random.Random(seed)
    filler = SYNTHETIC_FILLER.split()

    def make(label: str, positive: bool) -> Example:
        words = [rng.choice(filler) for _ in range(rng.randint(0, 12))]
        if positive:
            words.insert(rng.randint(0, len(words)), "idiot" if label == "insult" else "prize")
        i = LABELS.index(label)
        targets = tuple(float(positive) if j == i else 0.0 for j in range(len(LABELS)))
        mask = tuple(1.0 if j == i else 0.0 for j in range(len(LABELS)))
        return Example(" ".join(words), targets, mask, sources[label])

    def split(n: int) -> list[Example]:
        return [make(rng.choice(LABELS), rng.random() < 0.4) for _ in range(n)]

    return DataSplits(split(300), split(80), split(80), fingerprint="synthetic")


def synthetic_config(**overrides: Any) -> TrainConfig:
    """A `TrainConfig.tiny` that learns `synthetic_splits` well in a few seconds (all of
    it, 3 epochs), with the baseline and the report unless `overrides` say otherwise."""
    from model.train_config import TrainConfig

    base: dict[str, Any] = dict(
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
