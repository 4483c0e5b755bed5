"""Faults of the broker itself, on a broker of this module's own: a restart mid-stream
(the broker keeps its log on disk), and a listener that requires SASL."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import (
    REPO_ROOT,
    SteadyProducer,
    TopicReader,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    free_port,
    ids_of,
    produce,
    request_bytes,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration

SASL_USER = "modstream"
SASL_PASSWORD = "s3cret-Pa55-" + uuid.uuid4().hex[:8]
WRONG_PASSWORD = "wr0ng-Pa55-" + uuid.uuid4().hex[:8]


@dataclass
class OwnBroker:
    kafka: Any  # kafka_local.LocalKafka
    sasl_bootstrap: str

    @property
    def bootstrap(self) -> str:
        return str(self.kafka.bootstrap)

    def topics(self, name: str, partitions: int) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:6]
        names = {
            role: f"{name}-{suffix}-{role.replace('_', '-')}"
            for role in ("input", "output", "dead_letter")
        }
        self.kafka.create_topics(list(names.values()), partitions)
        return names


@pytest.fixture(scope="module")
def own_broker(
    kafka_local: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OwnBroker]:
    """A broker with its log in a directory of its own, and a PLAIN SASL listener.

    Not the session broker: the restart test stops it. A module fixture, so the JVM
    start is paid once for all the tests here.
    """
    plain, controller, sasl = free_port(), free_port(), free_port()
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{SASL_USER}="{SASL_PASSWORD}";'
    )
    extra = {
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{sasl},"
            f"CONTROLLER://127.0.0.1:{controller}"
        ),
        "advertised.listeners": (
            f"PLAINTEXT://127.0.0.1:{plain},SASL_PLAINTEXT://127.0.0.1:{sasl}"
        ),
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
    }
    kafka = kafka_local.LocalKafka(
        log_dir=tmp_path_factory.mktemp("own-broker"),
        port=plain,
        controller_port=controller,
        extra_config=extra,
        startup_timeout=180,
    )
    kafka.start()
    try:
        yield OwnBroker(kafka, f"127.0.0.1:{sasl}")
    finally:
        kafka.stop()


def test_broker_restart_mid_stream_loses_and_repeats_nothing_and_readiness_follows(
    own_broker: OwnBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    topics = own_broker.topics("restart", partitions=2)
    group = f"g-restart-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        own_broker.bootstrap,
        topics,
        tiny_checkpoint,
        group,
        publish_timeout_s="2",
        max_batch_size="64",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    reader = TopicReader(own_broker.bootstrap, topics["output"])
    restart_on_failure = False
    try:
        worker.wait_ready(90)
        # The producer's own retries carry its sends across the outage.
        with SteadyProducer(own_broker.bootstrap, topics["input"], "b", per_tick=20) as producer:
            reader.read_until(500, timeout_s=120)
            own_broker.kafka.stop(keep_data=True)
            restart_on_failure = True
            down_at = time.monotonic()

            def not_ready() -> str | None:
                status, body = worker.get("/readyz")
                return body if status == 503 else None

            body = wait_for(
                not_ready, 60, "the worker to report not ready while the broker is down", 0.2
            )
            assert json.loads(body)["reasons"], body
            assert worker.proc.poll() is None, "the worker must ride out a broker outage"
            print(f"\nnot ready {time.monotonic() - down_at:.1f}s after the broker stopped: {body}")
            own_broker.kafka.start()
            restart_on_failure = False
            wait_for(lambda: worker.get("/readyz")[0] == 200, 120, "readiness back", step_s=0.2)
            before = len(reader.poll()) + len(reader.records)
            reader.read_until(before + 200, timeout_s=120)  # still flowing after the restart
            sent = producer.stop()
        wait_for(
            lambda: (
                committed_offsets(own_broker.bootstrap, group)
                == end_offsets(own_broker.bootstrap, topics["input"])
            ),
            180,
            "every input offset committed after the restart",
            step_s=0.5,
        )
    finally:
        if restart_on_failure and not own_broker.kafka.is_running():
            own_broker.kafka.start()  # the other tests here need it
        code = worker.stop()
    assert code == 0, worker.logs()
    ids = ids_of(reader.read_to_end())
    reader.close()
    lost = sent - set(ids)
    repeated = sorted(i for i, c in Counter(ids).items() if c > 1)
    assert not lost, sorted(lost)[:5]
    # README: a broker restart repeats none (the same outputs are completed, not re-sent).
    assert not repeated, f"{len(repeated)} ids answered twice, e.g. {repeated[:5]}"
    assert len(sent) >= 700  # 500 answered before the stop, 200 after the restart


def sasl_env(
    broker: OwnBroker, topics: dict[str, str], checkpoint: Path, password: str
) -> dict[str, str]:
    env = worker_env(
        broker.sasl_bootstrap,
        topics,
        checkpoint,
        f"g-sasl-{uuid.uuid4().hex[:8]}",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username=SASL_USER,
        startup_timeout_s="10",
        log_level="debug",
    )
    env["MODSTREAM_SASL_PASSWORD"] = password
    return env


def test_sasl_with_the_right_credentials_works(
    own_broker: OwnBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    topics = own_broker.topics("sasl-ok", partitions=1)
    produce(
        own_broker.bootstrap,
        topics["input"],
        [(b"k", request_bytes(f"s-{n}", "hello over SASL")) for n in range(20)],
    )
    env = sasl_env(own_broker, topics, tiny_checkpoint, SASL_PASSWORD)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_ready(90)
        reader = TopicReader(own_broker.bootstrap, topics["output"])
        results = reader.read_until(20, timeout_s=90)
        reader.close()
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()
    assert sorted(ids_of(results)) == sorted(f"s-{n}" for n in range(20))
    log = worker.log_path.read_text(errors="replace")
    assert SASL_PASSWORD not in log, "the SASL password leaked into the log"


def test_sasl_with_wrong_credentials_fails_fast_and_clearly(
    own_broker: OwnBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    topics = own_broker.topics("sasl-bad", partitions=1)
    env = sasl_env(own_broker, topics, tiny_checkpoint, WRONG_PASSWORD)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    ready_seen = False
    started = time.monotonic()
    try:
        while worker.proc.poll() is None and time.monotonic() - started < 90:
            ready_seen = ready_seen or worker.get("/readyz")[0] == 200
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=0.2)  # returns as soon as the worker exits
    finally:
        worker.kill()
    elapsed = time.monotonic() - started
    log = worker.log_path.read_text(errors="replace")
    assert worker.proc.returncode == 4, log[-3000:]
    assert not ready_seen
    assert elapsed < 60, f"took {elapsed:.0f}s to give up"
    assert "during SASL PLAIN authentication" in log, log[-3000:]
    assert "MODSTREAM_SASL_PASSWORD" in log
    assert WRONG_PASSWORD not in log and SASL_PASSWORD not in log, "a password leaked"


def test_sasl_password_is_not_a_command_line_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker", "--sasl-password", "x"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unrecognized arguments: --sasl-password" in done.stderr
