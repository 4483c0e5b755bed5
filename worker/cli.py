"""`modstream` command line: worker, score, retrain, checkpoints.

Exit codes: 0 success; 2 bad arguments or configuration (the message names the field);
3 checkpoint missing or invalid; 4 Kafka unreachable; 1 any other failure.

`retrain` (a periodic job) ends with one JSON summary line on stdout and exits
0 when its model was promoted (or written to `--output`, or identical to the current
one), 10 when the promotion gate kept the current model, 4 when the feedback topic
could not be read, 3 when a checkpoint is unusable, 2 for bad arguments, 1 otherwise.

`checkpoints list | promote VERSION | rollback` manage the checkpoint store: 2 for an
unknown version or a path that is not a store, 3 when the version to serve does not
load, 1 when there is nothing to roll back to.

A command fails by raising a `ModstreamError` (model/errors.py); `main` turns it into
`modstream <command>: <message>` on stderr and the error's `exit_code`, in one place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from model.errors import ExitCode, ModstreamError
from worker import store_commands
from worker.command_errors import (
    CheckpointUnusableError,
    InvalidInputError,
    UsageError,
    describe_validation_error,
    exit_code_of,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; the one place an escaping `ModstreamError` becomes an exit code
    and a line on stderr."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    signals = None
    if arguments[:1] == ["worker"]:
        # Before the parser, which imports torch (seconds on a busy node): from here on a
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


def _failing_step(args: argparse.Namespace, exc: ModstreamError) -> str:
    """A usage error names the command; any other failure the action too, if it has one
    (`checkpoints promote`)."""
    action = getattr(args, "action", None)
    if exc.exit_code == ExitCode.USAGE or action is None:
        return str(args.command)
    return f"{args.command} {action}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modstream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    # No abbreviations: `--sasl-password x` must fail, not become `--sasl-password-file x`.
    worker = sub.add_parser(
        "worker", help="consume requests, publish results (long-running)", allow_abbrev=False
    )
    _add_settings_flags(worker)
    worker.set_defaults(handler=_run_worker)

    score = sub.add_parser("score", help="score request JSONL from a file or stdin")
    score.add_argument("input", nargs="?", default="-", help="JSONL file (default: stdin)")
    score.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory")
    score.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    score.add_argument("--batch-size", type=int, default=256)
    score.add_argument("--max-text-chars", type=int, default=None)
    score.set_defaults(handler=_run_score)

    store_commands.add_parsers(sub)
    return parser


# -- worker ------------------------------------------------------------------------


def _settings_fields() -> dict[str, Any]:
    from worker.settings import WorkerSettings

    return dict(WorkerSettings.model_fields)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    from worker.settings import ENV_ONLY_SETTINGS

    for name, field in _settings_fields().items():
        if name in ENV_ONLY_SETTINGS:
            continue
        flag = "--" + name.replace("_", "-")
        env = "MODSTREAM_" + name.upper()
        parser.add_argument(
            flag,
            dest=f"setting_{name}",
            default=None,
            metavar="VALUE",
            help=f"{field.description or ''} [env {env}]",
        )


def load_settings(args: argparse.Namespace) -> Any:
    from worker.settings import WorkerSettings

    overrides = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from exc


def check_security_files(settings: Any) -> None:
    """TLS and secret files are usable, before anything slow starts (exit 2 if not)."""
    from worker.security import SecuritySettingsError

    try:
        settings.kafka_common()
    except SecuritySettingsError as exc:
        raise UsageError(str(exc)) from exc


def _run_worker(args: argparse.Namespace) -> int:
    from worker.signals import SignalRelay

    # Installed by `main` before parsing; start-up checks it between its steps.
    signals: SignalRelay = args.signals
    settings = load_settings(args)
    from worker.logs import configure_logging

    configure_logging(settings.log_level)
    import structlog

    log = structlog.get_logger("modstream.cli")
    log.info("worker_starting", checkpoint_dir=str(settings.checkpoint_dir))
    check_security_files(settings)
    from model.checkpoint import CheckpointError
    from model.engine import Engine, EngineError
    from worker.app import Worker
    from worker.clients import BrokerUnavailableError
    from worker.health import HealthServer
    from worker.reload import Reloader

    def stopped_during(step: str) -> bool:
        if signals.requested:
            log.info("stopped_during_startup", step=step)
        return signals.requested

    if stopped_during("starting"):
        return ExitCode.OK
    if settings.gil_switch_interval_us:
        # The scoring thread releases the GIL inside every torch call and must win it
        # back from the processing thread; at Python's 5 ms default each handover can
        # stall it that long (measured: +15 % throughput at 100 µs, bench/README).
        sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        engine = Engine.load(
            settings.checkpoint_dir, device=settings.device, max_tokens=settings.max_tokens
        )
    except (CheckpointError, EngineError) as exc:
        log.error(
            "checkpoint_unusable", checkpoint_dir=str(settings.checkpoint_dir), error=str(exc)
        )
        raise CheckpointUnusableError(f"checkpoint {settings.checkpoint_dir}: {exc}") from exc
    if stopped_during("loading the model"):
        return ExitCode.OK
    log.info("engine_warmed_up", seconds=round(engine.warm_up(), 3), version=engine.version)
    if stopped_during("warming up"):
        return ExitCode.OK
    worker = Worker(settings, engine)
    signals.on_stop(worker.request_stop)  # at once if the signal came meanwhile
    server = HealthServer(
        settings.metrics_host, settings.metrics_port, worker.metrics.registry, worker.health
    )
    server.start()
    log.info("metrics_listening", port=server.port, host=settings.metrics_host)

    reloader = Reloader(
        settings.checkpoint_dir,
        worker.engines,
        worker.metrics,
        settings.reload_interval_s,
        device=settings.device,
        max_tokens=settings.max_tokens,
    )
    signals.on_reload(reloader.request_check)
    try:
        worker.connect()
    except BrokerUnavailableError as exc:
        server.stop()
        if stopped_during("connecting"):
            return ExitCode.OK
        log.error("broker_unreachable", error=str(exc))
        raise
    reloader.start()
    try:
        return worker.run()  # a stop that came while connecting ends it at once, cleanly
    finally:
        reloader.stop()
        server.stop()


# -- score -------------------------------------------------------------------------


def _run_score(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, default_checkpoint_dir
    from model.engine import Engine, EngineError
    from worker.logs import configure_logging
    from worker.scoring import score_stream

    # Output is the JSON lines on stdout: log lines (errors only) go to stderr.
    configure_logging("error")

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    checkpoint = args.checkpoint or default_checkpoint_dir()
    try:
        engine = Engine.load(checkpoint, device=args.device)
    except (CheckpointError, EngineError) as exc:
        raise CheckpointUnusableError(f"checkpoint {checkpoint}: {exc}") from exc
    source: TextIO
    if args.input == "-":
        source = sys.stdin
        invalid = score_stream(
            engine, source, sys.stdout, "stdin", args.batch_size, args.max_text_chars
        )
    else:
        path = Path(args.input)
        if not path.is_file():
            raise UsageError(f"input file {path} does not exist")
        with path.open(encoding="utf-8", errors="surrogateescape") as source:
            invalid = score_stream(
                engine, source, sys.stdout, path.name, args.batch_size, args.max_text_chars
            )
    if invalid:
        raise InvalidInputError(f"{invalid} invalid input line(s), see error_kind")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
