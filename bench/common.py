"""Shared pieces of the benchmark suite: broker, real texts, topics, worker process."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# The offset queries and bounded wait the tests use, so both agree on "drained".
from tests.helpers import committed_offsets as committed  # noqa: E402
from tests.helpers import end_offsets, free_port, wait_for, worker_process_env  # noqa: E402

__all__ = ["committed", "end_offsets", "free_port"]


def wait_until(condition: Any, timeout_s: float, what: str, step_s: float = 0.2) -> Any:
    """`wait_for`, polling less often: each check opens an admin client, and a
    benchmark should not load the broker it measures."""
    return wait_for(condition, timeout_s, what, step_s)


RESULTS_DIR = REPO_ROOT / "bench" / "results"


def kafka_local() -> ModuleType:
    name = "modstream_kafka_local"
    if name in sys.modules:
        return sys.modules[name]
    path = REPO_ROOT / "deploy" / "local" / "kafka_local.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def broker() -> Iterator[str]:
    with kafka_local().broker_from_env() as bootstrap:
        yield str(bootstrap)


def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    kafka_local().create_topics(bootstrap, list(names), partitions)


def real_texts() -> list[str]:
    """Every text of both corpora: the real length distribution of moderation traffic."""
    from model.data import load_splits

    splits = load_splits()
    return [e.text for part in (splits.train, splits.validation, splits.test) for e in part]


def sample_texts(count: int, seed: int = 7) -> list[str]:
    texts = real_texts()
    rng = random.Random(seed)
    return [rng.choice(texts) for _ in range(count)]


def request_value(message_id: str, text: str) -> bytes:
    return json.dumps({"id": message_id, "text": text}).encode()


def prefill(bootstrap: str, topic: str, texts: Sequence[str], prefix: str = "m") -> float:
    """Writes one request per text; returns the producer's msg/s."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=512 * 1024
    )
    start = time.perf_counter()
    for n, text in enumerate(texts):
        key = f"{prefix}-{n}".encode()
        producer.send(topic, key=key, value=request_value(f"{prefix}-{n}", text))
    producer.flush(timeout=300)
    elapsed = time.perf_counter() - start
    producer.close()
    return len(texts) / elapsed


def send_paced(
    producer: Any,
    topic: str,
    texts: Sequence[str],
    rate: float,
    total: int,
    prefix: str,
    before_each: Callable[[int], None] | None = None,
) -> float:
    """Sends `total` requests at `rate` a second (request n is due at start + n / rate),
    calling `before_each(n)` first when given; flushes and returns the offered rate."""
    start = time.perf_counter()
    for n in range(total):
        if before_each is not None:
            before_each(n)
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the offered load, not synchronisation
        producer.send(
            topic, key=str(n).encode(), value=request_value(f"{prefix}-{n}", texts[n % len(texts)])
        )
    producer.flush()
    return total / (time.perf_counter() - start)


def read_all(bootstrap: str, topic: str, timeout_s: float = 300) -> list[Any]:
    """Every record of a topic (raw kafka-python records), up to its current end."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000
    )
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < end for tp, end in ends.items()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic}")
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


class Worker:
    """`modstream worker` as a child process, as operators run it."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, str],
        group: str,
        command: Sequence[str] = ("-m", "worker.cli", "worker"),
        **settings: str,
    ):
        """`command`: the interpreter's arguments (a probe wrapping the worker, e.g.
        bench/gc_pauses.py's); `settings`: MODSTREAM_* values by field name."""
        env = {
            **os.environ,
            **worker_process_env(bootstrap, topics, group, **({"log_level": "warning"} | settings)),
        }
        self.port = int(env["MODSTREAM_METRICS_PORT"])
        self.proc = subprocess.Popen([sys.executable, *command], cwd=REPO_ROOT, env=env)
        self.peak_rss_bytes = 0
        self.peak_rss_by_pid: dict[int, int] = {}

    def ready(self) -> bool:
        import urllib.request

        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 120) -> None:
        wait_until(self.ready, timeout_s, "worker readiness")

    def sample_rss(self) -> int:
        """Peak resident set (VmHWM) of the worker so far, in bytes: its own plus its
        child processes' (the scoring process), each its own peak, so an upper bound."""
        for pid in [self.proc.pid, *children(self.proc.pid)]:
            peak = _peak_rss(pid)
            if peak:
                self.peak_rss_by_pid[pid] = max(self.peak_rss_by_pid.get(pid, 0), peak)
        self.peak_rss_bytes = sum(self.peak_rss_by_pid.values())
        return self.peak_rss_bytes

    def stop(self) -> int:
        self.sample_rss()
        self.proc.terminate()
        return self.proc.wait(timeout=60)


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
