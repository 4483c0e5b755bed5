"""The worker's settings, in groups of one concern each; `WorkerSettings`
(worker/settings.py) combines them into one flat set of `MODSTREAM_*` variables and flags.

Grouped so that each concern reads on one screen (the single class had grown to 322
lines); the groups are plain pydantic models with no env handling of their own, so no
variable, flag, default or message changed. The Kafka security group, with the rules
across its settings, is in worker/security_settings.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from model.paths import default_checkpoint_dir
from model.reading import DEFAULT_MAX_WINDOWS
from model.threshold_overrides import (
    THRESHOLDS_ENV,
    ThresholdOverrideError,
    parse_threshold_overrides,
)
from schemas.request import DEFAULT_MAX_TEXT_CHARS

Device = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error"]
Delivery = Literal["at_least_once", "exactly_once"]
AssignmentStrategy = Literal["range", "roundrobin", "cooperative-sticky"]
Scoring = Literal["auto", "process", "in_process"]


class KafkaSettings(BaseModel):
    """Where the worker reads and writes: the brokers, the topics, its group and client id."""

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

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.kafka_bootstrap.split(",")]


class ModelSettings(BaseModel):
    """Which model serves, how often a new version is looked for, and on which device."""

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
    thresholds: Annotated[
        str | None,
        Field(
            description="Per-category thresholds over the checkpoint's and the store's "
            "policy file's, e.g. insult=0.8,spam=0.95 (each in (0, 1]); every label named "
            "must be one the model has: exit 2 at start, and a new version lacking one is "
            "not loaded (the old one keeps serving).",
        ),
    ] = None

    @field_validator("thresholds")
    @classmethod
    def _overrides_parse(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_threshold_overrides(value)
            except ThresholdOverrideError as exc:  # the caller names the setting
                raise ValueError(str(exc).removeprefix(f"{THRESHOLDS_ENV}: ")) from None
        return value

    def threshold_overrides(self) -> dict[str, float]:
        """`thresholds` as label → threshold (empty when unset)."""
        return parse_threshold_overrides(self.thresholds or "")


class BatchingSettings(BaseModel):
    """When a batch closes, and how many are in flight at once."""

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


class ScoringSettings(BaseModel):
    """How much of a text is read, the threads scoring uses, and where the model runs."""

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
    scoring: Annotated[
        Scoring,
        Field(
            description="Where the model runs: in_process (the worker's own interpreter), "
            "process (a scoring process of its own beside the Kafka I/O; Linux), or auto "
            "(process when the pod may use 2 or more CPUs). in_process by measurement: "
            "the same throughput on a shared 2-core machine, a lower p99, less memory.",
        ),
    ] = "in_process"

    def engine_options(self) -> dict[str, int]:
        """`Engine.load`'s keyword arguments for how a text is read: tokens per window,
        the scoring budget in characters and the most windows per text."""
        return {
            "max_tokens": self.max_tokens,
            "max_chars": self.max_text_chars,
            "max_windows": self.max_windows,
        }


class ObservabilitySettings(BaseModel):
    """What the worker tells its operators: /metrics and health, logs, lag."""

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


class DeadlineSettings(BaseModel):
    """How long the worker waits before it calls something stuck or failed."""

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


class DeliverySettings(BaseModel):
    """The delivery guarantee, and the transactional id exactly-once uses."""

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


class GroupMembershipSettings(BaseModel):
    """How the worker takes part in its consumer group: static membership, the assignor,
    and the timeouts after which the group gives up on it."""

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
