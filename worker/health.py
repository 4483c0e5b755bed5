"""Health state and the HTTP server for /metrics, /livez and /readyz.

Liveness means the processing loop still turns: it ticks after every poll (idle polls
included, at least every half second) and after every batch, so only a loop stuck for
longer than `liveness_deadline_s` (MODSTREAM_LIVENESS_DEADLINE_S) fails /livez and gets the
pod restarted. Readiness means this pod can do useful work: model loaded (and its scoring
process up, worker/scoring_process.py), consumer group joined (with partitions, or
idle-assigned when there are more workers than partitions), Kafka reachable (clients
connected, polling and publishing work; the JSON field keeps its documented name
`producer_ok`). Both answer JSON saying why, so a failing probe explains
itself: 200 when ok, 503 when not.

The server is exposed to whatever can reach the pod's port, so its cost is bounded
whatever a client does: at most `max_connections` requests are served at once (one
thread each; a connection beyond that is closed at once, counted, never queued), and a
connection that sends nothing for `request_timeout_s` is closed. Without these bounds
500 half-sent requests held 500 threads forever.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class HealthState:
    """Written by the processing thread, read by the HTTP thread; guarded by one lock."""

    liveness_deadline_s: float = 60.0
    model_version: str | None = None
    group_joined: bool = False
    kafka_ok: bool = True  # the clients connected, and polling and publishing work
    problem: str | None = None  # why not `kafka_ok`
    # Offsets that cannot be committed (e.g. the group's ACL was taken away): cleared only
    # by a commit that succeeds, whatever polls and publishes do meanwhile.
    commit_problem: str | None = None
    # Why the scoring process cannot score now (it died and is being started again).
    scoring_problem: str | None = None
    assigned_partitions: int | None = None
    last_progress: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tick(self) -> None:
        with self._lock:
            self.last_progress = time.monotonic()

    def set(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                if name.startswith("_") or not hasattr(self, name):
                    raise AttributeError(f"HealthState has no field {name!r}")
                setattr(self, name, value)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = time.monotonic() - self.last_progress
            ok = age <= self.liveness_deadline_s
            body: dict[str, Any] = {
                "live": ok,
                "seconds_since_progress": round(age, 3),
                "deadline_s": self.liveness_deadline_s,
            }
            if not ok:
                body["reason"] = (
                    f"processing loop made no progress for {age:.1f}s "
                    f"(deadline {self.liveness_deadline_s:g}s)"
                )
            return ok, body

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            reasons = []
            if self.model_version is None:
                reasons.append("model not loaded")
            if not self.group_joined:
                reasons.append("consumer group not joined")
            if not self.kafka_ok:
                reasons.append(self.problem or "producer failing")
            if self.commit_problem is not None:
                reasons.append(self.commit_problem)
            if self.scoring_problem is not None:
                reasons.append(self.scoring_problem)
            ok = not reasons
            return ok, {
                "ready": ok,
                "model_version": self.model_version,
                "group_joined": self.group_joined,
                "assigned_partitions": self.assigned_partitions,
                # The documented name; false whenever Kafka I/O fails (see `kafka_ok`).
                "producer_ok": self.kafka_ok,
                "reasons": reasons,
            }


DEFAULT_MAX_CONNECTIONS = 32
"""Probes and scrapes need a handful; 32 threads of ~8 MiB virtual stack are cheap."""
DEFAULT_REQUEST_TIMEOUT_S = 5.0
"""A probe's whole request arrives in one packet; 5 s is far above any honest client."""


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with a cap on concurrent connections."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(limit)
        self.rejected = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            self.shutdown_request(request)  # closes it: the client sees a reset, not a hang
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HealthServer:
    """Serves the worker's registry and health state on one port.

    Threads: `serve_forever` on the `health-http` daemon thread, one short-lived thread
    per connection (at most `max_connections`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        state: HealthState,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        handler = _make_handler(registry, state, request_timeout_s)
        self._server = _BoundedHTTPServer((host, port), handler, max_connections)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def rejected_connections(self) -> int:
        """Connections closed unanswered because `max_connections` were being served."""
        return self._server.rejected

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(
    registry: CollectorRegistry, state: HealthState, request_timeout_s: float
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Socket timeout: a client silent this long is dropped (http.server catches it).
        timeout = request_timeout_s

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/livez":
                self._send_json(*state.liveness())
            elif path == "/readyz":
                self._send_json(*state.readiness())
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send_json(self, ok: bool, body: dict[str, Any]) -> None:
            self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds would drown the JSON log; stay quiet."""

    return Handler
