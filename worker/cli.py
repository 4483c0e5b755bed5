"""`modstream` command line: worker, retrain, score.

Exit codes: 0 success; 2 bad arguments or configuration (the message names the field);
3 checkpoint missing or invalid; 4 Kafka unreachable; 1 any other failure.
Retrain adds its own codes (see `modstream retrain --help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import ValidationError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CHECKPOINT = 3
EXIT_BROKER = 4


class UsageError(Exception):
    """Bad configuration; the message names the field and where it came from."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except UsageError as exc:
        sys.stderr.write(f"modstream {args.command}: {exc}\n")
        return EXIT_USAGE
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modstream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="consume requests, publish results (long-running)")
    _add_settings_flags(worker)
    worker.set_defaults(handler=_run_worker)

    score = sub.add_parser("score", help="score request JSONL from a file or stdin")
    score.add_argument("input", nargs="?", default="-", help="JSONL file (default: stdin)")
    score.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory")
    score.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    score.add_argument("--batch-size", type=int, default=256)
    score.add_argument("--max-text-chars", type=int, default=None)
    score.set_defaults(handler=_run_score)

    retrain = sub.add_parser("retrain", help="train, evaluate and write a checkpoint")
    retrain.add_argument("--output", type=Path, default=None, help="checkpoint directory")
    _add_dataclass_flags(retrain, _train_config_type())
    retrain.set_defaults(handler=_run_retrain)
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


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(p) for p in error["loc"])
        parts.append(
            f"invalid setting {name} (--{name.replace('_', '-')} / "
            f"MODSTREAM_{name.upper()}): {error['msg']}"
        )
    return "; ".join(parts)


def _run_worker(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    from worker.logs import configure_logging

    configure_logging(settings.log_level)
    import structlog

    log = structlog.get_logger("modstream.cli")
    from model.checkpoint import CheckpointError
    from model.engine import Engine, EngineError
    from worker.app import BrokerUnavailableError, Worker
    from worker.health import HealthServer
    from worker.reload import Reloader

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
        sys.stderr.write(f"modstream worker: checkpoint {settings.checkpoint_dir}: {exc}\n")
        return EXIT_CHECKPOINT

    worker = Worker(settings, engine)
    server = HealthServer(
        settings.metrics_host, settings.metrics_port, worker.metrics.registry, worker.health
    )
    server.start()
    log.info("metrics_listening", port=server.port, host=settings.metrics_host)

    def _stop(signum: int, _frame: types.FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        worker.request_stop()

    reloader = Reloader(
        settings.checkpoint_dir,
        worker,
        worker.metrics,
        settings.reload_interval_s,
        device=settings.device,
        max_tokens=settings.max_tokens,
    )

    def _reload(signum: int, _frame: types.FrameType | None) -> None:
        reloader.request_check()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    try:
        worker.connect()
    except BrokerUnavailableError as exc:
        log.error("broker_unreachable", error=str(exc))
        sys.stderr.write(f"modstream worker: {exc}\n")
        server.stop()
        return EXIT_BROKER
    reloader.start()
    try:
        return worker.run()
    finally:
        reloader.stop()
        server.stop()


# -- score -------------------------------------------------------------------------


def _run_score(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, default_checkpoint_dir
    from model.engine import Engine, EngineError
    from worker.scoring import score_stream

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    checkpoint = args.checkpoint or default_checkpoint_dir()
    try:
        engine = Engine.load(checkpoint, device=args.device)
    except (CheckpointError, EngineError) as exc:
        sys.stderr.write(f"modstream score: checkpoint {checkpoint}: {exc}\n")
        return EXIT_CHECKPOINT
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
        sys.stderr.write(f"modstream score: {invalid} invalid input line(s), see error_kind\n")
        return EXIT_FAILURE
    return EXIT_OK


# -- retrain -----------------------------------------------------------------------


def _train_config_type() -> type[Any]:
    from model.train import TrainConfig

    return TrainConfig


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        kwargs: dict[str, Any] = {"dest": f"train_{field.name}", "default": None}
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if origin is Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif hint in (int, float, str):
            kwargs["type"] = hint
        elif args and args[0] in (int, float, str):
            kwargs["type"] = args[0]
        elif args and typing.get_origin(args[0]) is Literal:
            kwargs["choices"] = list(typing.get_args(args[0]))
        default = field.default if field.default is not dataclasses.MISSING else None
        kwargs["help"] = f"default: {default}"
        parser.add_argument(flag, **kwargs)


def _run_retrain(args: argparse.Namespace) -> int:
    from model.checkpoint import default_checkpoint_dir
    from model.train import TrainConfig, retrain

    overrides = {
        key.removeprefix("train_"): value
        for key, value in vars(args).items()
        if key.startswith("train_") and value is not None
    }
    try:
        config = TrainConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    output = args.output or default_checkpoint_dir()

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    report = retrain(output, config, progress)
    sys.stdout.write(json.dumps(_as_dict(report), default=str, sort_keys=True) + "\n")
    return EXIT_OK


def _as_dict(report: Any) -> Any:
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return dataclasses.asdict(report)
    if hasattr(report, "to_dict"):
        return report.to_dict()
    return report


if __name__ == "__main__":
    sys.exit(main())
