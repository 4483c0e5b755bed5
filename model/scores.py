"""What the engine hands between its halves and back: `EncodedBatch` and `Scores`.

Why its own module: the worker stages encode and score on different threads and carries
these values between them (`worker.processing`); they are plain data, read without the
`Engine` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.windows import MAX_EVIDENCE_SPANS, Evidence, ScoredText, WindowPlan


@dataclass(frozen=True)
class EncodedBatch:
    """Texts encoded by one engine (`version`), ready for `Engine.score_encoded`: row i's
    token vectors are `table[slots[starts[i] : starts[i] + lengths[i]]]`."""

    lengths: np.ndarray  # int64 [rows], tokens per row (one row per window)
    version: str
    tokenize_seconds: float
    slots: np.ndarray  # int64 [sum(lengths)]
    starts: np.ndarray  # int64 [rows]
    table: torch.Tensor  # [slots, token_dim] on the engine's device
    plans: tuple[WindowPlan, ...]  # per text; text i's rows follow text i-1's
    owners: np.ndarray  # int64 [rows], the text each row belongs to


@dataclass(frozen=True)
class Scores:
    probabilities: np.ndarray  # float32 [n, num_labels], input order: max over windows
    tokenize_seconds: float
    inference_seconds: float
    real_tokens: int  # sum of row lengths
    padded_tokens: int  # sum over buckets of bucket_size * bucket_max_len
    num_buckets: int
    plans: tuple[WindowPlan, ...] = ()  # per text: windows, spans, coverage
    window_probabilities: np.ndarray | None = None  # float32 [rows, num_labels]
    owners: np.ndarray | None = None  # int64 [rows], each row's text

    @property
    def num_windows(self) -> int:
        return 0 if self.owners is None else len(self.owners)

    def window_scores(self, text: int) -> np.ndarray:
        """Text `text`'s windows' scores, [windows, num_labels], in text order."""
        if self.window_probabilities is None or self.owners is None:
            raise IndexError("these scores carry no windows")
        first = int(np.searchsorted(self.owners, text, side="left"))
        return self.window_probabilities[first : first + len(self.plans[text].windows)]

    def text(self, text: int) -> ScoredText:
        """Text `text`'s scores, windows and coverage."""
        return ScoredText(self.probabilities[text], self.plans[text], self.window_scores(text))

    def texts(self) -> list[ScoredText]:
        return [self.text(i) for i in range(len(self.plans))]

    def evidence(
        self, text: int, label: int, threshold: float, limit: int = MAX_EVIDENCE_SPANS
    ) -> list[Evidence]:
        """The spans of text `text` that reach `threshold` for label index `label`
        (`model.windows.evidence`)."""
        return self.text(text).evidence(label, threshold, limit)
