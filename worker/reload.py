"""Hot reload: notice a new checkpoint or threshold policy, load and validate it off the
hot path, hand it over.

A background thread checks `checkpoint_dir` every `reload_interval_s` seconds, and at
once on SIGHUP (`request_check`). A check resolves the directory (store root → its
`current` pointer → the version directory) and compares a cheap fingerprint (resolved
path, inode/size/mtime of both files) with the last one it handled; in a store it does
the same for the policy file (`policy.json` at the store root, model/store_policy.py).
Only a change leads to work:

1. The policy file, when it changed: parse it (a missing file means no policy). One
   that does not parse, or is the one already in effect, changes nothing.
2. The checkpoint, when it changed: read the version from model.json; if it is the one
   already serving (or waiting to be swapped in), there is nothing to do (e.g. a
   rollback to the serving version). Else load it fully (`Engine.load`: sizes, JSON,
   tensor shapes, content hash) on the serving device, check that
   `MODSTREAM_THRESHOLDS` and the policy (step 1's, else the one in effect) name only
   labels it has, and score a canary batch that must give finite scores in [0, 1] of
   the right shape; then warm it up (`Engine.warm_up`), so the swap does not slow the
   stream down, and freeze what it built (`freeze_long_lived`, worker/collector.py), so
   that later full collections do not walk the new model's objects. Its labels may
   differ from the serving model's (`model.label_change`: `checkpoints promote` decided
   whether a removal may serve; the swap logs it).
   With `MODSTREAM_SCORING=process` the scoring process does the loading, checks and
   warm-up beside the serving model (`ScoringProcess.load`, worker/scoring_process.py),
   and the worker holds a `RemoteModel` of the new version; `loader` is the one
   difference.
3. A new policy must name only labels of the model that will serve with it (step 2's,
   else the serving one).
4. Offer what passed, together (`EngineSlot.offer`, worker/engine_slot.py). The
   processing thread swaps it in between two batches (`EngineSlot.apply`), so a batch
   is always scored by exactly one complete model under one policy, and nothing is
   dropped or scored twice.

On failure what serves stays, `modstream_model_reloads_total{result="failed"}` (or
`modstream_policy_reloads_total{result="failed"}`) counts it, the log says why
(`model_reload_failed`, `policy_reload_failed`), and the fingerprint is remembered: the
same files are not tried again, only the next change -- or, for a model refused over
the policy's labels, a change of the policy, and for a policy refused over the model's
labels, a change of the model. A checkpoint directory that is missing altogether (a
plain checkpoint directory in the middle of being replaced) is transient: not counted,
checked again next time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import structlog

from model.errors import ModstreamError
from model.label_change import classify
from model.paths import META_FILE, WEIGHTS_FILE, peek_version, resolve_checkpoint_dir
from model.store_policy import policy_conflict, policy_file_for, read_policy
from model.threshold_overrides import THRESHOLDS_ENV, PolicyFileError, ThresholdPolicyFile
from worker.collector import freeze_long_lived
from worker.engine_slot import PolicyOffer
from worker.metrics import WorkerMetrics
from worker.serving import ServingModel

if TYPE_CHECKING:  # torch: imported only where a model loads in this process
    from model.engine import Engine

log = structlog.get_logger("modstream.reload")

Outcome = Literal["missing", "unchanged", "same_version", "offered", "failed"]
PolicyOutcome = Literal["none", "unchanged", "same_policy", "offered", "failed"]
Stat = tuple[int, int, int]

CANARY_TEXTS: tuple[str, ...] = (
    "hello, how are you today?",
    "you are a complete idiot",
    "WINNER!! Claim your free prize now, call 09061701461",
    "",
    "!!!???",
    "naïve café — ünïcödé 🙂 text",
    "a long message " * 200,
)


class ReloadError(ModstreamError):
    """The new checkpoint loads but must not serve (canary, labels)."""


class LabelConflictError(ReloadError):
    """The new checkpoint lacks a label `MODSTREAM_THRESHOLDS` or the policy names."""


class SwapPoint(Protocol):
    """What the reloader needs from the worker: its `EngineSlot` (worker/engine_slot.py)."""

    def latest_engine(self) -> ServingModel:
        """The engine that will score the next batch (a pending one, else the serving one)."""
        ...

    def latest_policy(self) -> ThresholdPolicyFile | None:
        """The policy that will flag the next batch (a pending one, else the one in effect)."""
        ...

    def offer(self, engine: ServingModel | None, policy: PolicyOffer | None = None) -> None:
        """Hand over a validated engine and/or policy, to be swapped in between batches."""
        ...


class ModelLoader(Protocol):
    """Step 2: the model at a path, checked and warmed up to replace `serving`."""

    def load(
        self,
        path: Path,
        serving: ServingModel,
        policy: ThresholdPolicyFile | None,
        overrides: Mapping[str, float],
    ) -> ServingModel | None:
        """The new model, or None when `path` holds the serving version; raises when it
        does not load or must not serve (`LabelConflictError` when `overrides` or
        `policy` name a label it lacks, as `validate_engine`)."""
        ...


class EngineLoader:
    """Step 2 in this process: `Engine.load`, `validate_engine`, `warm_up`, freeze."""

    def __init__(self, device: str = "auto", engine_options: Mapping[str, int] | None = None):
        self.device = device
        self.engine_options = dict(engine_options or {})

    def load(
        self,
        path: Path,
        serving: ServingModel,
        policy: ThresholdPolicyFile | None,
        overrides: Mapping[str, float],
    ) -> Engine | None:
        from model.engine import Engine

        engine = Engine.load(path, device=self.device, **self.engine_options)
        if engine.version == serving.version:
            return None
        validate_engine(engine, policy, overrides)
        engine.warm_up()
        freeze_long_lived()  # the new model's objects, out of the collector's way
        return engine


@dataclass(frozen=True)
class Fingerprint:
    path: str
    meta: Stat | None
    weights: Stat | None


def fingerprint(directory: Path) -> Fingerprint | None:
    """Identity of what `directory` holds now, from stat calls only; None if missing."""
    if not directory.is_dir():
        return None
    return Fingerprint(
        str(directory), _stat(directory / META_FILE), _stat(directory / WEIGHTS_FILE)
    )


def _stat(path: Path) -> Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def validate_engine(
    engine: Engine,
    policy: ThresholdPolicyFile | None = None,
    overrides: Mapping[str, float] | None = None,
) -> None:
    """Raises ReloadError unless `engine` may serve: `LabelConflictError` when
    `overrides` (MODSTREAM_THRESHOLDS) or `policy` name a label it lacks; else the
    canary batch must give finite scores in [0, 1] of the right shape."""
    missing = sorted(set(overrides or {}) - set(engine.labels))
    if missing:
        raise LabelConflictError(
            f"{THRESHOLDS_ENV} sets thresholds for {', '.join(missing)}, which version "
            f"{engine.version} (labels {', '.join(engine.labels)}) lacks"
        )
    why = policy_conflict(policy, engine.labels)
    if why is not None:
        raise LabelConflictError(f"{why} (version {engine.version})")
    try:
        probabilities = engine.score(list(CANARY_TEXTS)).probabilities
    except Exception as exc:
        raise ReloadError(f"canary batch failed: {type(exc).__name__}: {exc}") from exc
    expected = (len(CANARY_TEXTS), len(engine.labels))
    if probabilities.shape != expected:
        raise ReloadError(f"canary scores have shape {probabilities.shape}, expected {expected}")
    if not np.all(np.isfinite(probabilities)):
        raise ReloadError("canary batch gave non-finite scores")
    if probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise ReloadError("canary batch gave scores outside [0, 1]")


class Reloader:
    """Checks for a new checkpoint or policy and offers it, on its own thread
    ("checkpoint-reload"); `request_check` from a signal handler, `start`/`stop` from the
    main thread."""

    def __init__(
        self,
        checkpoint_dir: Path,
        slot: SwapPoint,
        metrics: WorkerMetrics,
        interval_s: float,
        device: str = "auto",
        engine_options: Mapping[str, int] | None = None,
        overrides: Mapping[str, float] | None = None,
        loader: ModelLoader | None = None,
    ) -> None:
        """`engine_options`: `Engine.load`'s keyword arguments besides the device
        (`WorkerSettings.engine_options`), so a reloaded model reads texts as the
        first one did; `overrides`: MODSTREAM_THRESHOLDS, which every new model must
        have the labels of; `loader`: how step 2 runs, in this process (`EngineLoader`
        with `device` and `engine_options`) unless given."""
        self.checkpoint_dir = Path(checkpoint_dir)
        self.policy_file = policy_file_for(self.checkpoint_dir)
        self.slot = slot
        self.metrics = metrics
        self.interval_s = interval_s
        self.loader = loader if loader is not None else EngineLoader(device, engine_options)
        self.overrides = dict(overrides or {})
        self.failed_version: str | None = None
        self.policy_outcome: PolicyOutcome = "none"
        self._seen: Fingerprint | None = None
        self._policy_read = False  # whether `_policy_seen` is a reading yet
        self._policy_seen: Stat | None = None  # the policy file's stat; None: no file
        # A model refused over the policy's labels: (True, the policy file's stat then),
        # so that a change of the policy retries it.
        self._conflict_policy: tuple[bool, Stat | None] = (False, None)
        # A policy refused over a model's labels: that model's version, so that another
        # model retries it.
        self._policy_conflict_engine: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-reload", daemon=True)

    # -- control -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def request_check(self) -> None:
        """Check now (SIGHUP). Safe from a signal handler: only sets an event."""
        self._wake.set()

    # -- checking ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s if self.interval_s > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.check()
            except Exception as exc:  # the checker must outlive any surprise
                log.exception("model_reload_check_crashed", error=str(exc))

    def check(self) -> Outcome:
        """One check, steps 1-4 of the module docstring (the thread's body; tests call it
        directly). Returns what became of the checkpoint; `policy_outcome` says what
        became of the policy file."""
        policy, policy_new = self._policy_step()
        engine, outcome = self._engine_step(policy)
        if policy_new:
            serving_with = engine if engine is not None else self.slot.latest_engine()
            why = policy_conflict(policy, serving_with.labels)
            if why is not None:
                self._policy_failed(f"{why} (version {serving_with.version})")
                self._policy_conflict_engine = serving_with.version
                policy_new = False
        if engine is None and not policy_new:
            return outcome
        self.slot.offer(engine, PolicyOffer(policy) if policy_new else None)
        if policy_new:
            self.policy_outcome = "offered"
            self._policy_conflict_engine = None
            log.info("policy_reload_ready", policy_version=policy.version if policy else None)
        return outcome

    def _policy_step(self) -> tuple[ThresholdPolicyFile | None, bool]:
        """Step 1: (the policy the next batch should use, whether that is a change)."""
        latest = self.slot.latest_policy()
        if self.policy_file is None:
            self.policy_outcome = "none"
            return latest, False
        stamp = _stat(self.policy_file)
        retry = self._policy_conflict_engine not in (None, self.slot.latest_engine().version)
        if self._policy_read and stamp == self._policy_seen and not retry:
            self.policy_outcome = "unchanged"
            return latest, False
        self._policy_read, self._policy_seen = True, stamp
        try:
            policy = read_policy(self.policy_file.parent)
        except PolicyFileError as exc:
            self._policy_failed(str(exc))
            return latest, False
        if policy == latest:
            self.policy_outcome = "same_policy"
            return latest, False
        return policy, True

    def _policy_failed(self, why: str) -> None:
        self.policy_outcome = "failed"
        self.metrics.policy_reloads.labels(result="failed").inc()
        latest = self.slot.latest_policy()
        log.error(
            "policy_reload_failed",
            path=str(self.policy_file),
            serving_policy=latest.version if latest is not None else None,
            error=why,
            retry="on the next change of the policy file (or of the model, for its labels)",
        )

    def _engine_step(
        self, policy: ThresholdPolicyFile | None
    ) -> tuple[ServingModel | None, Outcome]:
        """Step 2: a validated, warmed-up new engine to offer, or None and why not."""
        resolved = resolve_checkpoint_dir(self.checkpoint_dir)
        seen = fingerprint(resolved)
        if seen is None:
            return None, "missing"
        conflicted, at_policy = self._conflict_policy
        retry = conflicted and self._policy_seen != at_policy  # the policy changed since
        if seen == self._seen and not retry:
            return None, "unchanged"
        serving = self.slot.latest_engine()
        version = peek_version(resolved)
        if version is not None and version == serving.version:
            self._seen = seen
            return None, "same_version"
        log.info("model_reload_started", version=version, path=str(resolved))
        self._conflict_policy = (False, None)
        try:
            engine = self.loader.load(resolved, serving, policy, self.overrides)
            if engine is None:
                self._seen = seen
                return None, "same_version"
        except Exception as exc:  # CheckpointError, EngineError, ReloadError, or torch's own
            if not resolved.is_dir():  # replaced while we read it: look again next time
                return None, "missing"
            self._seen = seen
            if isinstance(exc, LabelConflictError):
                self._conflict_policy = (True, self._policy_seen)
            self.failed_version = version or f"unreadable@{resolved}"
            self.metrics.model_reloads.labels(result="failed").inc()
            log.error(
                "model_reload_failed",
                version=version,
                path=str(resolved),
                serving_version=serving.version,
                error=f"{type(exc).__name__}: {exc}",
                retry="on the next change of the checkpoint"
                + (" or of the policy file" if isinstance(exc, LabelConflictError) else ""),
            )
            return None, "failed"
        self._seen = seen
        change = classify(serving.labels, engine.labels)
        log.info(
            "model_reload_ready",
            version=engine.version,
            path=str(resolved),
            serving_version=serving.version,
            labels_added=list(change.added),
            labels_removed=list(change.removed),
        )
        return engine, "offered"
