"""Health state and the HTTP server for /metrics, /livez and /readyz.

Liveness means the processing loop still turns: it ticks after every poll (idle polls
included, at least every half second) and after every batch, so only a loop stuck for
longer than `liveness_deadline_s` (MODSTREAM_LIVENESS_DEADLINE_S) fails /livez and gets the
pod restarted. Readiness means this pod can do useful work: model loaded, consumer group
joined (with partitions, or idle-assigned when there are more workers than partitions),
producer connected and publishing. Both answer JSON saying why, so a failing probe explains
itself: 200 when ok, 503 when not.
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
    """Written by the processing loop, read by the HTTP thread; guarded by one lock."""

    liveness_deadline_s: float = 60.0
    model_version: str | None = None
    group_joined: bool = False
    producer_ok: bool = True
    problem: str | None = None
    # Offsets that cannot be committed (e.g. the group's ACL was taken away): cleared only
    # by a commit that succeeds, whatever polls and publishes do meanwhile.
    commit_problem: str | None = None
    assigned_partitions: int | None = None
    last_progress: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tick(self) -> None:
        with self._lock:
            self.last_progress = time.monotonic()

    def set(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
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
            if not self.producer_ok:
                reasons.append(self.problem or "producer failing")
            if self.commit_problem is not None:
                reasons.append(self.commit_problem)
            ok = not reasons
            return ok, {
                "ready": ok,
                "model_version": self.model_version,
                "group_joined": self.group_joined,
                "assigned_partitions": self.assigned_partitions,
                "producer_ok": self.producer_ok,
                "reasons": reasons,
            }


class HealthServer:
    """Serves the worker's registry and health state on one port, in a daemon thread."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, state: HealthState
    ) -> None:
        handler = _make_handler(registry, state)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(registry: CollectorRegistry, state: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
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
