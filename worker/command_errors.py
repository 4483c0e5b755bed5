"""The command line's errors, and the one mapping from an error to an exit code.

Every `modstream` command fails by raising a `ModstreamError` (model/errors.py), whose
`exit_code` is what the process exits with; `worker/cli.py: main` writes its message.
"""

from __future__ import annotations

from pydantic import ValidationError

from model.errors import ExitCode, ModstreamError


class UsageError(ModstreamError):
    """Bad configuration; the message names the field and where it came from."""

    exit_code = ExitCode.USAGE


class CheckpointUnusableError(ModstreamError):
    """The checkpoint a command was asked to use does not load; the message says which."""

    exit_code = ExitCode.CHECKPOINT


class InvalidInputError(ModstreamError):
    """`score`: some input lines were not valid requests (their dead letters are written)."""


def exit_code_of(exc: BaseException) -> int:
    """A modstream error's own exit code; anything else is a plain failure (1)."""
    return int(exc.exit_code if isinstance(exc, ModstreamError) else ExitCode.FAILURE)


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's settings errors as one line, naming each field's flag and variable (a
    secret has no flag: `MODSTREAM_SASL_PASSWORD, environment only`)."""
    from worker.setting_names import ENV_ONLY_SETTINGS

    parts = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(p) for p in error["loc"])
        if not name:  # a rule across settings: its message names them
            parts.append(f"invalid settings: {error['msg'].removeprefix('Value error, ')}")
            continue
        env = f"MODSTREAM_{name.upper()}"
        where = (
            f"{env}, environment only"
            if name in ENV_ONLY_SETTINGS
            else f"--{name.replace('_', '-')} / {env}"
        )
        parts.append(f"invalid setting {name} ({where}): {error['msg']}")
    return "; ".join(parts)
