"""A model loaded in the scoring process, as the worker serves it (`ServingModel`).

The split, and why: the worker plans each text's windows (tokenising, the scoring
budget, spans, coverage) on its processing thread, as the Engine does in process, and
the scoring process turns the windows' tokens into vectors and runs the LSTM. Measured
CPU per message with the whole of tokenising in the scoring process (20,000-30,000
corpus messages drained on the 2-core machine): worker 109 µs, scoring process 236 µs,
so the scoring process bound the stream while the worker's core idled; planning is
≈ 45 µs of that (`Engine.encode_batch` 40-48 µs, the LSTM 155-159 µs per message in
batches of 512). With planning here: worker 158-214 µs, scoring process 189-224 µs
(eleven drains of 30,000 messages), about even. The token-vector cache stays in
the scoring process (it is keyed by token and needs the weights), so only tokens cross.

The results need each text's plan (coverage, evidence spans) and per label the
maximum over its windows (`model.windows.aggregate`): both are computed here, so the
scoring process answers with one array of window scores. Nothing here imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.vocab import UNK_TOKEN
from model.windows import ScoredText, WindowPlan, WindowPlanner, WindowSettings, aggregate


@dataclass(frozen=True)
class RowStats:
    """The scoring process's figures for one batch (they travel in the control message)."""

    encode_seconds: float  # tokens → vocabulary ids → cached vectors
    inference_seconds: float
    real_tokens: int
    padded_tokens: int
    num_buckets: int


class RowScorer(Protocol):
    """What a `RemoteModel` needs from its scoring process (`ScoringProcess`)."""

    def score_rows(
        self, model: RemoteModel, rows: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, RowStats]:
        """Each window's scores, float32[len(rows), labels], by `model`'s version."""
        ...


@dataclass(frozen=True)
class RemoteBatch:
    """A batch staged for a `RemoteModel`: its plans and their windows' tokens."""

    version: str
    plans: tuple[WindowPlan, ...]
    rows: list[tuple[str, ...]]  # per window, never empty
    plan_seconds: float


@dataclass(frozen=True)
class RemoteScores:
    """A batch's scores, as `model.engine.Scores` has them (`BatchScores`)."""

    probabilities: np.ndarray  # float32 [texts, labels]: max over each text's windows
    tokenize_seconds: float
    inference_seconds: float
    real_tokens: int
    padded_tokens: int
    num_buckets: int
    plans: tuple[WindowPlan, ...]
    window_probabilities: np.ndarray  # float32 [windows, labels]
    owners: np.ndarray  # int64 [windows], each window's text

    def text(self, text: int) -> ScoredText:
        first = int(np.searchsorted(self.owners, text, side="left"))
        windows = self.window_probabilities[first : first + len(self.plans[text].windows)]
        return ScoredText(self.probabilities[text], self.plans[text], windows)

    def texts(self) -> list[ScoredText]:
        return [self.text(i) for i in range(len(self.plans))]


class RemoteModel:
    """One model version in the scoring process; `path` is where it was loaded from,
    to load it again after a restart. Threads: `encode_batch` on the processing
    thread, `score_encoded` and `score` on the scoring thread."""

    def __init__(
        self,
        version: str,
        labels: Sequence[str],
        thresholds: dict[str, float],
        device: str,
        windows: WindowSettings,
        path: Path,
        scorer: RowScorer,
    ) -> None:
        self.version = version
        self.labels = tuple(labels)
        self.thresholds = thresholds
        self.device = device
        self.path = path
        self.planner = WindowPlanner(windows)
        self._scorer = scorer

    @classmethod
    def from_card(cls, card: dict[str, Any], path: Path, scorer: RowScorer) -> RemoteModel:
        """From what the scoring process says of a model it loaded."""
        return cls(
            version=str(card["version"]),
            labels=tuple(card["labels"]),
            thresholds={str(k): float(v) for k, v in card["thresholds"].items()},
            device=str(card["device"]),
            windows=WindowSettings(**card["windows"]),
            path=Path(path),
            scorer=scorer,
        )

    def encode_batch(self, texts: Sequence[str]) -> RemoteBatch:
        start = time.perf_counter()
        plans = tuple(self.planner.plan(text) for text in texts)
        # A window of no tokens is read as one unknown token, as the Engine reads it.
        rows = [window.tokens or (UNK_TOKEN,) for plan in plans for window in plan.windows]
        return RemoteBatch(self.version, plans, rows, time.perf_counter() - start)

    def score_encoded(self, batch: RemoteBatch) -> RemoteScores:
        if batch.version != self.version:
            raise ValueError(f"batch staged for model {batch.version}, not {self.version}")
        window_probabilities, stats = self._scorer.score_rows(self, batch.rows)
        count = len(batch.plans)
        counts = np.fromiter((len(p.windows) for p in batch.plans), dtype=np.int64, count=count)
        owners = np.repeat(np.arange(count, dtype=np.int64), counts)
        probabilities = (
            window_probabilities  # one window each: the rows are the texts
            if len(batch.rows) == count
            else aggregate(window_probabilities, owners, count)
        )
        return RemoteScores(
            probabilities=probabilities,
            tokenize_seconds=batch.plan_seconds + stats.encode_seconds,
            inference_seconds=stats.inference_seconds,
            real_tokens=stats.real_tokens,
            padded_tokens=stats.padded_tokens,
            num_buckets=stats.num_buckets,
            plans=batch.plans,
            window_probabilities=window_probabilities,
            owners=owners,
        )

    def score(self, texts: Sequence[str]) -> RemoteScores:
        return self.score_encoded(self.encode_batch(texts))
