"""The named failures of the checkpoint store (`model.store`)."""

from __future__ import annotations

from model.errors import ExitCode, ModstreamError


class StoreError(ModstreamError):
    """The store cannot do what was asked; the message says why."""


class UnknownVersionError(StoreError):
    exit_code = ExitCode.USAGE

    """No such version in the store (or not a valid version name)."""


class NoPreviousVersionError(StoreError):
    """Rollback asked for, but there is nothing to roll back to."""


class NotAStoreError(StoreError):
    exit_code = ExitCode.USAGE

    """The path is something else (e.g. a plain checkpoint directory)."""
