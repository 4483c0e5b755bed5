"""HealthState (liveness/readiness with reasons) and the HTTP server that exposes it."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from worker.health import HealthServer, HealthState


def test_not_ready_until_model_and_group_with_every_reason_named() -> None:
    state = HealthState()
    ok, body = state.readiness()
    assert not ok
    assert body["ready"] is False
    assert body["reasons"] == ["model not loaded", "consumer group not joined"]

    state.set(model_version="v1")
    ok, body = state.readiness()
    assert not ok
    assert body["reasons"] == ["consumer group not joined"]

    state.set(group_joined=True, assigned_partitions=3)
    ok, body = state.readiness()
    assert ok
    assert body == {
        "ready": True,
        "model_version": "v1",
        "group_joined": True,
        "assigned_partitions": 3,
        "producer_ok": True,
        "reasons": [],
    }


def test_idle_assigned_member_is_ready() -> None:
    """More workers than partitions: a member with none still counts as ready."""
    state = HealthState(model_version="v1", group_joined=True, assigned_partitions=0)
    assert state.readiness()[0]


def test_kafka_failure_makes_not_ready_with_its_problem() -> None:
    state = HealthState(model_version="v1", group_joined=True)
    state.set(kafka_ok=False, problem="publishing failed: KafkaTimeoutError")
    ok, body = state.readiness()
    assert not ok
    assert body["reasons"] == ["publishing failed: KafkaTimeoutError"]
    state.set(kafka_ok=False, problem=None)
    assert state.readiness()[1]["reasons"] == ["producer failing"]
    state.set(kafka_ok=True)
    assert state.readiness()[0]


def test_setting_a_field_that_does_not_exist_fails_loudly() -> None:
    state = HealthState()
    with pytest.raises(AttributeError, match="producer_ok"):
        state.set(producer_ok=False)  # the JSON name, not a field
    assert state.readiness()[1]["producer_ok"] is True


def test_liveness_fails_past_the_deadline_and_recovers_on_tick() -> None:
    state = HealthState(liveness_deadline_s=10.0)
    ok, body = state.liveness()
    assert ok
    assert body["live"] is True
    assert body["deadline_s"] == 10.0
    assert "reason" not in body

    state.set(last_progress=time.monotonic() - 11.0)
    ok, body = state.liveness()
    assert not ok
    assert body["live"] is False
    assert body["seconds_since_progress"] >= 11.0
    assert "no progress" in body["reason"]

    state.tick()
    ok, body = state.liveness()
    assert ok
    assert body["seconds_since_progress"] < 10.0


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, HealthState, CollectorRegistry]]:
    registry = CollectorRegistry()
    Counter("modstream_probe", "A probe counter.", registry=registry).inc()
    state = HealthState(liveness_deadline_s=30.0)
    server = HealthServer("127.0.0.1", 0, registry, state)
    server.start()
    try:
        yield server, state, registry
    finally:
        server.stop()


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_http_endpoints_answer_json_with_status_codes(
    server: tuple[HealthServer, HealthState, CollectorRegistry],
) -> None:
    http, state, _ = server
    status, content_type, body = get(http.port, "/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body)["reasons"] == ["model not loaded", "consumer group not joined"]

    state.set(model_version="v1", group_joined=True, assigned_partitions=1)
    status, _, body = get(http.port, "/readyz")
    assert status == 200
    assert json.loads(body)["ready"] is True

    status, content_type, body = get(http.port, "/livez")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["live"] is True

    state.set(last_progress=time.monotonic() - 60.0)
    status, _, body = get(http.port, "/livez?verbose=1")
    assert status == 503
    assert json.loads(body)["live"] is False


def test_metrics_and_unknown_paths(
    server: tuple[HealthServer, HealthState, CollectorRegistry],
) -> None:
    http, _, _ = server
    status, content_type, body = get(http.port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "modstream_probe_total 1.0" in body
    assert get(http.port, "/nope")[0] == 404


def _server_threads() -> int:
    """Connection threads of every HealthServer in this process (socketserver names
    them `Thread-N (process_request_thread)`)."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _wait_until(condition: Callable[[], bool], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)  # polling a condition under a deadline, not synchronising on time
    return condition()


def test_idle_and_excess_connections_are_bounded_and_dropped() -> None:
    """An attacker holding many half-sent requests gets at most `max_connections`
    threads for at most `request_timeout_s`; afterwards the probes answer again."""
    state = HealthState()
    state.set(model_version="v1", group_joined=True)
    limit, timeout_s, attackers = 4, 0.5, 50
    http = HealthServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        state,
        max_connections=limit,
        request_timeout_s=timeout_s,
    )
    http.start()
    held: list[socket.socket] = []
    try:
        for _ in range(attackers):
            conn = socket.create_connection(("127.0.0.1", http.port), timeout=10)
            conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
            held.append(conn)
        # Every held connection is closed by the server (rejected at once, or served by
        # one of `limit` threads until its timeout): recv sees EOF, never hangs.
        busiest = 0
        for conn in held:
            busiest = max(busiest, _server_threads())
            assert conn.recv(1024) == b""
        assert busiest <= limit
        assert http.rejected_connections >= 1
        assert _wait_until(lambda: _server_threads() == 0, 10)
        assert get(http.port, "/readyz")[0] == 200
    finally:
        for conn in held:
            conn.close()
        http.stop()
