"""Prometheus config and alert rules: promtool validates them and runs the rule unit
tests in deploy/monitoring/alerts_test.yml; every rule reads only metrics the worker
exports and has a unit test that makes it fire."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.monitoring.promql import (
    MONITORING,
    PROMETHEUS_SERIES,
    exported_metric_names,
    metric_names,
    promtool,
    read,
)


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=MONITORING,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(read("alerts.yml"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules_and_the_example_config() -> None:
    rules = run_promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = run_promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_alert_rule_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_the_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "ModstreamWorkerDown",
        "ModstreamConsumerLagGrowing",
        "ModstreamLatencySLOBreach",
        "ModstreamDeadLetterRateHigh",
        "ModstreamModelReloadFailed",
        "ModstreamStalled",
    } <= names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_reads_only_exported_metrics(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, f"no metric found in {rule['expr']!r}"
    unknown = names - exported_metric_names() - PROMETHEUS_SERIES
    assert not unknown, f"{rule['alert']} reads metrics the worker does not export: {unknown}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_is_routable_and_explained(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"]
    assert rule["annotations"]["description"]


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    tests = yaml.safe_load(read("alerts_test.yml"))["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    missing = {rule["alert"] for rule in alert_rules()} - firing
    assert not missing, f"alerts without a firing unit test: {missing}"


def test_worker_exposition_passes_promtool_check_metrics() -> None:
    from prometheus_client import generate_latest

    from worker.metrics import WorkerMetrics

    metrics = WorkerMetrics()
    metrics.init_categories(["insult", "spam"])
    metrics.end_to_end_seconds.observe(0.05)
    metrics.consumer_lag.labels(topic="moderation.requests", partition="0").set(3)
    metrics.kafka_errors.labels(kind="KafkaTimeoutError").inc()
    metrics.model_info.info({"version": "v1", "labels": "insult,spam", "device": "cpu"})
    metrics.build_info.info({"version": "0.1.0"})
    exposition = generate_latest(metrics.registry).decode()
    done = run_promtool("check", "metrics", stdin=exposition)
    assert done.returncode == 0, done.stdout + done.stderr
