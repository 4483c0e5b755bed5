"""worker/delivery.py: what each answer to a commit does to the worker (at-least-once).

A commit refused while the group rebalances passes by itself: counted as `deferred`,
logged at info, the worker stays ready. One refused by an ACL passes only when an
operator grants the right: the worker is not ready, and says which right and which
setting, until a commit succeeds again. The README's fault table and its Security
section promise both."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from kafka.errors import GroupAuthorizationFailedError, RebalanceInProgressError

from tests.unit.test_delivery import FakeProducer, batch, outputs, sample
from tests.unit.test_delivery_reporting import Consumer, only, parts
from worker.delivery import AtLeastOnceDelivery
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings
from worker.sink import Shipment, Sink

GROUP_DENIED = (
    "; the broker's ACLs deny this worker READ on group 'modstream' (MODSTREAM_GROUP_ID): "
    "grant it (README: Security)"
)


class Worker:
    """An at-least-once delivery wired as worker/app.py wires it: with the settings
    (they name the right an ACL refuses) and without `commit_async` (the unpipelined
    worker)."""

    def __init__(self) -> None:
        made = parts()
        self.consumer: Consumer = made.consumer  # type: ignore[assignment]
        self.metrics: WorkerMetrics = made.metrics
        self.health: HealthState = made.health
        sink = Sink(FakeProducer(), timeout_s=1.0)
        self.delivery = AtLeastOnceDelivery(
            sink,
            self.consumer,
            self.metrics,
            self.health,
            made.stop,
            first_backoff_s=0.0,
            settings=WorkerSettings(),
        )

    def deliver(self) -> list[Any]:
        """One batch delivered; the log lines it wrote."""
        with structlog.testing.capture_logs() as logs:
            assert self.delivery.deliver(batch(), Shipment(outputs())) > 0
        return logs

    def commits(self, result: str) -> float:
        return sample(self.metrics, "modstream_commits_total", result=result)


def test_without_pipelining_the_commit_is_made_before_deliver_returns() -> None:
    worker = Worker()
    worker.deliver()
    assert worker.consumer.kinds == ["sync"], "the default is a synchronous commit"
    assert worker.consumer.commits == [{0: 12, 1: 6}]
    assert worker.commits("ok") == 1


@pytest.mark.parametrize("commit_async", [False, True])
def test_a_commit_refused_during_a_rebalance_is_deferred_and_the_worker_stays_ready(
    commit_async: bool,
) -> None:
    worker = Worker()
    worker.delivery.commit_async = commit_async
    refusal = RebalanceInProgressError("the group is rebalancing")
    worker.consumer.refuse = refusal
    logs = worker.deliver()
    assert only(logs, "commit_deferred") == {
        "event": "commit_deferred",
        "log_level": "info",
        "error": f"RebalanceInProgressError: {refusal}",
        "offsets": {"in-0": 12, "in-1": 6},
    }
    assert [line["event"] for line in logs] == ["commit_deferred"], "no warning, no failure"
    assert worker.commits("deferred") == 1
    assert worker.commits("failed") == worker.commits("ok") == 0
    assert worker.metrics.registry.get_sample_value(
        "modstream_kafka_errors_total", {"kind": "RebalanceInProgressError"}
    ) in (None, 0.0), "a rebalance is not a Kafka error"
    assert worker.health.readiness()[0], "a rebalance passes by itself"


@pytest.mark.parametrize("commit_async", [False, True])
def test_a_commit_refused_by_an_acl_makes_the_worker_not_ready_until_one_succeeds(
    commit_async: bool,
) -> None:
    worker = Worker()
    worker.delivery.commit_async = commit_async
    refusal = GroupAuthorizationFailedError("modstream")
    worker.consumer.refuse = refusal
    error = f"GroupAuthorizationFailedError: {refusal}"

    logs = worker.deliver()
    assert only(logs, "commit_refused") == {
        "event": "commit_refused",
        "log_level": "warning",
        "error": f"{error}{GROUP_DENIED}",
        "offsets": {"in-0": 12, "in-1": 6},
    }
    ready, body = worker.health.readiness()
    assert not ready
    assert body["reasons"] == [f"committing offsets failed: {error}{GROUP_DENIED}"]
    assert body["producer_ok"] is True, "publishing works: only commits are refused"
    assert worker.commits("deferred") == 1

    # Refused again: still not ready, but logged and counted as an error once per outage.
    logs = worker.deliver()
    assert "commit_refused" not in [line["event"] for line in logs]
    assert not worker.health.readiness()[0]
    # Asynchronous: the deferred offsets are sent again before the batch's own commit.
    assert worker.commits("deferred") == (3 if commit_async else 2)
    kafka_errors = sample(
        worker.metrics, "modstream_kafka_errors_total", kind="GroupAuthorizationFailedError"
    )
    assert kafka_errors == 1

    # The operator grants the right: the next commit succeeds and the worker is ready.
    worker.consumer.refuse = None
    logs = worker.deliver()
    assert only(logs, "commits_recovered") == {"event": "commits_recovered", "log_level": "info"}
    ready, body = worker.health.readiness()
    assert ready and body["reasons"] == []
    assert worker.commits("ok") == (2 if commit_async else 1)

    # Later successes say nothing more.
    logs = worker.deliver()
    assert "commits_recovered" not in [line["event"] for line in logs]


def test_a_commit_that_succeeds_without_an_earlier_refusal_logs_no_recovery() -> None:
    worker = Worker()
    logs = worker.deliver()
    assert logs == []
    assert worker.health.readiness()[0]


def test_a_rebalance_refusal_does_not_clear_an_acl_refusal() -> None:
    """Only a commit that succeeds proves the right is back."""
    worker = Worker()
    worker.consumer.refuse = GroupAuthorizationFailedError("modstream")
    worker.deliver()
    worker.consumer.refuse = RebalanceInProgressError("the group is rebalancing")
    worker.deliver()
    ready, body = worker.health.readiness()
    assert not ready and GROUP_DENIED in body["reasons"][0]


def test_deferred_offsets_of_an_acl_refusal_are_sent_again_between_batches() -> None:
    worker = Worker()
    worker.delivery.commit_async = True
    worker.consumer.refuse = GroupAuthorizationFailedError("modstream")
    worker.deliver()
    worker.consumer.refuse = None
    worker.delivery.retry_deferred_commits()
    assert worker.consumer.commits[-1] == {0: 12, 1: 6}, "the refused offsets, sent again"
    assert worker.health.readiness()[0]
