"""Why the broker refused this worker: a failed handshake, or a missing ACL.

1. kafka-python reports a failed handshake only as a bootstrap timeout. `HandshakeFailures`
   records the failures it logs while the clients start, and `explain_refusal` turns them
   into a sentence naming the cause (untrusted certificate, host-name mismatch, client
   certificate refused, SASL credentials refused) and the setting to check;
   `refusal_settings_hint` says what to check when no failure was recorded.
2. An authorization failure names the ACL the worker lacks and the setting naming the
   resource (`missing_right`, `authorization_hint`); a denied input topic, which
   kafka-python does not raise for, is found in the consumer's metadata
   (`input_topic_unauthorized`).

Apart from worker/security.py, which turns the settings into client options: this reads
what the clients report once they are running, and never configures them.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from worker.setting_names import env_name

if TYPE_CHECKING:
    from worker.settings import WorkerSettings


class HandshakeFailures(logging.Handler):
    """Collects the exceptions kafka-python logs while its clients connect.

    kafka-python retries a failed connection until its bootstrap deadline and then raises
    a bare timeout; the real cause (an `ssl.SSLCertVerificationError`, a
    `SaslAuthenticationFailedError`) only reaches its log records, as an argument or as
    `exc_info`. Only exception objects are kept, never message text.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        # The latest failure per kind, oldest first: one refused login among many
        # "socket disconnected" retries must not be crowded out.
        self._latest: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    @property
    def failures(self) -> list[BaseException]:
        with self._lock:
            return list(self._latest.values())

    def emit(self, record: logging.LogRecord) -> None:
        found: list[BaseException] = []
        args = record.args if isinstance(record.args, tuple) else ()
        found.extend(arg for arg in args if isinstance(arg, BaseException))
        if record.exc_info and record.exc_info[1] is not None:
            found.append(record.exc_info[1])
        # Some failures are logged by name only (e.g. "SaslHandshake failed: %s" with the
        # class name), and the broker may close the socket before the exception travels
        # further: keep the name, never the message.
        found.extend(
            LoggedFailure(kind)
            for kind in _NAMED_IN_MESSAGES
            if any(isinstance(arg, str) and arg == kind for arg in args)
        )
        with self._lock:
            for exc in found:
                for cause in _causes(exc):
                    kind = f"{_kind(cause)}:{getattr(cause, 'reason', '')}"
                    self._latest.pop(kind, None)
                    self._latest[kind] = cause
            while len(self._latest) > 32:  # bounded, whatever the client logs
                del self._latest[next(iter(self._latest))]


class LoggedFailure(Exception):
    """A failure kafka-python logged by its class name only."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


_NAMED_IN_MESSAGES = ("UnsupportedSaslMechanismError", "SaslAuthenticationFailedError")


def _kind(exc: BaseException) -> str:
    return exc.kind if isinstance(exc, LoggedFailure) else type(exc).__name__


@contextmanager
def recording_handshake_failures() -> Iterator[HandshakeFailures]:
    """Records kafka-python's connection failures for the duration of the block."""
    handler = HandshakeFailures()
    kafka_log = logging.getLogger("kafka")
    kafka_log.addHandler(handler)
    try:
        yield handler
    finally:
        kafka_log.removeHandler(handler)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, its causes, and exceptions wrapped in its args (KafkaConnectionError(e))."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(a for a in current.args if isinstance(a, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)


# X509_V_ERR_* codes that mean "the certificate is not for this host".
_HOSTNAME_MISMATCH_CODES = frozenset({62, 64})
# TLS alerts a broker sends when it requires a client certificate and got none or a bad one.
_CLIENT_CERT_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "HANDSHAKE_FAILURE",
)


def explain_refusal(settings: WorkerSettings, failures: list[BaseException]) -> str | None:
    """A sentence naming why the broker was not usable and the setting to check, from
    the recorded failures (latest first); None when none of them says."""
    for failure in reversed(failures):
        for exc in _causes(failure):
            reason = _explain_one(settings, exc)
            if reason is not None:
                return reason
    return None


def _explain_one(settings: WorkerSettings, exc: BaseException) -> str | None:
    name = _kind(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _HOSTNAME_MISMATCH_CODES:
            return (
                "the broker's TLS certificate does not name the host connected to "
                f"({exc.verify_message}): use a bootstrap address its certificate names "
                f"(MODSTREAM_KAFKA_BOOTSTRAP); {env_name('ssl_check_hostname')}=false "
                "switches the check off, with a warning"
            )
        return (
            "the broker's TLS certificate is not trusted "
            f"({exc.verify_message}): check {env_name('ssl_cafile')} "
            f"({settings.ssl_cafile or 'unset: the system CAs'}) holds the CA that "
            "signed it"
        )
    if isinstance(exc, ssl.SSLError):
        alert = getattr(exc, "reason", None) or ""
        reason = alert.upper()
        if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
            presented = (
                f"the certificate in {env_name('ssl_certfile')} ({settings.ssl_certfile})"
                if settings.ssl_certfile is not None
                else f"no client certificate ({env_name('ssl_certfile')} and "
                f"{env_name('ssl_keyfile')} are unset)"
            )
            return (
                f"the broker refused the TLS client authentication ({alert}); "
                f"this worker presented {presented}: the listener requires one its "
                "truststore accepts"
            )
        if any(r in reason for r in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "UNEXPECTED_EOF")):
            return (
                f"the TLS handshake failed ({alert}): is the listener a TLS one "
                f"(MODSTREAM_SECURITY_PROTOCOL is {settings.security_protocol})?"
            )
        return None
    if name == "UnsupportedSaslMechanismError":
        return (
            f"the broker does not enable SASL {settings.sasl_mechanism} on this "
            "listener: check MODSTREAM_SASL_MECHANISM"
        )
    if name in ("SaslAuthenticationFailedError", "IllegalSaslStateError"):
        if settings.sasl_mechanism == "OAUTHBEARER":
            return (
                "the broker refused the OAUTHBEARER token: check the token in "
                f"{env_name('sasl_oauth_token_file')} ({settings.sasl_oauth_token_file}) "
                "is current and meant for this cluster"
            )
        password_from = (
            f"{env_name('sasl_password_file')} ({settings.sasl_password_file})"
            if settings.sasl_password_file is not None
            else env_name("sasl_password")
        )
        return (
            f"the broker refused the credentials of user {settings.sasl_username!r} during "
            f"SASL {settings.sasl_mechanism} authentication: check MODSTREAM_SASL_USERNAME, "
            f"{password_from} and MODSTREAM_SASL_MECHANISM"
        )
    return None


