"""Delivery, membership and security settings reach the Kafka clients as documented."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from worker.clients import ASSIGNORS
from worker.settings import WorkerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MODSTREAM_"):
            monkeypatch.delenv(name)


def test_sasl_and_tls_settings_reach_the_clients() -> None:
    settings = WorkerSettings(
        kafka_bootstrap="a:9093, b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="worker",
        sasl_password="hunter2",  # type: ignore[arg-type]
    )
    common = settings.kafka_common()
    context = common.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert common == {
        "bootstrap_servers": ["a:9093", "b:9093"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "hunter2",
        "reconnect_backoff_max_ms": 1_000,
    }
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_sasl_protocol_without_mechanism_or_credentials_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValidationError, match="sasl_mechanism"):
        WorkerSettings(security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ValidationError, match="MODSTREAM_SASL_PASSWORD"):
        WorkerSettings(
            security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u"
        )
    monkeypatch.setenv("MODSTREAM_SASL_PASSWORD", "from-env")
    settings = WorkerSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u"
    )
    assert settings.kafka_common()["sasl_plain_password"] == "from-env"


def test_transactional_id_is_stable_and_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "pod-7")
    assert WorkerSettings(group_id="g").resolved_transactional_id() == "g.pod-7"
    member = WorkerSettings(group_id="g", group_instance_id="worker-2")
    assert member.resolved_transactional_id() == "g.worker-2"
    explicit = WorkerSettings(group_id="g", transactional_id="tx-1", group_instance_id="w")
    assert explicit.resolved_transactional_id() == "tx-1"


def test_delivery_and_group_settings_have_safe_defaults() -> None:
    settings = WorkerSettings()
    assert settings.delivery == "at_least_once"
    assert settings.group_instance_id is None
    assert settings.assignment_strategy in ASSIGNORS
    assert settings.session_timeout_ms < settings.max_poll_interval_ms
    with pytest.raises(ValidationError):
        WorkerSettings(delivery="maybe_once")  # type: ignore[arg-type]
