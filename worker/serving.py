"""The model as the worker sees it: an `Engine` in this process, or a `RemoteModel`
(worker/remote_model.py) whose network runs in the scoring process.

`BatchProcessor`, `EngineSlot`, the reloader and the results need only what
`ServingModel` names: the version, labels and thresholds a result is built from, and
the two halves of scoring. `encode_batch` runs on the processing thread when a batch is
staged and `score_encoded` on the scoring thread; whatever the first returns, only the
same model's second reads (the Engine's `EncodedBatch`, a `RemoteBatch`). Both answer
`BatchScores` (`model.engine.Scores`, `RemoteScores`).

Nothing here imports torch: with the model in the scoring process the worker never
does (≈ 520 MB of resident memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from model.errors import ModstreamError
from model.windows import ScoredText


class BatchScores(Protocol):
    """A scored batch: per text its scores and windows, and the batch's figures."""

    @property
    def tokenize_seconds(self) -> float: ...

    @property
    def inference_seconds(self) -> float: ...

    @property
    def real_tokens(self) -> int: ...

    @property
    def padded_tokens(self) -> int: ...

    def text(self, text: int) -> ScoredText: ...

    def texts(self) -> list[ScoredText]: ...


class ServingModel(Protocol):
    """What the worker needs from the model that scores a batch (invariant 4: a batch
    is encoded and scored by one of these, whose version its results name)."""

    @property
    def version(self) -> str: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def thresholds(self) -> dict[str, float]: ...

    @property
    def device(self) -> object:
        """Where the model runs (only ever printed)."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> Any:
        """Step 1 of scoring, on the processing thread."""
        ...

    def score_encoded(self, batch: Any) -> BatchScores:
        """Step 2: the scores of what this model's `encode_batch` returned."""
        ...

    def score(self, texts: Sequence[str]) -> BatchScores:
        """Both steps at once (one text at a time when a batch failed)."""
        ...


class ModelUnavailableError(ModstreamError):
    """The model that must score a batch cannot be reached (its scoring process cannot
    be started, or its checkpoint no longer loads as that version): infrastructure, not
    the input, so the batch is neither dead-lettered nor committed; the worker stops
    (exit code 1) and its records are delivered again after the restart."""
