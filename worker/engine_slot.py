"""The swap point between a reloaded model or policy and the batches (invariant 4,
worker/app.py).

The reload thread (worker/reload.py) validates a new engine or a new threshold policy
and offers it (`offer_engine`, `offer_policy`); the processing thread calls `apply`
before it decodes each batch and when idle, so what serves changes only between two
batches. A batch captures the `Serving` that `apply` returned, the engine and the
thresholds in effect, and is encoded, scored and flagged by that one, even when the
scoring thread still works on it after the next swap.

At each swap:

1. A new engine: counted (`modstream_model_reloads_total{result="ok"}`), announced
   (`modstream_model_info`, health, the log context) and logged (`model_swapped`).
   If its labels differ from the old one's (`model.label_change`), that is logged
   (`model_labels_changed`, with the labels added and removed) and counted per label
   (`modstream_model_label_changes_total`), and the per-category metric series follow
   the new labels: new ones at 0, removed ones gone.
2. A new policy: counted (`modstream_policy_reloads_total{result="ok"}`).
3. The effective thresholds (`model.threshold_overrides.effective_thresholds`: the
   environment over the policy file over the checkpoint) are recomputed; when they or
   their `policy_version` changed, `thresholds_changed` logs them with what set each,
   and `modstream_category_threshold` shows them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from model.label_change import classify
from model.threshold_overrides import (
    EffectiveThresholds,
    ThresholdOverrideError,
    ThresholdPolicyFile,
    effective_thresholds,
)
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.serving import ServingModel

log = structlog.get_logger("modstream.worker")


@dataclass(frozen=True)
class PolicyOffer:
    """A policy to put in effect; `policy` None means none (each checkpoint's own)."""

    policy: ThresholdPolicyFile | None


@dataclass(frozen=True)
class Serving:
    """What scores and flags a batch: one engine, and the thresholds in effect for it."""

    engine: ServingModel
    thresholds: EffectiveThresholds


class EngineSlot:
    """The serving engine and policy, and at most one of each waiting to replace them.

    Threads: `offer_*` and `latest_*` on any (the reload thread); `apply` and `serving`
    on the processing thread only. One lock guards what waits.
    """

    def __init__(
        self,
        engine: ServingModel,
        metrics: WorkerMetrics,
        health: HealthState,
        policy: ThresholdPolicyFile | None = None,
        overrides: Mapping[str, float] | None = None,
    ) -> None:
        """`policy`: the store's policy file at start; `overrides`: MODSTREAM_THRESHOLDS.
        Raises `UnknownOverrideLabelError` when either names a label `engine` lacks."""
        self._metrics = metrics
        self._health = health
        self._overrides = dict(overrides or {})
        self._policy = policy
        self._current = Serving(
            engine, effective_thresholds(engine.thresholds, engine.labels, policy, self._overrides)
        )
        self._lock = threading.Lock()
        self._pending: ServingModel | None = None
        self._policy_pending = False
        self._next_policy: ThresholdPolicyFile | None = None
        self._announce(engine)
        self._metrics.set_categories(engine.labels)
        self._show_thresholds(None, "start")

    @property
    def serving(self) -> ServingModel:
        """The engine the last `apply` returned (processing thread)."""
        return self._current.engine

    @property
    def current(self) -> Serving:
        """What the last `apply` returned (processing thread)."""
        return self._current

    @property
    def overrides(self) -> dict[str, float]:
        """MODSTREAM_THRESHOLDS, fixed for the process."""
        return dict(self._overrides)

    def latest_engine(self) -> ServingModel:
        """The engine the next batch will use: a pending one, else the serving one."""
        with self._lock:
            return self._pending if self._pending is not None else self._current.engine

    def latest_policy(self) -> ThresholdPolicyFile | None:
        """The policy the next batch will use: a pending one, else the one in effect."""
        with self._lock:
            return self._next_policy if self._policy_pending else self._policy

    def offer(self, engine: ServingModel | None, policy: PolicyOffer | None = None) -> None:
        """Any thread: queue a validated engine and/or policy, together (validated
        together, they must be swapped in together); each replaces one offered but not
        yet swapped."""
        with self._lock:
            if engine is not None:
                self._pending = engine
            if policy is not None:
                self._next_policy, self._policy_pending = policy.policy, True

    def offer_engine(self, engine: ServingModel) -> None:
        """`offer` of an engine alone."""
        self.offer(engine)

    def apply(self) -> Serving:
        """Between batches, on the processing thread: swap in what waits, if anything,
        and return what serves the next batch. The one place it changes."""
        with self._lock:
            engine, self._pending = self._pending, None
            policy_changed, self._policy_pending = self._policy_pending, False
            policy = self._next_policy if policy_changed else self._policy
        if engine is None and not policy_changed:
            return self._current
        old = self._current
        new_engine = engine if engine is not None else old.engine
        try:
            thresholds = effective_thresholds(
                new_engine.thresholds, new_engine.labels, policy, self._overrides
            )
        except ThresholdOverrideError as exc:  # the reload thread checked: not expected
            log.error("serving_change_refused", error=str(exc), serving_version=old.engine.version)
            if engine is not None:
                self._metrics.model_reloads.labels(result="failed").inc()
            if policy_changed:
                self._metrics.policy_reloads.labels(result="failed").inc()
            return old
        self._current, self._policy = Serving(new_engine, thresholds), policy
        if engine is not None:
            self._swap_engine(old.engine, engine)
        if policy_changed:
            self._metrics.policy_reloads.labels(result="ok").inc()
        reason = "+".join(
            part for part, changed in (("model", engine), ("policy", policy_changed)) if changed
        )
        self._show_thresholds(old.thresholds, reason)
        return self._current

    def _swap_engine(self, old: ServingModel, new: ServingModel) -> None:
        """Step 1 of the module docstring."""
        self._metrics.model_reloads.labels(result="ok").inc()
        self._announce(new)
        log.info("model_swapped", old_version=old.version, new_version=new.version)
        change = classify(old.labels, new.labels)
        self._metrics.set_categories(new.labels)
        if change.kind == "unchanged":
            return
        self._metrics.label_changes.labels(change="added").inc(len(change.added))
        self._metrics.label_changes.labels(change="removed").inc(len(change.removed))
        log.warning(
            "model_labels_changed",
            old_version=old.version,
            new_version=new.version,
            added=list(change.added),
            removed=list(change.removed),
            labels=list(new.labels),
        )

    def _show_thresholds(self, previous: EffectiveThresholds | None, reason: str) -> None:
        """Step 3 of the module docstring."""
        now = self._current.thresholds
        if (
            previous is not None
            and previous.thresholds == now.thresholds
            and previous.policy_version == now.policy_version
        ):
            return
        self._metrics.set_thresholds(now.thresholds)
        log.info(
            "thresholds_changed",
            reason=reason,
            policy_version=now.policy_version,
            previous_policy_version=previous.policy_version if previous else None,
            thresholds=now.thresholds,
            sources=now.sources,
        )

    def _announce(self, engine: ServingModel) -> None:
        self._metrics.model_info.info(
            {
                "version": engine.version,
                "labels": ",".join(engine.labels),
                "device": str(engine.device),
            }
        )
        self._health.set(model_version=engine.version)
        # Every later log line of this thread names the model serving.
        structlog.contextvars.bind_contextvars(model_version=engine.version)
