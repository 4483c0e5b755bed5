"""`modstream` command line: worker, score, retrain, checkpoints.

Exit codes: 0 success; 2 bad arguments or configuration (the message names the field);
3 checkpoint missing or invalid; 4 Kafka unreachable; 1 any other failure.

`retrain` (a periodic job) ends with one JSON summary line on stdout and exits
0 when its model was promoted (or written to `--output`, or identical to the current
one), 10 when the promotion gate kept the current model (0 with `--succeed-if-held`, for
a scheduler such as a Kubernetes Job that retries any other code), 4 when the feedback
topic could not be read, 3 when a checkpoint is unusable, 2 for bad arguments, 1
otherwise.

`checkpoints list | promote VERSION | rollback` manage the checkpoint store: 2 for an
unknown version or a path that is not a store, 3 when the version to serve does not
load, 1 when there is nothing to roll back to.

A command fails by raising a `ModstreamError` (model/errors.py); `main` turns it into
`modstream <command>: <message>` on stderr and the error's `exit_code`, in one place.

Each command is a module: worker/worker_command.py (its flags and its start-up),
worker/score_command.py, worker/retrain_command.py, worker/checkpoint_commands.py.

Parsing imports nothing heavy: torch (2.3 s, `python -X importtime`) is imported by a
command once it needs a model, so `--help` and argument errors answer at once. The
retrain flags come from a torch-free table (worker/train_flags.py) for that reason.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from model.errors import ExitCode, ModstreamError
from worker import checkpoint_commands, retrain_command, score_command, worker_command
from worker.command_errors import exit_code_of

__all__ = ["build_parser", "exit_code_of", "main"]

EXIT_CODES = """\
exit codes: 0 ok; 1 failure; 2 bad arguments or settings (the message names the flag
and variable); 3 checkpoint missing or invalid; 4 Kafka unreachable at start;
10 retrain: the promotion gate kept the current model (0 with --succeed-if-held)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; the one place an escaping `ModstreamError` becomes an exit code
    and a line on stderr. A reader that stops early (`modstream score … | head -1`)
    ends the command quietly, with exit code 0."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    signals = None
    if arguments[:1] == ["worker"]:
        # Before the parser and the model load (seconds on a busy node): from here on a
        # SIGTERM is a request to stop, never death by the signal (worker/signals.py).
        from worker.signals import SignalRelay

        signals = SignalRelay()
        signals.install()
    parser = build_parser()
    args = parser.parse_args(arguments)
    args.signals = signals
    try:
        return int(args.handler(args))
    except ModstreamError as exc:
        sys.stderr.write(f"modstream {_failing_step(args, exc)}: {exc}\n")
        return exit_code_of(exc)
    except BrokenPipeError:
        _silence_stdout()
        return ExitCode.OK


def _silence_stdout() -> None:
    """stdout's reader is gone: point stdout at /dev/null so that the interpreter's
    final flush does not print a second BrokenPipeError at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (tests capture it)
        pass
    finally:
        os.close(devnull)


def _failing_step(args: argparse.Namespace, exc: ModstreamError) -> str:
    """A usage error names the command; any other failure the action too, if it has one
    (`checkpoints promote`)."""
    action = getattr(args, "action", None)
    if exc.exit_code == ExitCode.USAGE or action is None:
        return str(args.command)
    return f"{args.command} {action}"


def version() -> str:
    """The installed package's version (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("modstream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (importlib.metadata scans packages)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        sys.stdout.write(f"modstream {version()}\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modstream",
        description="Streaming content moderation: Kafka in, packed-LSTM scores out.",
        epilog="examples:\n  modstream score messages.jsonl --format table\n"
        "  modstream worker --help\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker_command.add_parser(sub)
    score_command.add_parser(sub)
    retrain_command.add_parser(sub)
    checkpoint_commands.add_parser(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