def refusal_settings_hint(settings: WorkerSettings, reachable: str) -> str:
    """What to check when the handshake failed without a recorded cause."""
    if settings.security_protocol.startswith("SASL_"):
        return (
            f"{reachable} accepts connections but closed them during SASL "
            f"{settings.sasl_mechanism} authentication: check MODSTREAM_SASL_USERNAME "
            f"({settings.sasl_username!r}), MODSTREAM_SASL_PASSWORD and "
            "MODSTREAM_SASL_MECHANISM"
        )
    if settings.security_protocol.endswith("SSL"):
        return (
            f"{reachable} accepts connections but the TLS handshake failed: check "
            f"{env_name('ssl_cafile')}, {env_name('ssl_certfile')} and that the listener speaks TLS"
        )
    return (
        f"{reachable} accepts connections but no Kafka handshake completed: is it a "
        "Kafka PLAINTEXT listener (MODSTREAM_SECURITY_PROTOCOL)?"
    )


# -- which ACL is missing --------------------------------------------------------------


def missing_right(exc: BaseException | None, settings: WorkerSettings) -> str | None:
    """The ACL an authorization failure says this worker lacks, naming the setting that
    names the resource: e.g. "WRITE on topic 'x' (MODSTREAM_DEAD_LETTER_TOPIC)"."""
    if exc is None:
        return None
    for cause in _causes(exc):
        name = type(cause).__name__
        if name == "GroupAuthorizationFailedError":
            return f"READ on group {settings.group_id!r} (MODSTREAM_GROUP_ID)"
        if name == "TopicAuthorizationFailedError":
            return _topic_right(str(cause), settings)
        if name == "TransactionalIdAuthorizationFailedError":
            return (
                f"WRITE on transactional id {settings.resolved_transactional_id()!r} "
                "(MODSTREAM_TRANSACTIONAL_ID)"
            )
        if name == "ClusterAuthorizationFailedError":
            return "IDEMPOTENT_WRITE on the cluster (brokers before 2.8 require it)"
    return None


def _topic_right(text: str, settings: WorkerSettings) -> str:
    roles = (
        (settings.input_topic, "READ", "input_topic"),
        (settings.output_topic, "WRITE", "output_topic"),
        (settings.dead_letter_topic, "WRITE", "dead_letter_topic"),
    )
    # Whole names only: one topic's name may contain another's ("in", "in-dead").
    named = set(re.findall(r"[A-Za-z0-9._-]+", text))
    for topic, operation, field in roles:
        if topic in named:
            return f"{operation} on topic {topic!r} ({env_name(field)})"
    return "READ on the input topic or WRITE on the output topics"


def authorization_hint(exc: BaseException | None, settings: WorkerSettings) -> str:
    """ "; the broker's ACLs deny this worker …" for an authorization failure, else ""."""
    right = missing_right(exc, settings)
    if right is None:
        return ""
    return f"; the broker's ACLs deny this worker {right}: grant it (README: Security)"


def input_topic_unauthorized(consumer: Any, settings: WorkerSettings) -> str | None:
    """Why the consumer has nothing to read when its principal may not read the input topic.

    kafka-python does not raise for a subscribed topic it is denied: it logs, and the
    group hands this member no partitions, which would look like an idle, ready worker.
    Its cluster metadata's `unauthorized_topics` (no I/O) is looked up defensively, so a
    client upgrade degrades to "not checked". While denied, a metadata refresh is
    requested so that a granted ACL is noticed within a poll or two, not after
    `metadata.max.age.ms`.
    """
    cluster = getattr(consumer, "_cluster", None)
    denied = getattr(cluster, "unauthorized_topics", None)
    if not isinstance(denied, set) or settings.input_topic not in denied:
        return None
    request_update = getattr(cluster, "request_update", None)
    if callable(request_update):
        request_update()
    return (
        f"cannot read topic {settings.input_topic!r}: the broker's ACLs deny this worker "
        f"READ on topic {settings.input_topic!r} (MODSTREAM_INPUT_TOPIC): grant it "
        "(README: Security)"
    )
