"""The worker's Kafka clients: how they are built, and what their refusals mean.

`connect` builds the consumer and the producer from `WorkerSettings` (bootstrap, group,
security: `WorkerSettings.kafka_common` hands both clients the same SASL/TLS settings),
and reads the output topics' size limits (`read_output_limits`, worker/outputs.py).
When no broker answers within `MODSTREAM_STARTUP_TIMEOUT_S` it raises
`BrokerUnavailableError` (exit code 4) saying which step failed: nothing accepts TCP
connections (or the host name does not resolve), or something does but the SASL or
TLS handshake never completed. kafka-python's own retry lines are held back meanwhile
(worker/logs.py), so the reason is one line, not 17 (2 s against a closed port).

Runs on the main thread at start; `new_producer` also on the processing thread, when
exactly-once delivery replaces a producer it could not abort a transaction with.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import (
    FencedInstanceIdError,
    KafkaError,
    ProducerFencedError,
    TransactionalIdAuthorizationFailedError,
)

from model.errors import ExitCode, ModstreamError
from worker.logs import client_logs_quieted
from worker.outputs import OutputLimits
from worker.refusal import (
    authorization_hint,
    explain_refusal,
    missing_right,
    recording_handshake_failures,
    refusal_settings_hint,
)
from worker.settings import WorkerSettings
from worker.sink import describe

log = structlog.get_logger("modstream.worker")

ASSIGNORS: dict[str, tuple[type[Any], ...]] = {
    "range": (RangePartitionAssignor,),
    "roundrobin": (RoundRobinPartitionAssignor,),
    "cooperative-sticky": (CooperativeStickyAssignor,),
}
# Errors after which this process must not go on: another live worker holds the same
# transactional id or group instance id (a configuration error), or this one is a zombie.
FENCING_ERRORS: tuple[type[BaseException], ...] = (
    ProducerFencedError,
    FencedInstanceIdError,
    TransactionalIdAuthorizationFailedError,
)


class BrokerUnavailableError(ModstreamError):
    """The bootstrap servers could not be reached at start."""

    exit_code = ExitCode.BROKER


class WorkerFencedError(ModstreamError):
    """Another live worker has this one's identity (transactional or group instance id):
    going on would fight over it, so the worker stops without committing (exit code 1)."""


@dataclass(frozen=True)
class KafkaClients:
    """What `connect` made, for the worker to wire (its threads: see Source, delivery)."""

    consumer: KafkaConsumer
    producer: KafkaProducer
    limits: OutputLimits


def connect(settings: WorkerSettings) -> KafkaClients:
    """Both clients and the output limits, or BrokerUnavailableError naming the
    bootstrap and why it failed."""
    consumer: KafkaConsumer | None = None
    # kafka-python only logs why a handshake failed: record it to say so. Its lines are
    # kept off stderr meanwhile: the error below says it once, and why.
    with recording_handshake_failures() as handshake, client_logs_quieted():
        try:
            consumer = new_consumer(settings)
            producer = new_producer(settings)
        except KafkaError as exc:
            if consumer is not None:
                consumer.close(autocommit=False)
            hint = authorization_hint(exc, settings) or refusal_hint(settings, handshake.failures)
            raise BrokerUnavailableError(
                f"no usable Kafka broker at {settings.kafka_bootstrap!r} within "
                f"{settings.startup_timeout_s:g}s (MODSTREAM_KAFKA_BOOTSTRAP, security "
                f"protocol {settings.security_protocol}): {describe(exc)}{hint}"
            ) from exc
    limits = read_output_limits(settings, int(producer.config["max_request_size"]))
    return KafkaClients(consumer, producer, limits)


def read_output_limits(settings: WorkerSettings, producer_max: int) -> OutputLimits:
    """`max.message.bytes` of the result and dead-letter topics, as the broker applies
    it (`config_filter="all"`: the default filter hides values inherited from the
    broker). A topic whose limit cannot be read (describe not allowed, topic missing)
    gets the producer's `max_request_size` alone; what the broker refuses anyway is
    replaced when it is sent (worker/delivery.py)."""
    topics = [settings.output_topic, settings.dead_letter_topic]
    found: dict[str, int] = {}
    try:
        admin = KafkaAdminClient(
            client_id=f"{settings.client_id}-admin",
            request_timeout_ms=int(settings.startup_timeout_s * 1000),
            **settings.kafka_common(),
        )
        try:
            answer = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics],
                config_filter="all",
            )
        finally:
            admin.close()
        for topic in topics:
            entry = answer.get("topic", {}).get(topic, {}).get("max.message.bytes", {})
            if str(entry.get("value", "")).isdigit():
                found[topic] = int(entry["value"])
    except KafkaError as exc:
        log.warning("output_limits_unread", error=describe(exc), producer_max=producer_max)
    missing = [topic for topic in topics if topic not in found]
    if missing:
        log.warning("output_limits_unknown", topics=missing, using_producer_max=producer_max)
    log.info("output_limits", producer_max=producer_max, topic_max=found)
    return OutputLimits(producer_max, found)


def new_consumer(settings: WorkerSettings) -> KafkaConsumer:
    """A group member that never commits by itself: offsets are committed by the delivery
    (worker/delivery.py), only for acknowledged outputs."""
    s = settings
    transactional = s.delivery == "exactly_once"
    return KafkaConsumer(
        group_id=s.group_id,
        group_instance_id=s.group_instance_id,
        client_id=f"{s.client_id}-consumer",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=s.max_batch_size,
        session_timeout_ms=s.session_timeout_ms,
        max_poll_interval_ms=s.max_poll_interval_ms,
        partition_assignment_strategy=ASSIGNORS[s.assignment_strategy],
        isolation_level="read_committed" if transactional else "read_uncommitted",
        bootstrap_timeout_ms=int(s.startup_timeout_s * 1000),
        **s.kafka_common(),
    )


def new_producer(settings: WorkerSettings) -> KafkaProducer:
    """An idempotent producer; in exactly-once mode a transactional one, initialised.

    `init_transactions` with this worker's stable transactional id fences any earlier
    producer with the same id (e.g. the process before a kill -9) and aborts the
    transaction it left open, so none of its outputs ever become visible.
    """
    s = settings
    transactional = s.delivery == "exactly_once"
    options: dict[str, Any] = {
        "client_id": f"{s.client_id}-producer",
        "acks": "all",
        "linger_ms": 5,
        "max_block_ms": int(s.publish_timeout_s * 1000),
        "bootstrap_timeout_ms": int(s.startup_timeout_s * 1000),
        **s.kafka_common(),
    }
    if transactional:
        options["transactional_id"] = s.resolved_transactional_id()
    producer = KafkaProducer(**options)
    if transactional:
        try:
            producer.init_transactions()
        except BaseException:
            producer.close(timeout=1.0)
            raise
        log.info("transactions_initialised", transactional_id=options["transactional_id"])
    return producer


def fenced_message(settings: WorkerSettings, exc: BaseException) -> str:
    """Why a fenced worker stops, naming the ids that must be unique (or, when the
    broker's ACLs refused the transactional id, the missing right)."""
    right = missing_right(exc, settings)
    if right is not None:  # TransactionalIdAuthorizationFailedError: an ACL, not a twin
        return (
            f"{describe(exc)}: the broker's ACLs deny this worker {right}; "
            "stopping without committing"
        )
    return (
        f"{type(exc).__name__}: {exc}: another live worker uses transactional id "
        f"{settings.resolved_transactional_id()!r} or group instance id "
        f"{settings.group_instance_id!r} (MODSTREAM_TRANSACTIONAL_ID / "
        "MODSTREAM_GROUP_INSTANCE_ID must be unique per worker); stopping without committing"
    )


def refusal_hint(settings: WorkerSettings, failures: Sequence[BaseException] = ()) -> str:
    """Why no bootstrap server answered: its name does not resolve, nothing accepts TCP
    connections there, or the Kafka handshake never completes: from the failures the
    client reported (worker/refusal.py), else from the settings."""
    servers = settings.bootstrap_servers()
    unresolved = [server for server in servers if not resolves(server)]
    if len(unresolved) == len(servers):
        hosts = ", ".join(server.rpartition(":")[0] for server in unresolved)
        return f"; {hosts} does not resolve (DNS): check the host name"
    reachable = [server for server in servers if tcp_reachable(server)]
    if not reachable:
        also = f" ({', '.join(unresolved)} does not resolve)" if unresolved else ""
        return f"; nothing accepts TCP connections there{also}"
    explained = explain_refusal(settings, list(failures))
    return f"; {explained or refusal_settings_hint(settings, reachable[0])}"


def resolves(server: str) -> bool:
    """Whether the host of `host:port` has an address (DNS, /etc/hosts, a literal IP)."""
    host, _, port = server.rpartition(":")
    try:
        socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):  # socket.gaierror is an OSError
        return False
    return True


def tcp_reachable(server: str, timeout_s: float = 2.0) -> bool:
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False
