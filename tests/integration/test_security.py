"""The worker on a broker secured as production clusters are: SASL_SSL with SCRAM, mutual
TLS, OAUTHBEARER, ACLs. Each way in serves a record end to end; each way of being refused
exits 4 naming the cause and the setting to check; no secret reaches a log line."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TopicReader, WorkerProcess, ids_of, produce, request_bytes, wait_for
from tests.integration.secure import SecureBroker, worker_rights

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = "10"  # the default is 30; long enough to see several refusals
# The broker may close the socket before kafka-python logs the SASL handshake error, so
# one attempt can pass unexplained; on a loaded machine 10 s held too few attempts (seen
# twice at load average 6-7), so this case gets the default's time to see another.
SLOW_TO_EXPLAIN = {"SASL mechanism not enabled": "30"}


def group_name(test: str) -> str:
    return f"g-{test}-{uuid.uuid4().hex[:8]}"


def assert_no_secrets(log: str, broker: SecureBroker, *more: str) -> None:
    for secret in [*broker.secrets(), *more]:
        assert secret not in log, f"a secret ({secret[:4]}…) reached the log"


def serve_one_round(
    broker: SecureBroker, env: dict[str, str], topics: dict[str, str], tmp_path: Path, n: int = 5
) -> WorkerProcess:
    """Start the worker, send `n` requests, wait for their results; returns the stopped worker."""
    produce(
        broker.bootstrap,
        topics["input"],
        [(f"k{i}".encode(), request_bytes(f"sec-{i}", "hello, secure world")) for i in range(n)],
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_ready(120)
        reader = TopicReader(broker.bootstrap, topics["output"])
        results = reader.read_until(n, timeout_s=90)
        reader.close()
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()
    assert sorted(ids_of(results)) == sorted(f"sec-{i}" for i in range(n))
    return worker


# -- ways in ---------------------------------------------------------------------------


def test_worker_serves_over_sasl_ssl_with_scram_sha_512(
    secure_broker: SecureBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    topics = secure_broker.topics("scram512")
    group = group_name("scram512")
    secure_broker.grant(worker_rights(topics, group))
    env = secure_broker.scram_env(topics, tiny_checkpoint, group, log_level="debug")
    worker = serve_one_round(secure_broker, env, topics, tmp_path)
    assert_no_secrets(worker.log_path.read_text(errors="replace"), secure_broker)


def test_worker_serves_over_scram_sha_256_with_secrets_in_files_and_host_check_off(
    secure_broker: SecureBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Password from a file (as a mounted Secret), and a bootstrap address the broker's
    certificate does not name (`localhost`), accepted only because the check is off."""
    topics = secure_broker.topics("scram256")
    group = group_name("scram256")
    secure_broker.grant(worker_rights(topics, group))
    password_file = tmp_path / "sasl-password"
    password_file.write_text(secure_broker.worker_password + "\n")
    env = secure_broker.scram_env(
        topics,
        tiny_checkpoint,
        group,
        mechanism="SCRAM-SHA-256",
        sasl_password_file=str(password_file),
        ssl_check_hostname="false",
        kafka_bootstrap=secure_broker.kafka.sasl_ssl_bootstrap.replace("127.0.0.1", "localhost"),
    )
    del env["MODSTREAM_SASL_PASSWORD"]
    worker = serve_one_round(secure_broker, env, topics, tmp_path)
    warnings = worker.events("tls_hostname_verification_disabled")
    assert len(warnings) == 1 and warnings[0]["level"] == "warning", warnings
    assert_no_secrets(worker.log_path.read_text(errors="replace"), secure_broker)


