"""worker/refusal.py: a failed handshake is explained naming the cause and the setting to
check; an authorization failure names the missing ACL and the setting naming its resource."""

from __future__ import annotations

import os
import ssl
from typing import Any

import pytest
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
)

from worker.refusal import (
    authorization_hint,
    explain_refusal,
    missing_right,
    recording_handshake_failures,
)
from worker.settings import WorkerSettings
from worker.sink import PublishError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MODSTREAM_"):
            monkeypatch.delenv(name)


# -- why a handshake failed ------------------------------------------------------------


def verification_error(code: int, message: str) -> KafkaConnectionError:
    cause = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    cause.verify_code = code
    cause.verify_message = message
    wrapped = KafkaConnectionError(f"Handshake failed: {cause}")
    wrapped.__cause__ = cause
    return wrapped


def alert(reason: str) -> KafkaConnectionError:
    cause = ssl.SSLError(1, f"[SSL: {reason}] alert")
    cause.reason = reason
    return KafkaConnectionError(cause)


SCRAM = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "worker",
    "sasl_password": "hunter2-secret",
}


@pytest.mark.parametrize(
    ("settings", "failure", "expected"),
    [
        (
            SCRAM,
            verification_error(19, "self-signed certificate in certificate chain"),
            ["not trusted", "MODSTREAM_SSL_CAFILE"],
        ),
        (
            SCRAM,
            verification_error(62, "Hostname mismatch"),
            ["does not name the host", "MODSTREAM_KAFKA_BOOTSTRAP", "SSL_CHECK_HOSTNAME"],
        ),
        (
            {"security_protocol": "SSL"},
            alert("SSLV3_ALERT_BAD_CERTIFICATE"),
            ["refused the TLS client authentication", "no client certificate"],
        ),
        (
            SCRAM,
            SaslAuthenticationFailedError("invalid credentials with SASL mechanism"),
            ["SASL SCRAM-SHA-512", "MODSTREAM_SASL_PASSWORD", "'worker'"],
        ),
    ],
)
def test_handshake_failures_are_explained_naming_the_setting(
    settings: dict[str, Any], failure: BaseException, expected: list[str]
) -> None:
    noise = KafkaConnectionError("socket disconnected")
    explained = explain_refusal(WorkerSettings(**settings), [failure, noise])
    assert explained is not None
    for part in expected:
        assert part in explained
    assert "hunter2-secret" not in explained


def test_unrelated_failures_are_not_explained() -> None:
    assert explain_refusal(WorkerSettings(), [KafkaConnectionError("refused")]) is None


def test_a_failure_logged_by_class_name_only_is_explained() -> None:
    """kafka-python logs an unsupported mechanism as "SaslHandshake failed: <name>"."""
    import logging

    with recording_handshake_failures() as handshake:
        logging.getLogger("kafka.net.connection").error(
            "%s: SaslHandshake failed: %s", "<conn>", "UnsupportedSaslMechanismError"
        )
    explained = explain_refusal(WorkerSettings(**SCRAM), handshake.failures)
    assert explained is not None and "does not enable SASL SCRAM-SHA-512" in explained


@pytest.mark.parametrize(
    ("failure", "right"),
    [
        (GroupAuthorizationFailedError("g"), "READ on group 'g' (MODSTREAM_GROUP_ID)"),
        (
            TopicAuthorizationFailedError({"in"}),
            "READ on topic 'in' (MODSTREAM_INPUT_TOPIC)",
        ),
        (
            TopicAuthorizationFailedError("in-dead"),
            "WRITE on topic 'in-dead' (MODSTREAM_DEAD_LETTER_TOPIC)",
        ),
        (
            TransactionalIdAuthorizationFailedError(),
            "WRITE on transactional id 'tx-1' (MODSTREAM_TRANSACTIONAL_ID)",
        ),
    ],
)
def test_authorization_failures_name_the_missing_right_and_its_setting(
    failure: BaseException, right: str
) -> None:
    settings = WorkerSettings(
        group_id="g",
        input_topic="in",
        output_topic="in-out",
        dead_letter_topic="in-dead",
        transactional_id="tx-1",
    )
    wrapped = PublishError("output failed", failure)
    wrapped.__cause__ = failure
    assert missing_right(wrapped, settings) == right
    assert authorization_hint(failure, settings).startswith("; the broker's ACLs deny this")
    assert authorization_hint(KafkaConnectionError("down"), settings) == ""
