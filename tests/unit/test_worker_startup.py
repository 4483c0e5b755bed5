"""What `modstream worker` says as it starts (worker/startup.py, worker/logs.py,
worker/clients.py's refusal hint, worker/worker_command.py's metrics port): misspelt
variables, the settings in effect, a taken port, and one line on why no broker answered."""

from __future__ import annotations

import argparse
import json
import logging
import socket
from collections.abc import Iterator

import pytest
import structlog

from model.errors import ExitCode
from worker.clients import refusal_hint, resolves
from worker.command_errors import UsageError
from worker.logs import client_logs_quieted, configure_logging
from worker.settings import WorkerSettings
from worker.startup import effective_settings, unknown_variables
from worker.worker_command import _metrics_server, load_settings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    environ = {
        "MODSTREAM_KAFKA_BOOTSTRAPS": "broker:9092",
        "modstream_max_batch_siz": "64",
        "MODSTREAM_MAX_BATCH_SIZE": "64",  # known
        "MODSTREAM_GLOVE_DIR": "/glove",  # read by retrain, known
        "MODSTREAM_ZZZ": "1",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == [
        ("MODSTREAM_KAFKA_BOOTSTRAPS", "MODSTREAM_KAFKA_BOOTSTRAP"),
        ("MODSTREAM_ZZZ", None),
        ("modstream_max_batch_siz", "MODSTREAM_MAX_BATCH_SIZE"),
    ]


def test_every_setting_is_a_known_variable() -> None:
    environ = {f"MODSTREAM_{name.upper()}": "x" for name in WorkerSettings.model_fields}
    assert unknown_variables(environ) == []


def test_the_settings_line_masks_the_password() -> None:
    settings = WorkerSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password="hunter2",  # type: ignore[arg-type]
    )
    shown = effective_settings(settings)
    assert set(shown) == set(WorkerSettings.model_fields)
    assert shown["sasl_username"] == "alice" and shown["sasl_password"] == "**********"
    assert "hunter2" not in json.dumps(shown)


def test_a_metrics_port_in_use_is_a_usage_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(
            argparse.Namespace(setting_metrics_host="127.0.0.1", setting_metrics_port=str(port))
        )

        class FakeWorker:
            metrics = type("M", (), {"registry": None})()
            health = None

        with pytest.raises(UsageError) as caught:
            _metrics_server(settings, FakeWorker())
    assert caught.value.exit_code == ExitCode.USAGE
    assert f"metrics port {port}" in str(caught.value)
    assert "--metrics-port / MODSTREAM_METRICS_PORT" in str(caught.value)


def test_a_host_that_does_not_resolve_is_diagnosed_as_such() -> None:
    settings = WorkerSettings(kafka_bootstrap="no-such-broker.invalid:9092")
    assert not resolves("no-such-broker.invalid:9092")
    hint = refusal_hint(settings)
    assert "no-such-broker.invalid does not resolve (DNS)" in hint
    assert "TCP" not in hint


def test_a_refused_port_is_diagnosed_as_nothing_listening() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = WorkerSettings(kafka_bootstrap=f"127.0.0.1:{port}")
    assert resolves(f"127.0.0.1:{port}")
    assert refusal_hint(settings) == "; nothing accepts TCP connections there"


def test_the_kafka_client_is_quiet_while_connecting_then_heard_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    client = logging.getLogger("kafka.net.manager")
    with client_logs_quieted():
        client.error("Connection failed: KafkaConnectionError: 111 ECONNREFUSED")
    client.error("after start-up")
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["after start-up"]


def test_at_debug_level_the_kafka_client_is_heard_while_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("debug")
    with client_logs_quieted():
        logging.getLogger("kafka.net.manager").error("bootstrap failed")
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["bootstrap failed"]


def test_handlers_on_the_client_loggers_still_see_records_while_quieted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """worker/refusal.py records the handshake failures kafka-python logs, to explain
    a refusal: quieting stderr must not starve it."""
    configure_logging("info")
    seen: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    recorder = Recorder()
    logging.getLogger("kafka").addHandler(recorder)
    try:
        with client_logs_quieted():
            logging.getLogger("kafka.net.connection").error("SSL handshake failed")
    finally:
        logging.getLogger("kafka").removeHandler(recorder)
    assert seen == ["SSL handshake failed"]
    assert capsys.readouterr().err == ""
