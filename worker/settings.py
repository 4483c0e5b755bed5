"""Worker configuration: environment (`MODSTREAM_*`), then CLI flags on top.

Every field here is a real knob of the running worker; the deployment manifests and
the README's configuration table are checked against this class. The fields live in
groups of one concern each (worker/setting_groups.py, worker/security_settings.py);
`WorkerSettings` combines them into one flat namespace, so a variable is still
`MODSTREAM_` + the field in capitals, whatever its group.
"""

from __future__ import annotations

import socket

from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.security_settings import SecuritySettings
from worker.setting_groups import (
    BatchingSettings,
    DeadlineSettings,
    DeliverySettings,
    GroupMembershipSettings,
    KafkaSettings,
    ModelSettings,
    ObservabilitySettings,
    ScoringSettings,
)
from worker.setting_names import ENV_ONLY_SETTINGS, ENV_PREFIX

RECONNECT_BACKOFF_MAX_MS = 1_000


# pydantic orders the fields base by base from the LAST base listed, so the groups are
# listed in reverse: the flags, `--help` and the README table keep the order they had
# (Kafka first, group membership last).
class WorkerSettings(
    GroupMembershipSettings,
    DeliverySettings,
    SecuritySettings,
    DeadlineSettings,
    ObservabilitySettings,
    ScoringSettings,
    BatchingSettings,
    ModelSettings,
    KafkaSettings,
    BaseSettings,
):
    """All settings of `modstream worker`; env names are `MODSTREAM_` + the field in capitals."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    def resolved_transactional_id(self) -> str:
        """The transactional id of this worker: stable across its restarts, unique among
        live workers (a second producer with the same id fences the first)."""
        if self.transactional_id is not None:
            return self.transactional_id
        member = self.group_instance_id or socket.gethostname()
        return f"{self.group_id}.{member}"

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
