"""Worker configuration: environment (`MODSTREAM_*`), then CLI flags on top.

Every field here is a real knob of the running worker; the deployment manifests and
the README's configuration table are checked against this class.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.paths import default_checkpoint_dir
from model.reading import DEFAULT_MAX_WINDOWS
from schemas.request import DEFAULT_MAX_TEXT_CHARS

RECONNECT_BACKOFF_MAX_MS = 1_000

# Secrets never go on a command line, where `ps` and shell history would show them;
# each also has a `*_file` twin for secrets mounted as files.
ENV_ONLY_SETTINGS = frozenset({"sasl_password", "ssl_key_password"})
# Settings that only mean something on a TLS connection.
TLS_SETTINGS = (
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password",
    "ssl_key_password_file",
)

Device = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
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
        int,
        Field(
            ge=1,
            le=1_000_000,
            description="Scoring budget: characters read per text. Longer texts are still "
            "scored, on their head, tail and sampled middle; the result's coverage says how "
            "much was read.",
        ),
    ] = DEFAULT_MAX_TEXT_CHARS
    max_windows: Annotated[
        int,
        Field(
            ge=2,
            le=4096,
            description="Windows scored per text at most (the first, the last and evenly "
            "spread ones beyond it).",
        ),
    ] = DEFAULT_MAX_WINDOWS
    max_tokens: Annotated[
        int,
        Field(
            ge=1,
            le=4096,
            description="Tokens per window at most; the model's own window (128) unless lower.",
        ),
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
        SaslMechanism | None,
        Field(
            description="SASL mechanism when the protocol uses SASL: PLAIN, SCRAM-SHA-256, "
            "SCRAM-SHA-512 or OAUTHBEARER."
        ),
    ] = None
    sasl_username: Annotated[str | None, Field(description="SASL user name (PLAIN and SCRAM).")] = (
        None
    )
    sasl_password: Annotated[
        SecretStr | None,
        Field(description="SASL password (env only; or sasl_password_file)."),
    ] = None
    sasl_password_file: Annotated[
        Path | None,
        Field(description="File holding the SASL password (e.g. a mounted Secret)."),
    ] = None
    sasl_oauth_token_file: Annotated[
        Path | None,
        Field(
            description="OAUTHBEARER: file holding the access token, re-read whenever "
            "it changes (e.g. a projected service-account token)."
        ),
    ] = None
    ssl_cafile: Annotated[
        Path | None,
        Field(
            description="CA bundle (PEM) the broker certificate must chain to; "
            "default: the system's."
        ),
    ] = None
    ssl_certfile: Annotated[
        Path | None,
        Field(description="Client certificate chain (PEM) for mutual TLS."),
    ] = None
    ssl_keyfile: Annotated[
        Path | None,
        Field(description="Private key (PEM) of the client certificate."),
    ] = None
    ssl_key_password: Annotated[
        SecretStr | None,
        Field(
            description="Password of an encrypted ssl_keyfile (env only; or ssl_key_password_file)."
        ),
    ] = None
    ssl_key_password_file: Annotated[
        Path | None,
        Field(description="File holding the password of an encrypted ssl_keyfile."),
    ] = None
    ssl_check_hostname: Annotated[
        bool,
        Field(
            description="Check that the broker certificate names the host connected to; "
            "false (logged as a warning) only for brokers whose certificates cannot."
        ),
    ] = True
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

    @model_validator(mode="after")
    def _security_settings_fit_together(self) -> WorkerSettings:
        """Refuse combinations that could only fail later, or silently not apply."""
        uses_tls = self.security_protocol.endswith("SSL")
        if not uses_tls:
            for name in TLS_SETTINGS:
                if getattr(self, name) is not None:
                    raise _invalid(
                        name,
                        f"set, but security_protocol {self.security_protocol} "
                        "does not use TLS (SSL or SASL_SSL)",
                    )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            missing = "ssl_keyfile" if self.ssl_keyfile is None else "ssl_certfile"
            raise _invalid(missing, "mutual TLS needs both ssl_certfile and ssl_keyfile")
        _at_most_one(self, "ssl_key_password")
        if self.ssl_keyfile is None and (
            self.ssl_key_password is not None or self.ssl_key_password_file is not None
        ):
            raise _invalid("ssl_key_password", "set without ssl_keyfile")
        mechanism = self.sasl_mechanism
        if mechanism is None:  # a SASL protocol without one is refused field by field
            return self
        if not self.security_protocol.startswith("SASL_"):
            raise _invalid(
                "sasl_mechanism",
                f"set, but security_protocol {self.security_protocol} does not use SASL",
            )
        if mechanism == "OAUTHBEARER":
            if self.sasl_oauth_token_file is None:
                raise _invalid("sasl_oauth_token_file", "required with sasl_mechanism OAUTHBEARER")
            return self
        if self.sasl_username is None:
            raise _invalid("sasl_username", f"required with sasl_mechanism {mechanism}")
        _at_most_one(self, "sasl_password")
        if self.sasl_password is None and self.sasl_password_file is None:
            raise _invalid(
                "sasl_password",
                f"required with sasl_mechanism {mechanism}: set "
                "MODSTREAM_SASL_PASSWORD or MODSTREAM_SASL_PASSWORD_FILE",
            )
        return self

    def resolved_transactional_id(self) -> str:
        """The transactional id of this worker: stable across its restarts, unique among
        live workers (a second producer with the same id fences the first)."""
        if self.transactional_id is not None:
            return self.transactional_id
        member = self.group_instance_id or socket.gethostname()
        return f"{self.group_id}.{member}"

    def engine_options(self) -> dict[str, int]:
        """`Engine.load`'s keyword arguments for how a text is read: tokens per window,
        the scoring budget in characters and the most windows per text."""
        return {
            "max_tokens": self.max_tokens,
            "max_chars": self.max_text_chars,
            "max_windows": self.max_windows,
        }

    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",")]

    def kafka_common(self) -> dict[str, object]:
        """Connection settings shared by the consumer, the producer and admin clients.

        Raises `worker.security.SecuritySettingsError` when a TLS file or a secret file
        cannot be used (exit 2, naming the setting).
        """
        from worker.security import kafka_security_options

        return {
            "bootstrap_servers": self.bootstrap_servers(),
            # kafka-python backs off up to 30 s between reconnects; after a broker restart
            # that is up to 30 s of idling. The Java client's 1 s cap suits a worker better.
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
            **kafka_security_options(self),
        }


def env_name(field: str) -> str:
    """The environment variable of setting `field`: `MODSTREAM_` + the field in capitals."""
    return f"MODSTREAM_{field.upper()}"


def setting_names(field: str) -> str:
    """How an operator sets `field`: its env name, and its flag unless it is env only."""
    env = env_name(field)
    if field in ENV_ONLY_SETTINGS:
        return f"{env} (environment only)"
    return f"{env} / --{field.replace('_', '-')}"


def _invalid(field: str, why: str) -> ValueError:
    return ValueError(f"{setting_names(field)}: {why}")


def _at_most_one(settings: WorkerSettings, secret: str) -> None:
    """A secret comes from the environment or from its file, never both."""
    if getattr(settings, secret) is not None and getattr(settings, f"{secret}_file") is not None:
        raise _invalid(f"{secret}_file", f"set together with MODSTREAM_{secret.upper()}; use one")


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