def test_worker_serves_over_mutual_tls_with_an_encrypted_key(
    secure_broker: SecureBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The client certificate is the identity (User:worker); its key is encrypted and
    the key's password comes from a file."""
    topics = secure_broker.topics("mtls")
    group = group_name("mtls")
    secure_broker.grant(worker_rights(topics, group))
    client = secure_broker.tls.clients["worker"]
    password_file = tmp_path / "key-password"
    password_file.write_text(client.key_password)
    env = secure_broker.mtls_env(
        topics,
        tiny_checkpoint,
        group,
        ssl_keyfile=str(client.encrypted_key),
        ssl_key_password_file=str(password_file),
        log_level="debug",
    )
    worker = serve_one_round(secure_broker, env, topics, tmp_path)
    assert_no_secrets(worker.log_path.read_text(errors="replace"), secure_broker)


# -- ways to be refused ----------------------------------------------------------------


def refused_env(case: str, broker: SecureBroker, checkpoint: Path) -> tuple[dict[str, str], str]:
    """Worker settings that a secure listener refuses, and one secret they carry."""
    topics = {role: f"refused-{role}" for role in ("input", "output", "dead_letter")}
    group = group_name(case)
    timeout = SLOW_TO_EXPLAIN.get(case, STARTUP_TIMEOUT_S)
    extra: dict[str, Any] = {"startup_timeout_s": timeout, "log_level": "debug"}
    if case == "wrong CA":
        env = broker.scram_env(
            topics, checkpoint, group, ssl_cafile=str(broker.tls.other_ca), **extra
        )
    elif case == "host-name mismatch":
        localhost = broker.kafka.sasl_ssl_bootstrap.replace("127.0.0.1", "localhost")
        env = broker.scram_env(topics, checkpoint, group, kafka_bootstrap=localhost, **extra)
    elif case == "wrong SCRAM password":
        wrong = "wrong-" + uuid.uuid4().hex
        return broker.scram_env(topics, checkpoint, group, password=wrong, **extra), wrong
    elif case == "SASL mechanism not enabled":
        env = broker.scram_env(topics, checkpoint, group, mechanism="PLAIN", **extra)
    elif case == "no client certificate":
        env = broker.mtls_env(topics, checkpoint, group, **extra)
        del env["MODSTREAM_SSL_CERTFILE"], env["MODSTREAM_SSL_KEYFILE"]
    elif case == "untrusted client certificate":
        untrusted = broker.tls.untrusted_client
        env = broker.mtls_env(
            topics,
            checkpoint,
            group,
            ssl_certfile=str(untrusted.cert),
            ssl_keyfile=str(untrusted.key),
            **extra,
        )
    else:
        raise AssertionError(case)
    return env, broker.worker_password


REFUSALS = {
    "wrong CA": ["TLS certificate is not trusted", "MODSTREAM_SSL_CAFILE"],
    "host-name mismatch": [
        "does not name the host",
        "MODSTREAM_KAFKA_BOOTSTRAP",
        "MODSTREAM_SSL_CHECK_HOSTNAME",
    ],
    "wrong SCRAM password": [
        "during SASL SCRAM-SHA-512 authentication",
        "MODSTREAM_SASL_PASSWORD",
        "MODSTREAM_SASL_USERNAME",
    ],
    "SASL mechanism not enabled": ["does not enable SASL PLAIN", "MODSTREAM_SASL_MECHANISM"],
    "no client certificate": ["refused the TLS client authentication", "MODSTREAM_SSL_CERTFILE"],
    "untrusted client certificate": [
        "refused the TLS client authentication",
        "untrusted-client.pem",
    ],
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_connection_exits_4_naming_the_cause_and_the_setting(
    case: str, secure_broker: SecureBroker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    env, secret = refused_env(case, secure_broker, tiny_checkpoint)
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
    log = worker.log_path.read_text(errors="replace")
    assert worker.proc.returncode == 4, log[-3000:]
    assert not ready_seen
    unreachable = worker.events("broker_unreachable")
    assert len(unreachable) == 1, log[-3000:]
    message = unreachable[0]["error"]
    for part in REFUSALS[case]:
        assert part in message, message
    print(f"\n{case}: {message}")
    assert_no_secrets(log, secure_broker, secret)


def test_oauthbearer_token_file_is_reread_when_it_rotates(
    secure_broker: SecureBroker,
    kafka_local: Any,
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    """The broker ends OAUTHBEARER sessions every few seconds; the first token expires
    soon after the worker starts. Records sent after its expiry are still answered only
    if the worker re-read the file, where a fresh token was written meanwhile."""
    topics = secure_broker.topics("oauth")
    group = group_name("oauth")
    secure_broker.grant(worker_rights(topics, group))
    token_file = tmp_path / "token"
    first_expires = time.time() + 25
    token_file.write_text(kafka_local.unsecured_jwt("worker", first_expires - time.time()))
    env = secure_broker.scram_env(topics, tiny_checkpoint, group)
    del env["MODSTREAM_SASL_PASSWORD"], env["MODSTREAM_SASL_USERNAME"]
    env |= {
        "MODSTREAM_SASL_MECHANISM": "OAUTHBEARER",
        "MODSTREAM_SASL_OAUTH_TOKEN_FILE": str(token_file),
    }
    worker = WorkerProcess(env, tmp_path / "worker.log")
    reader = TopicReader(secure_broker.bootstrap, topics["output"])
    try:
        worker.wait_ready(60)
        produce(secure_broker.bootstrap, topics["input"], [(b"k", request_bytes("o-1", "first"))])
        reader.read_until(1, timeout_s=60)
        # Rotate: a new file replaces the old one, as a projected token is swapped.
        fresh = tmp_path / "token.next"
        fresh.write_text(kafka_local.unsecured_jwt("worker", 3600))
        fresh.replace(token_file)
        rotated_at = datetime.now(UTC)
        wait_for(lambda: time.time() > first_expires + 10, 60, "the first token to expire")
        produce(secure_broker.bootstrap, topics["input"], [(b"k", request_bytes("o-2", "after"))])
        results = reader.read_until(2, timeout_s=60)
    finally:
        reader.close()
        code = worker.stop()
    assert code == 0, worker.logs()
    assert sorted(ids_of(results)) == ["o-1", "o-2"]
    reads = [
        e for e in worker.events("oauth_token_read")
        if datetime.fromisoformat(e["timestamp"]) > rotated_at
    ]  # fmt: skip
    assert reads, "the rotated token file was never read"
