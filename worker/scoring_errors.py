"""The scoring process's named failures (worker/scoring_process.py raises them).

Why apart: the worker command (worker/worker_command.py) and the tests name them without
the process's machinery, and one list shows every way the scoring process can fail.
"""

from __future__ import annotations

from model.errors import ModstreamError
from worker.reload import LabelConflictError


class ScoringProcessError(ModstreamError):
    """The scoring process could not be started, or answered out of protocol."""


class ScoringStartError(ScoringProcessError):
    """The first model did not load in the scoring process; `checkpoint` tells whether
    the checkpoint itself is at fault (exit code 3, as in process)."""

    def __init__(self, message: str, checkpoint: bool) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class ScoringRequestError(ScoringProcessError):
    """Scoring a batch raised in the scoring process (it stays up)."""


class ScoringProcessDiedError(ScoringProcessError):
    """A batch killed two scoring processes in a row."""


class RemoteLoadError(ScoringProcessError):
    """A new checkpoint did not load, or did not pass the checks, in the scoring process."""


class RemoteLabelConflictError(LabelConflictError):
    """The scoring process refused a new checkpoint because `MODSTREAM_THRESHOLDS` or the
    policy name a label it lacks (a `LabelConflictError`, so that the reloader retries
    it when the policy changes, as in process)."""
