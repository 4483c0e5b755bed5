"""Log lines are JSON objects with consistent keys; the level comes from configuration."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from worker.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_structlog_and_stdlib_lines_are_json_with_the_shared_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    structlog.contextvars.bind_contextvars(model_version="v7")
    log = structlog.get_logger("modstream.test")
    log.warning("dead_lettered", topic="t", partition=2, offset=41, error_kind="invalid_json")
    log.info("summary", messages=10, lag=3)
    log.debug("batch_processed", batch_size=4)
    logging.getLogger("kafka.conn").warning("connection to %s lost", "broker-1")
    logging.getLogger("kafka.conn").info("chatty kafka info")

    records = lines(capsys.readouterr().err)
    assert [r["event"] for r in records] == [
        "dead_lettered",
        "summary",
        "connection to broker-1 lost",
    ]
    for record in records:
        assert {"event", "level", "timestamp"} <= set(record)
        assert record["timestamp"].endswith("Z")
        assert record["model_version"] == "v7"
    dead = records[0]
    assert dead["level"] == "warning"
    assert (dead["topic"], dead["partition"], dead["offset"]) == ("t", 2, 41)
    assert records[1]["level"] == "info"
    assert records[2]["level"] == "warning"
    assert records[2]["logger"] == "kafka.conn"


def test_debug_level_lets_per_batch_detail_through(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("debug")
    structlog.get_logger("modstream.test").debug("batch_processed", batch_size=4)
    (record,) = lines(capsys.readouterr().err)
    assert record["event"] == "batch_processed"
    assert record["level"] == "debug"


def test_warning_level_hides_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning")
    log = structlog.get_logger("modstream.test")
    log.info("summary")
    log.error("publish_failed", topic="t", partition=0, offset=1)
    (record,) = lines(capsys.readouterr().err)
    assert (record["event"], record["level"]) == ("publish_failed", "error")
