"""worker/summary.py: the periodic info-level summary line."""

from __future__ import annotations

import json

import structlog
from kafka.structs import TopicPartition

from worker.metrics import WorkerMetrics
from worker.summary import SummaryLog

TOPIC = "moderation.requests"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_summary_line_reports_rates_outcomes_and_lag_once_per_interval() -> None:
    metrics, clock = WorkerMetrics(), Clock()
    summary = SummaryLog(metrics, TOPIC, interval_s=10.0, clock=clock)
    metrics.in_flight.inc(4)
    summary.add({"ok": 1, "invalid": 0, "error": 0})
    summary.add({"ok": 2, "invalid": 1, "error": 0})
    lag = {TopicPartition(TOPIC, 0): 7, TopicPartition(TOPIC, 1): 2}
    with structlog.testing.capture_logs() as logs:
        clock.now += 9.0
        summary.maybe_log(lag)  # not yet
        clock.now += 1.0
        summary.maybe_log(lag)
    (line,) = logs
    assert line["event"] == "summary"
    assert line["log_level"] == "info"
    assert line["topic"] == TOPIC
    assert line["seconds"] == 10.0
    assert line["messages"] == 4 and line["batches"] == 2
    assert line["messages_per_s"] == 0.4
    assert (line["ok"], line["invalid"], line["error"]) == (3, 1, 0)
    assert line["lag"] == 9
    assert line["lag_by_partition"] == {f"{TOPIC}-0": 7, f"{TOPIC}-1": 2}
    assert line["in_flight"] == 4
    json.dumps(line)  # renderable as one JSON line

    with structlog.testing.capture_logs() as logs:
        clock.now += 10.0
        summary.maybe_log({})
    (line,) = logs
    assert line["messages"] == 0 and line["batches"] == 0, "a new window"
