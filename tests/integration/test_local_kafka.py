"""Integration tests for deploy/local/kafka_local.py against a real Kafka broker.

They check the contract the rest of the suite relies on: messages and
consumer-group offsets round-trip, a stopped broker leaves no JVM or temp dir
behind, a kept data dir survives a restart, and MODSTREAM_KAFKA_BOOTSTRAP
short-circuits broker startup. Every wait is a polled condition with a deadline.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration

KAFKA_LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka_local.py"


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists (psutil-free)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (scans /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(proc.name))
    return found


def child_pids(parent: int) -> list[int]:
    """Direct children of ``parent`` (via /proc/<pid>/stat's ppid field)."""
    children = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        # Field 4 is ppid; split after the ")" closing comm, which may contain spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(proc.name))
    return children


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for value in values:
            producer.send(topic, value=value, key=b"k").get(timeout=30)
    finally:
        producer.close()


def consume_from_start(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in records)
        return got
    finally:
        consumer.close()


@pytest.fixture
def local_kafka(kafka_local: ModuleType) -> Iterator[Any]:
    """A private LocalKafka (not the session broker) that is always stopped."""
    broker = kafka_local.LocalKafka()
    try:
        yield broker
    finally:
        broker.stop()


def test_round_trip_with_consumer_group(kafka_bootstrap: str, topic_names: dict[str, str]) -> None:
    topic = topic_names["input"]
    payload = f"hello-{uuid.uuid4()}".encode()
    produce(kafka_bootstrap, topic, [payload])

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        received: list[bytes] = []
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend(r.value for r in records)
        assert received == [payload]
        consumer.commit()
        # Committing exercises __consumer_offsets, which needs RF=1 on one node.
        assert consumer.committed(TopicPartition(topic, 0)) == 1
    finally:
        consumer.close()


def test_make_topics_creates_requested_partitions(
    kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]]
) -> None:
    names = make_topics(partitions=3)
    assert set(names) == {"input", "output", "dead_letter"}
    assert len(set(names.values())) == 3
    with KafkaAdminClient(bootstrap_servers=kafka_bootstrap) as admin:
        described = admin.describe_topics(list(names.values()))
    assert {t["name"]: len(t["partitions"]) for t in described} == dict.fromkeys(names.values(), 3)


def test_stop_kills_jvm_and_removes_temp_dir(local_kafka: Any) -> None:
    broker = local_kafka
    broker.start()
    pid, workdir = broker.pid, broker.workdir
    assert pid is not None and workdir is not None
    assert pid_alive(pid) and workdir.is_dir()
    assert broker.bootstrap.startswith("127.0.0.1:")
    assert pids_mentioning(str(workdir)) == [pid]

    broker.stop()

    assert not pid_alive(pid)
    assert not workdir.exists()
    assert pids_mentioning(str(workdir)) == []
    assert broker.pid is None and not broker.is_running()
    broker.stop()  # idempotent


def test_restart_with_kept_log_dir_preserves_data(kafka_local: ModuleType, tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    broker = kafka_local.LocalKafka(log_dir=data_dir)
    try:
        broker.start()
        bootstrap, first_pid = broker.bootstrap, broker.pid
        broker.create_topics(["durable"])
        produce(bootstrap, "durable", [b"before-restart"])

        broker.stop(keep_data=True)
        assert first_pid is not None and not pid_alive(first_pid)
        assert (data_dir / "data" / "meta.properties").is_file()

        broker.start()
        assert broker.bootstrap == bootstrap
        assert broker.pid != first_pid
        assert consume_from_start(bootstrap, "durable", 1) == [b"before-restart"]
    finally:
        broker.stop()
    assert data_dir.is_dir()  # caller-owned dirs are never deleted


def test_broker_from_env_uses_external_bootstrap(
    kafka_local: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    class MustNotStart:
        def __init__(self, **_: object) -> None:
            raise AssertionError("broker_from_env started a broker despite the env var")

    monkeypatch.setattr(kafka_local, "LocalKafka", MustNotStart)
    monkeypatch.setenv(kafka_local.ENV_BOOTSTRAP, " kafka.example:9092 ")
    before = set(child_pids(os.getpid()))
    with kafka_local.broker_from_env() as bootstrap:
        assert bootstrap == "kafka.example:9092"
        assert set(child_pids(os.getpid())) == before


def test_cli_run_prints_bootstrap_and_stops_on_sigterm(tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        cli = subprocess.Popen(
            [sys.executable, str(KAFKA_LOCAL), "run"], stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        assert cli.stdout is not None
        # The CLI prints one complete, flushed line once the broker is usable.
        ready, _, _ = select.select([cli.stdout], [], [], 120)
        line = cli.stdout.readline() if ready else b""
        if not line:
            pytest.fail(f"no bootstrap line; stderr:\n{stderr_path.read_text()}")
        assert line.startswith(b"bootstrap=127.0.0.1:")
        bootstrap = line.decode().strip().split("=", 1)[1]
        with KafkaAdminClient(bootstrap_servers=bootstrap) as admin:
            assert isinstance(admin.list_topics(), list)
        jvms = child_pids(cli.pid)
        assert len(jvms) == 1

        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0, stderr_path.read_text()
        assert not pid_alive(jvms[0])  # the CLI reaps its JVM before exiting
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if cli.stdout is not None:
            cli.stdout.close()


def test_cli_rejects_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, str(KAFKA_LOCAL), "run", "--port", "not-a-port"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid int value" in result.stderr
