"""Fixtures for tests that run the worker: a small real checkpoint trained once per session,
and a secure broker (TLS, SASL, ACLs) shared by the security tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from model.build import retrain
from model.train_config import TrainConfig
from tests.integration.secure import WORKER_USER, SecureBroker

# OAUTHBEARER sessions on the secure broker last at most this long: clients re-authenticate.
OAUTH_REAUTH_MS = 8_000


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Trained on a slice of the real data in seconds; good enough to exercise the path."""
    directory = tmp_path_factory.mktemp("checkpoint") / "current"
    retrain(directory, TrainConfig.tiny(), lambda _line: None)
    yield directory


@pytest.fixture(scope="session")
def secure_broker(
    kafka_local: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureBroker]:
    """One broker with TLS, SCRAM, client certificates and ACLs for the whole session
    (separate from the plain `kafka_bootstrap` one; started only when a test asks)."""
    root = tmp_path_factory.mktemp("secure-broker")
    tls = kafka_local.make_tls_files(root / "tls", [WORKER_USER, "admin"])
    kafka = kafka_local.SecureLocalKafka(
        tls, log_dir=root / "kafka", oauth_reauth_ms=OAUTH_REAUTH_MS, startup_timeout=180
    )
    kafka.start()
    try:
        password = "scram-" + uuid.uuid4().hex
        kafka.add_scram_user(WORKER_USER, password)
        yield SecureBroker(kafka, password)
    finally:
        kafka.stop()
