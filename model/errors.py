"""The root of every error modstream raises on purpose, and the exit code each one means.

Every command maps an escaping `ModstreamError` to `exit_code` in one place
(`worker/cli.py: main`). A subclass states its own code as a class attribute; an
instance may carry a different one when the same failure means different things to
different commands (e.g. a store path given by the user is a usage error).

It lives in `model/` because imports go one way (`worker` → `model`), and nothing here
knows about Kafka or torch.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """Process exit codes of every `modstream` command (README: Command line)."""

    OK = 0
    FAILURE = 1  # an operation failed (scoring, publishing at shutdown, a fenced worker)
    USAGE = 2  # bad arguments or configuration; the message names the field
    CHECKPOINT = 3  # the checkpoint or store is missing, corrupt or incompatible
    BROKER = 4  # no usable Kafka broker
    HELD = 10  # retrain: the gate kept the current model (0 with --succeed-if-held, for Jobs)


class ModstreamError(Exception):
    """An error modstream raises on purpose; `exit_code` is what a command exits with."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE
