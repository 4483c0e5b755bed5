"""The secure test broker's handle, and the ACLs the worker and retrain need.

`SecureBroker` wraps `kafka_local.SecureLocalKafka` (SASL_SSL with SCRAM, SSL with client
certificates, the KRaft StandardAuthorizer): one per test session, shared by every test
that needs it. Tests create their own topics and groups, so the ACLs they grant are on
names no other test uses.

`worker_rights` / `retrain_rights` are the least-privilege sets the README's Security
section documents; the tests grant exactly these, or these minus one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)

from tests.helpers import worker_env

WORKER_USER = "worker"  # SCRAM user, and CN of the worker's client certificate


@dataclass(frozen=True)
class Right:
    """One ACL: `operation` allowed on the literal resource `name`."""

    operation: str  # an ACLOperation name: READ, WRITE, ...
    resource: str  # a ResourceType name: TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER
    name: str

    def acl(self, principal: str) -> ACL:
        return ACL(
            principal=principal,
            host="*",
            operation=ACLOperation[self.operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType[self.resource], self.name, ACLResourcePatternType.LITERAL
            ),
        )

    def filter(self, principal: str) -> ACLFilter:
        return ACLFilter(
            principal=principal,
            host="*",
            operation=ACLOperation[self.operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePatternFilter(
                ResourceType[self.resource], self.name, ACLResourcePatternType.LITERAL
            ),
        )

    def __str__(self) -> str:
        return f"{self.operation} on {self.resource.lower().replace('_', ' ')} {self.name!r}"


def worker_rights(
    topics: dict[str, str], group: str, transactional_id: str | None = None
) -> list[Right]:
    """What `modstream worker` needs: read its input and group, write results and dead
    letters; with exactly-once also write its transactional id."""
    rights = [
        Right("READ", "TOPIC", topics["input"]),
        Right("READ", "GROUP", group),
        Right("WRITE", "TOPIC", topics["output"]),
        Right("WRITE", "TOPIC", topics["dead_letter"]),
    ]
    if transactional_id is not None:
        rights.append(Right("WRITE", "TRANSACTIONAL_ID", transactional_id))
    return rights


def retrain_rights(feedback_topic: str, group: str) -> list[Right]:
    """What `modstream retrain --feedback-topic` needs: read the topic, commit in its group."""
    return [Right("READ", "TOPIC", feedback_topic), Right("READ", "GROUP", group)]


@dataclass
class SecureBroker:
    kafka: Any  # kafka_local.SecureLocalKafka
    worker_password: str

    @property
    def tls(self) -> Any:
        return self.kafka.tls

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT listener: a super user, for the test harness only."""
        return str(self.kafka.bootstrap)

    def topics(
        self, name: str, roles: Sequence[str] = ("input", "output", "dead_letter")
    ) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:6]
        names = {role: f"{name}-{suffix}-{role.replace('_', '-')}" for role in roles}
        self.kafka.create_topics(list(names.values()))
        return names

    def _admin(self) -> Any:
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="secure-tests")

    def grant(self, rights: Iterable[Right], user: str = WORKER_USER) -> None:
        principal = f"User:{user}"
        admin = self._admin()
        try:
            result = admin.create_acls([right.acl(principal) for right in rights])
        finally:
            admin.close()
        assert not result["failed"], result["failed"]

    def revoke(self, rights: Iterable[Right], user: str = WORKER_USER) -> None:
        principal = f"User:{user}"
        admin = self._admin()
        try:
            results = admin.delete_acls([right.filter(principal) for right in rights])
        finally:
            admin.close()
        for acl_filter, matched, error in results:
            assert error.errno == 0 and matched, (acl_filter, error)

    def scram_env(
        self,
        topics: dict[str, str],
        checkpoint: Path,
        group: str,
        password: str | None = None,
        mechanism: str = "SCRAM-SHA-512",
        **extra: str,
    ) -> dict[str, str]:
        """A worker's environment over SASL_SSL with SCRAM (password from env)."""
        options = {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_username": WORKER_USER,
            "ssl_cafile": str(self.tls.ca),
        }
        bootstrap = self.kafka.sasl_ssl_bootstrap
        env = worker_env(bootstrap, topics, checkpoint, group, **(options | extra))
        env["MODSTREAM_SASL_PASSWORD"] = password or self.worker_password
        return env

    def mtls_env(
        self, topics: dict[str, str], checkpoint: Path, group: str, **extra: str
    ) -> dict[str, str]:
        """A worker's environment over SSL with the worker's client certificate."""
        client = self.tls.clients[WORKER_USER]
        options = {
            "security_protocol": "SSL",
            "ssl_cafile": str(self.tls.ca),
            "ssl_certfile": str(client.cert),
            "ssl_keyfile": str(client.key),
        }
        return worker_env(self.kafka.ssl_bootstrap, topics, checkpoint, group, **(options | extra))

    def secrets(self) -> list[str]:
        """Every secret a log line must never contain."""
        tls = self.tls
        keys = [c.key.read_text().strip() for c in (*tls.clients.values(), tls.untrusted_client)]
        key_bodies = [line for key in keys for line in key.splitlines() if "-----" not in line]
        passwords = [c.key_password for c in tls.clients.values()]
        return [self.worker_password, tls.keystore_password, *passwords, *key_bodies]
