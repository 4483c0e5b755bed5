"""Worker configuration: environment (`MODSTREAM_*`), then CLI flags on top.

Every field here is a real knob of the running worker; the deployment manifests and
the README's configuration table are checked against this class.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.paths import default_checkpoint_dir
from schemas.request import DEFAULT_MAX_TEXT_CHARS

RECONNECT_BACKOFF_MAX_MS = 1_000

# Secrets never go on a command line, where `ps` and shell history would show them.
ENV_ONLY_SETTINGS = frozenset({"sasl_password"})

Device = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Delivery = Literal["at_least_once", "exactly_once"]
AssignmentStrategy = Literal["range", "roundrobin", "cooperative-sticky"]


class WorkerSettings(BaseSettings):
    """All settings of `modstream worker`; env names are `MODSTREAM_` + the field in capitals."""

    model_config = SettingsConfigDict(
        env_prefix="MODSTREAM_", extra="ignore", validate_default=True
    )

    kafka_bootstrap: Annotated[
        str, Field(min_length=1, description="Comma-separated Kafka bootstrap servers.")
    ] = "127.0.0.1:9092"
    input_topic: Annotated[str, Field(min_length=1, description="Topic of requests.")] = (
        "moderation.requests"
    )
    output_topic: Annotated[str, Field(min_length=1, description="Topic of results.")] = (
        "moderation.results"
    )
    dead_letter_topic: Annotated[
        str, Field(min_length=1, description="Topic of rejected inputs.")
    ] = "moderation.dead-letter"
    group_id: Annotated[str, Field(min_length=1, description="Kafka consumer group.")] = "modstream"
    client_id: Annotated[str, Field(min_length=1, description="Kafka client id prefix.")] = (
        "modstream-worker"
    )
    checkpoint_dir: Annotated[
        Path,
        Field(
            description="Checkpoint directory (model.json + weights.safetensors), or a "
            "checkpoint store root, or its `current` link."
        ),
    ] = Field(default_factory=default_checkpoint_dir)
    reload_interval_s: Annotated[
        float,
        Field(
            ge=0,
            description="Check the checkpoint for a new version this often; 0 = only on SIGHUP.",
        ),
    ] = 10.0
    device: Annotated[Device, Field(description="Inference device: auto, cpu or cuda.")] = "auto"
    max_batch_size: Annotated[
        int, Field(ge=1, le=65_536, description="Close a batch at this many records.")
    ] = 512
    max_batch_wait_ms: Annotated[
        int,
        Field(ge=0, le=60_000, description="Close a batch this long after its first record."),
    ] = 20
    max_batch_bytes: Annotated[
        int, Field(ge=1024, description="Close a batch when its values reach this many bytes.")
    ] = 4 * 1024 * 1024
    pipeline_depth: Annotated[
        int,
        Field(
            ge=0,
            le=64,
            description="Batches in flight while the next is scored; 0 = one at a time.",
        ),
    ] = 2
    max_text_chars: Annotated[
        int, Field(ge=1, le=1_000_000, description="Longer texts are dead-lettered.")
    ] = DEFAULT_MAX_TEXT_CHARS
    max_tokens: Annotated[
        int, Field(ge=1, le=4096, description="Tokens scored per text; the rest is cut.")
    ] = 256
    torch_threads: Annotated[
        int,
        Field(
            ge=0,
            description="torch intra-op threads (1 leaves a core for Kafka I/O); 0 = default.",
        ),
    ] = 1
    gil_switch_interval_us: Annotated[
        int,
        Field(
            ge=0,
            le=100_000,
            description="Python's thread switch interval in µs: short lets the scoring "
            "thread take the GIL back quickly between torch calls; 0 = Python's 5000.",
        ),
    ] = 100
    metrics_host: Annotated[str, Field(description="Bind address of /metrics and health.")] = (
        "0.0.0.0"
    )
    metrics_port: Annotated[
        int, Field(ge=0, le=65_535, description="Port of /metrics, /livez, /readyz; 0 = any.")
    ] = 9108
    log_level: Annotated[LogLevel, Field(description="debug, info, warning or error.")] = "info"
    log_summary_interval_s: Annotated[
        float, Field(gt=0, description="Seconds between info-level summary log lines.")
    ] = 30.0
    lag_interval_s: Annotated[
        float, Field(gt=0, description="Seconds between consumer lag refreshes.")
    ] = 5.0
    liveness_deadline_s: Annotated[
        float,
        Field(gt=0, description="/livez fails when the processing loop is stuck this long."),
    ] = 60.0
    publish_timeout_s: Annotated[
        float, Field(gt=0, description="Wait this long for output acknowledgements per try.")
    ] = 30.0
    startup_timeout_s: Annotated[
        float, Field(gt=0, description="Give up when the broker is unreachable this long.")
    ] = 30.0
    security_protocol: Annotated[
        SecurityProtocol, Field(description="Kafka security protocol.")
    ] = "PLAINTEXT"
    sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None,
        Field(description="SASL mechanism when the protocol uses SASL."),
    ] = None
    sasl_username: Annotated[str | None, Field(description="SASL user name.")] = None
    sasl_password: Annotated[
        SecretStr | None, Field(description="SASL password (env or secret file only).")
    ] = None
    ssl_cafile: Annotated[Path | None, Field(description="CA bundle for TLS.")] = None
    delivery: Annotated[
        Delivery,
        Field(
            description="at_least_once (commit after acks) or exactly_once (outputs and "
            "offsets in one transaction)."
        ),
    ] = "at_least_once"
    transactional_id: Annotated[
        str | None,
        Field(
            min_length=1,
            description="Stable transactional id (exactly_once); default: group id + "
            "group instance id, else + host name. Unique per live worker.",
        ),
    ] = None
    group_instance_id: Annotated[
        str | None,
        Field(
            min_length=1,
            description="Static group membership: a restart with the same id rejoins "
            "without a rebalance. Unique per live worker.",
        ),
    ] = None
    assignment_strategy: Annotated[
        AssignmentStrategy,
        Field(description="Partition assignor: range, roundrobin or cooperative-sticky."),
    ] = "range"
    session_timeout_ms: Annotated[
        int,
        Field(
            ge=6_000,
            le=1_800_000,
            description="A worker silent this long leaves the group (and a static member "
            "is replaced only after it).",
        ),
    ] = 45_000
    max_poll_interval_ms: Annotated[
        int,
        Field(
            ge=10_000,
            description="Most time between polls; one batch (max_batch_size records) must "
            "be scored and published well within it.",
        ),
    ] = 300_000

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("sasl_mechanism")
    @classmethod
    def _sasl_needs_a_mechanism(cls, value: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol", "PLAINTEXT")
        if value is None and str(protocol).startswith("SASL_"):
            raise ValueError(f"required when security_protocol is {protocol}")
        return value

    @field_validator("sasl_username", "sasl_password")
    @classmethod
    def _sasl_needs_credentials(
        cls, value: str | SecretStr | None, info: ValidationInfo
    ) -> str | SecretStr | None:
        if value is None and info.data.get("sasl_mechanism") is not None:
            raise ValueError(f"required with sasl_mechanism {info.data['sasl_mechanism']}")
        return value

    def resolved_transactional_id(self) -> str:
        """The transactional id of this worker: stable across its restarts, unique among
        live workers (a second producer with the same id fences the first)."""
        if self.transactional_id is not None:
            return self.transactional_id
        member = self.group_instance_id or socket.gethostname()
        return f"{self.group_id}.{member}"

    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",")]

    def kafka_common(self) -> dict[str, object]:
        """Connection settings shared by the consumer, the producer and admin clients."""
        common: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers(),
            "security_protocol": self.security_protocol,
            # kafka-python backs off up to 30 s between reconnects; after a broker restart
            # that is up to 30 s of idling. The Java client's 1 s cap suits a worker better.
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        }
        if self.sasl_mechanism is not None:
            common["sasl_mechanism"] = self.sasl_mechanism
            common["sasl_plain_username"] = self.sasl_username
            common["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.ssl_cafile is not None:
            common["ssl_cafile"] = str(self.ssl_cafile)
        return common


def settings_markdown() -> str:
    """The README's configuration table, generated so the docs cannot drift from the code."""
    rows = ["| env | flag | default | meaning |", "|---|---|---|---|"]
    for name, field in WorkerSettings.model_fields.items():
        if field.default_factory is not None:
            default = "`checkpoints/current` under the repo root"
        elif field.default is None:
            default = "—"
        else:
            default = f"`{field.default}`"
        flag = "(env only)" if name in ENV_ONLY_SETTINGS else f"`--{name.replace('_', '-')}`"
        rows.append(f"| `MODSTREAM_{name.upper()}` | {flag} | {default} | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(settings_markdown())
