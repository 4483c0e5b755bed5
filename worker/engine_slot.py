"""The swap point between a reloaded model and the batches (invariant 4, worker/app.py).

The reload thread (worker/reload.py) validates a new engine and `offer_engine`s it; the
processing thread calls `apply` before it decodes each batch and when idle, so the
serving engine changes only between two batches. A batch captures the engine `apply`
returned and is encoded and scored by that one, even when the scoring thread still
works on it after the next swap.
"""

from __future__ import annotations

import threading

import structlog

from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.serving import ServingModel

log = structlog.get_logger("modstream.worker")


class EngineSlot:
    """The serving engine and at most one waiting to replace it.

    Threads: `offer_engine` and `latest_engine` on any (the reload thread); `apply` and
    `serving` on the processing thread only. One lock guards the waiting engine.
    """

    def __init__(self, engine: ServingModel, metrics: WorkerMetrics, health: HealthState) -> None:
        self._serving = engine
        self._metrics = metrics
        self._health = health
        self._lock = threading.Lock()
        self._pending: ServingModel | None = None
        self._announce(engine)

    @property
    def serving(self) -> ServingModel:
        """The engine the last `apply` returned (processing thread)."""
        return self._serving

    def latest_engine(self) -> ServingModel:
        """The engine the next batch will use: a pending one, else the serving one."""
        with self._lock:
            return self._pending if self._pending is not None else self._serving

    def offer_engine(self, engine: ServingModel) -> None:
        """Any thread: queue a validated engine; replaces one offered but not yet swapped."""
        with self._lock:
            self._pending = engine

    def apply(self) -> ServingModel:
        """Between batches, on the processing thread: swap in a waiting engine, if any,
        and return the one that serves the next batch. The one place it changes."""
        with self._lock:
            engine, self._pending = self._pending, None
        if engine is None:
            return self._serving
        old, self._serving = self._serving, engine
        self._metrics.model_reloads.labels(result="ok").inc()
        self._announce(engine)
        log.info("model_swapped", old_version=old.version, new_version=engine.version)
        return engine

    def _announce(self, engine: ServingModel) -> None:
        self._metrics.model_info.info(
            {
                "version": engine.version,
                "labels": ",".join(engine.labels),
                "device": str(engine.device),
            }
        )
        self._metrics.init_categories(engine.labels)
        self._health.set(model_version=engine.version)
        # Every later log line of this thread names the model serving.
        structlog.contextvars.bind_contextvars(model_version=engine.version)
