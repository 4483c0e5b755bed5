"""Least privilege, proven on the secure broker: the worker runs with exactly the ACLs the
README lists (at-least-once and exactly-once), retrain with exactly its own; with one
of the worker's rights taken away mid-stream it reports not ready naming that right,
commits nothing past a record it has not answered, and resumes once the right is back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from model.data import DataNotFoundError, find_data_files
from tests.helpers import (
    REPO_ROOT,
    TopicReader,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    ids_of,
    produce,
    request_bytes,
    wait_for,
)
from tests.integration.secure import WORKER_USER, SecureBroker, retrain_rights, worker_rights

pytestmark = pytest.mark.integration


def answered_offsets(broker: SecureBroker, topics: dict[str, str]) -> set[int]:
    """Input offsets that have a result or a dead letter (outputs carry their source)."""
    answered: set[int] = set()
    for role in ("output", "dead_letter"):
        reader = TopicReader(broker.bootstrap, topics[role])
        try:
            answered |= {r.value["offset"] for r in reader.read_to_end(timeout_s=30)}
        finally:
            reader.close()
    return answered


def first_unanswered(broker: SecureBroker, topics: dict[str, str]) -> int:
    end = end_offsets(broker.bootstrap, topics["input"])[0]
    answered = answered_offsets(broker, topics)
    return min((o for o in range(end) if o not in answered), default=end)


def send_round(broker: SecureBroker, topic: str, prefix: str) -> None:
    """Two requests, one undecodable record (a dead letter), two requests."""
    good = [(b"k", request_bytes(f"{prefix}-{i}", "least privilege")) for i in range(4)]
    produce(broker.bootstrap, topic, [*good[:2], (b"k", b"{not json"), *good[2:]])


# One right at a time, taken away while the worker runs. The dead-letter and group cases
# are the ones the README's Security section describes.
RIGHTS = ["READ on input topic", "READ on group", "WRITE on output topic", "WRITE on dead letters"]


@pytest.mark.parametrize("taken", RIGHTS)
def test_a_missing_right_means_not_ready_naming_it_and_no_commit_until_granted(
    taken: str, secure_broker: SecureBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    topics = secure_broker.topics("acl")
    group = f"g-acl-{uuid.uuid4().hex[:8]}"
    rights = worker_rights(topics, group)
    right = rights[RIGHTS.index(taken)]
    secure_broker.grant(rights)
    env = secure_broker.scram_env(
        topics, tiny_checkpoint, group, publish_timeout_s="3", max_batch_wait_ms="5"
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_ready(120)
        send_round(secure_broker, topics["input"], "before")
        wait_for(
            lambda: committed_offsets(secure_broker.bootstrap, group) == {0: 5},
            60,
            "the first round answered and committed",
        )

        secure_broker.revoke([right])
        send_round(secure_broker, topics["input"], "during")

        def not_ready_naming_the_right() -> str | None:
            status, body = worker.get("/readyz")
            return body if status == 503 and str(right) in body else None

        body = wait_for(not_ready_naming_the_right, 90, f"not ready naming {right}", 0.2)
        reasons = json.loads(body)["reasons"]
        assert any("ACLs deny this worker" in r for r in reasons), reasons
        print(f"\nwithout {right}: {reasons}")
        # Whatever it managed to answer, it committed nothing past a record it did not.
        committed = committed_offsets(secure_broker.bootstrap, group).get(0, 0)
        assert 5 <= committed <= first_unanswered(secure_broker, topics)
        assert worker.proc.poll() is None, "a missing ACL is not a reason to exit"

        secure_broker.grant([right])
        wait_for(lambda: worker.get("/readyz")[0] == 200, 120, "ready again", 0.2)
        wait_for(
            lambda: committed_offsets(secure_broker.bootstrap, group) == {0: 10},
            120,
            "every record committed once the right is back",
        )
        assert answered_offsets(secure_broker, topics) == set(range(10))
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()


def test_a_worker_denied_its_input_topic_from_the_start_is_not_ready_until_granted(
    secure_broker: SecureBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """kafka-python raises nothing for a subscribed topic it may not read: the group just
    hands the worker no partitions. It must not look like an idle, ready worker."""
    topics = secure_broker.topics("acl-start")
    group = f"g-start-{uuid.uuid4().hex[:8]}"
    rights = worker_rights(topics, group)
    read_input = rights.pop(0)
    secure_broker.grant(rights)
    send_round(secure_broker, topics["input"], "start")
    worker = WorkerProcess(
        secure_broker.scram_env(topics, tiny_checkpoint, group), tmp_path / "worker.log"
    )
    try:

        def not_ready_naming_the_right() -> str | None:
            status, body = worker.get("/readyz")
            return body if status == 503 and str(read_input) in body else None

        body = wait_for(not_ready_naming_the_right, 120, f"not ready naming {read_input}", 0.2)
        assert "MODSTREAM_INPUT_TOPIC" in body
        assert committed_offsets(secure_broker.bootstrap, group) == {}
        secure_broker.grant([read_input])
        wait_for(
            lambda: committed_offsets(secure_broker.bootstrap, group) == {0: 5},
            120,
            "every record answered and committed once the right is granted",
        )
        assert worker.get("/readyz")[0] == 200
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()


def test_exactly_once_worker_runs_with_exactly_its_acls(
    secure_broker: SecureBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    topics = secure_broker.topics("acl-eos")
    group = f"g-eos-{uuid.uuid4().hex[:8]}"
    transactional_id = f"tx-{uuid.uuid4().hex[:8]}"
    secure_broker.grant(worker_rights(topics, group, transactional_id))
    send_round(secure_broker, topics["input"], "eos")
    env = secure_broker.scram_env(
        topics,
        tiny_checkpoint,
        group,
        delivery="exactly_once",
        transactional_id=transactional_id,
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_ready(120)
        reader = TopicReader(secure_broker.bootstrap, topics["output"], "read_committed")
        results = reader.read_until(4, timeout_s=60)
        reader.close()
        wait_for(
            lambda: committed_offsets(secure_broker.bootstrap, group) == {0: 5},
            60,
            "the transaction's offsets committed",
        )
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()
    assert sorted(ids_of(results)) == [f"eos-{i}" for i in range(4)]


def test_exactly_once_without_its_transactional_id_acl_exits_naming_it(
    secure_broker: SecureBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    topics = secure_broker.topics("acl-txid")
    group = f"g-txid-{uuid.uuid4().hex[:8]}"
    transactional_id = f"tx-{uuid.uuid4().hex[:8]}"
    secure_broker.grant(worker_rights(topics, group))  # all but the transactional id
    env = secure_broker.scram_env(
        topics,
        tiny_checkpoint,
        group,
        delivery="exactly_once",
        transactional_id=transactional_id,
        startup_timeout_s="10",
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        code = worker.proc.wait(timeout=120)
    finally:
        worker.kill()
    log = worker.log_path.read_text(errors="replace")
    assert code == 4, log[-3000:]
    [refused] = worker.events("broker_unreachable")
    assert f"WRITE on transactional id '{transactional_id}'" in refused["error"], refused
    assert "MODSTREAM_TRANSACTIONAL_ID" in refused["error"]


@pytest.fixture(scope="module")
def data_installed() -> None:
    try:
        find_data_files()
    except DataNotFoundError as exc:
        pytest.skip(f"training data not installed: {exc}")


def test_retrain_reads_feedback_with_exactly_its_acls(
    data_installed: None, secure_broker: SecureBroker, tmp_path: Path
) -> None:
    """READ on the feedback topic and on its group: retrain reads every record, and commits
    how far it read (its secret from a file, like the CronJob's)."""
    topic = secure_broker.topics("acl-retrain", roles=("feedback",))["feedback"]
    group = f"g-retrain-{uuid.uuid4().hex[:8]}"
    secure_broker.grant(retrain_rights(topic, group))
    produce(secure_broker.bootstrap, topic, [(None, feedback(n)) for n in range(4)])
    password_file = tmp_path / "password"
    password_file.write_text(secure_broker.worker_password)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODSTREAM_")}
    env |= {
        "MODSTREAM_KAFKA_BOOTSTRAP": secure_broker.kafka.sasl_ssl_bootstrap,
        "MODSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
        "MODSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
        "MODSTREAM_SASL_USERNAME": WORKER_USER,
        "MODSTREAM_SASL_PASSWORD_FILE": str(password_file),
        "MODSTREAM_SSL_CAFILE": str(secure_broker.tls.ca),
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "retrain", "--output", str(tmp_path / "model"),
         "--feedback-topic", topic, "--feedback-group", group, "--feedback-timeout-s", "60",
         *TINY_TRAINING],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout.strip().splitlines()[-1])["feedback"]
    assert read["consumed"] == 4 and read["valid"] == 4, read
    assert read["committed"] is True and "problems" not in read, read
    assert committed_offsets(secure_broker.bootstrap, group) == {0: 4}
    assert secure_broker.worker_password not in done.stderr + done.stdout


# The smallest training that runs end to end: this test is about reading feedback.
TINY_TRAINING = [
    "--epochs", "1", "--limit", "200", "--eval-limit", "100", "--embed-dim", "8",
    "--hidden-dim", "8", "--max-vocab", "500", "--device", "cpu", "--ema-decay", "0",
]  # fmt: skip


def feedback(n: int) -> bytes:
    return json.dumps(
        {
            "id": f"fb-{n}",
            "text": f"feedback text number {n}",
            "labels": {"insult": n % 2 == 0},
            "reviewer": "moderator-1",
            "decided_at": f"2024-05-01T12:00:{n:02d}Z",
        }
    ).encode()
