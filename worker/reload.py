"""Hot reload: notice a new checkpoint, load and validate it off the hot path, hand it over.

A background thread checks `checkpoint_dir` every `reload_interval_s` seconds, and at
once on SIGHUP (`request_check`). A check resolves the directory (store root → its
`current` pointer → the version directory) and compares a cheap fingerprint (resolved
path, inode/size/mtime of both files) with the last one it handled; only a change leads
to work:

1. Read the version from model.json; if it is the one already serving (or waiting to
   be swapped in), there is nothing to do (e.g. a rollback to the serving version).
2. Load it fully (`Engine.load`: sizes, JSON, tensor shapes, content hash) on the
   serving device, check that its label set equals the serving model's, and score a
   canary batch that must give finite scores in [0, 1] of the right shape; then warm
   it up (`Engine.warm_up`), so the swap does not slow the stream down, and freeze
   what it built (`freeze_long_lived`, worker/collector.py), so that later full
   collections do not walk the new model's objects.
3. Offer it to the worker (`EngineSlot.offer_engine`, worker/engine_slot.py). The
   processing thread swaps it in between two batches (`EngineSlot.apply`), so a batch
   is always scored by exactly one complete model, and nothing is dropped or scored
   twice.

On failure the serving model stays, `modstream_model_reloads_total{result="failed"}`
counts it, the log says why, and the fingerprint is remembered: the same files are not
tried again, only the next change. A directory that is missing altogether (a plain
checkpoint directory in the middle of being replaced) is transient: not counted,
checked again next time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import structlog

from model.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    resolve_checkpoint_dir,
)
from model.engine import Engine
from model.errors import ModstreamError
from model.store_layout import peek_version
from worker.collector import freeze_long_lived
from worker.metrics import WorkerMetrics

log = structlog.get_logger("modstream.reload")

Outcome = Literal["missing", "unchanged", "same_version", "offered", "failed"]

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
    """The new checkpoint loads but must not serve (labels, canary)."""


class SwapPoint(Protocol):
    """What the reloader needs from the worker: its `EngineSlot` (worker/engine_slot.py)."""

    def latest_engine(self) -> Engine:
        """The engine that will score the next batch (a pending one, else the serving one)."""
        ...

    def offer_engine(self, engine: Engine) -> None:
        """Hand over a validated engine, to be swapped in between batches."""
        ...


@dataclass(frozen=True)
class Fingerprint:
    path: str
    meta: tuple[int, int, int] | None
    weights: tuple[int, int, int] | None


def fingerprint(directory: Path) -> Fingerprint | None:
    """Identity of what `directory` holds now, from stat calls only; None if missing."""
    if not directory.is_dir():
        return None
    return Fingerprint(
        str(directory), _stat(directory / META_FILE), _stat(directory / WEIGHTS_FILE)
    )


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def validate_engine(engine: Engine, serving_labels: tuple[str, ...]) -> None:
    """Raises ReloadError unless `engine` may replace a model serving `serving_labels`."""
    if set(engine.labels) != set(serving_labels):
        raise ReloadError(
            f"labels {list(engine.labels)} differ from the serving model's {list(serving_labels)}"
        )
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
    """Checks for a new checkpoint and offers it, on its own thread ("checkpoint-reload");
    `request_check` from a signal handler, `start`/`stop` from the main thread."""

    def __init__(
        self,
        checkpoint_dir: Path,
        slot: SwapPoint,
        metrics: WorkerMetrics,
        interval_s: float,
        device: str = "auto",
        engine_options: Mapping[str, int] | None = None,
    ) -> None:
        """`engine_options`: `Engine.load`'s keyword arguments besides the device
        (`WorkerSettings.engine_options`), so a reloaded model reads texts as the
        first one did."""
        self.checkpoint_dir = Path(checkpoint_dir)
        self.slot = slot
        self.metrics = metrics
        self.interval_s = interval_s
        self.device = device
        self.engine_options = dict(engine_options or {})
        self.failed_version: str | None = None
        self._seen: Fingerprint | None = None
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
        """One check (the thread's body; tests call it directly)."""
        resolved = resolve_checkpoint_dir(self.checkpoint_dir)
        seen = fingerprint(resolved)
        if seen is None:
            return "missing"
        if seen == self._seen:
            return "unchanged"
        serving = self.slot.latest_engine()
        version = peek_version(resolved)
        if version is not None and version == serving.version:
            self._seen = seen
            return "same_version"
        log.info("model_reload_started", version=version, path=str(resolved))
        try:
            engine = Engine.load(resolved, device=self.device, **self.engine_options)
            if engine.version == serving.version:
                self._seen = seen
                return "same_version"
            validate_engine(engine, serving.labels)
            engine.warm_up()
            freeze_long_lived()  # the new model's objects, out of the collector's way
        except Exception as exc:  # CheckpointError, EngineError, ReloadError, or torch's own
            if not resolved.is_dir():  # replaced while we read it: look again next time
                return "missing"
            self._seen = seen
            self.failed_version = version or f"unreadable@{resolved}"
            self.metrics.model_reloads.labels(result="failed").inc()
            log.error(
                "model_reload_failed",
                version=version,
                path=str(resolved),
                serving_version=serving.version,
                error=f"{type(exc).__name__}: {exc}",
                retry="on the next change of the checkpoint",
            )
            return "failed"
        self._seen = seen
        self.slot.offer_engine(engine)
        log.info(
            "model_reload_ready",
            version=engine.version,
            path=str(resolved),
            serving_version=serving.version,
        )
        return "offered"
