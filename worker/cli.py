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

from model.errors import ExitCode, ModstreamError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CHECKPOINT = 3
EXIT_BROKER = 4
EXIT_HELD = 10  # retrain: the promotion gate kept the current model


class UsageError(ModstreamError):
    exit_code = ExitCode.USAGE

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

    retrain = sub.add_parser(
        "retrain",
        help="train (optionally with moderator feedback), gate, promote in the checkpoint store",
        epilog="Ends with one JSON summary line on stdout. Exit codes: 0 promoted (or written "
        "with --output, or identical to the current version), 10 the gate kept the current "
        "model, 4 the feedback topic could not be read, 3 a checkpoint is unusable, 2 bad "
        "arguments, 1 any other failure.",
    )
    where = retrain.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        type=Path,
        default=None,
        help="checkpoint store to add the model to and promote it in "
        "(default: the store of MODSTREAM_CHECKPOINT_DIR, i.e. checkpoints/)",
    )
    where.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write a plain checkpoint directory here instead (no store, no gate)",
    )
    retrain.add_argument(
        "--feedback-topic", default=None, help="also train on moderator feedback from this topic"
    )
    retrain.add_argument(
        "--kafka-bootstrap", default=None, help="bootstrap servers [env MODSTREAM_KAFKA_BOOTSTRAP]"
    )
    retrain.add_argument(
        "--feedback-group", default=None, help="consumer group (default: modstream-retrain)"
    )
    retrain.add_argument(
        "--feedback-weight",
        type=int,
        default=3,
        help="times each feedback example is repeated in training (default: 3)",
    )
    retrain.add_argument(
        "--feedback-timeout-s", type=float, default=120.0, help="give up reading after this long"
    )
    retrain.add_argument(
        "--gate-tolerance",
        type=float,
        default=None,
        help="promote unless mean validation AUC drops by more than this (default: 0.005)",
    )
    retrain.add_argument("--force", action="store_true", help="promote even if the gate says no")
    retrain.add_argument("--keep", type=int, default=None, help=_KEEP_HELP)
    _add_dataclass_flags(retrain, _train_config_type())
    retrain.set_defaults(handler=_run_retrain)

    store_flags = argparse.ArgumentParser(add_help=False)
    store_flags.add_argument(
        "--store",
        type=Path,
        default=None,
        help="checkpoint store root (default: the store of MODSTREAM_CHECKPOINT_DIR)",
    )
    store_flags.add_argument("--keep", type=int, default=None, help=_KEEP_HELP)
    checkpoints = sub.add_parser("checkpoints", help="list, promote or roll back checkpoints")
    actions = checkpoints.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[store_flags], help="versions in the store")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    promote = actions.add_parser(
        "promote", parents=[store_flags], help="make VERSION current (running workers reload)"
    )
    promote.add_argument("version", metavar="VERSION")
    actions.add_parser(
        "rollback", parents=[store_flags], help="make the previously current version current"
    )
    checkpoints.set_defaults(handler=_run_checkpoints)
    return parser


_KEEP_HELP = "versions to keep in the store [env MODSTREAM_CHECKPOINT_KEEP] (default: 5)"


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
        if not name:  # a rule across settings: its message names them
            parts.append(f"invalid settings: {error['msg'].removeprefix('Value error, ')}")
            continue
        parts.append(
            f"invalid setting {name} (--{name.replace('_', '-')} / "
            f"MODSTREAM_{name.upper()}): {error['msg']}"
        )
    return "; ".join(parts)


def _check_security_files(settings: Any) -> None:
    """TLS and secret files are usable, before anything slow starts (exit 2 if not)."""
    from worker.security import SecuritySettingsError

    try:
        settings.kafka_common()
    except SecuritySettingsError as exc:
        raise UsageError(str(exc)) from exc


def _run_worker(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    from worker.logs import configure_logging

    configure_logging(settings.log_level)
    import structlog

    log = structlog.get_logger("modstream.cli")
    _check_security_files(settings)
    from model.checkpoint import CheckpointError
    from model.engine import Engine, EngineError
    from worker.app import BrokerUnavailableError, Worker
    from worker.health import HealthServer
    from worker.reload import Reloader

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
        sys.stderr.write(f"modstream worker: checkpoint {settings.checkpoint_dir}: {exc}\n")
        return EXIT_CHECKPOINT

    log.info("engine_warmed_up", seconds=round(engine.warm_up(), 3), version=engine.version)
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
    """Train → (store: add, gate, promote) → one JSON summary line on stdout."""
    import time

    started = time.monotonic()
    summary: dict[str, Any] = {"status": "error"}
    code = EXIT_FAILURE
    try:
        code = _retrain(args, summary)
    except UsageError as exc:
        summary["error"] = str(exc)
        sys.stderr.write(f"modstream retrain: {exc}\n")
        code = EXIT_USAGE
    except Exception as exc:
        code = _retrain_error_code(exc)
        summary["error"] = f"{type(exc).__name__}: {exc}"
        sys.stderr.write(f"modstream retrain: {summary['error']}\n")
        if code == EXIT_FAILURE:
            import traceback

            traceback.print_exc(file=sys.stderr)
    summary["exit_code"] = code
    summary["seconds"] = round(time.monotonic() - started, 3)
    sys.stdout.write(json.dumps(_json_safe(summary), sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
    return code


def _retrain(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    from model.checkpoint import STORE_VERSIONS_DIR
    from model.data import LABELS, load_splits, merge_feedback
    from model.gate import DEFAULT_TOLERANCE
    from model.refresh import refresh
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
    if args.feedback_weight < 1:
        raise UsageError(f"--feedback-weight must be >= 1, got {args.feedback_weight}")
    tolerance = DEFAULT_TOLERANCE if args.gate_tolerance is None else args.gate_tolerance
    if args.output is not None and (
        args.output.is_symlink() or (args.output / STORE_VERSIONS_DIR).is_dir()
    ):
        raise UsageError(
            f"--output {args.output} belongs to a checkpoint store; use --store instead"
        )
    store = None if args.output else _open_store(args)

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    feedback = None
    kafka_common: dict[str, object] = {}
    if args.feedback_topic:
        from worker.feedback import DEFAULT_FEEDBACK_GROUP, read_feedback

        kafka_settings = _kafka_settings(args)
        _check_security_files(kafka_settings)
        kafka_common = kafka_settings.kafka_common()
        feedback = read_feedback(
            kafka_common,
            args.feedback_topic,
            LABELS,
            group_id=args.feedback_group or DEFAULT_FEEDBACK_GROUP,
            timeout_s=args.feedback_timeout_s,
        )
        summary["feedback"] = feedback.summary()
        progress(
            f"feedback: {len(feedback.records)} valid of {feedback.consumed} records on "
            f"{feedback.topic}, skipped {feedback.skipped or 'none'}"
        )

    splits = load_splits()
    extra = []
    if feedback is not None:
        merged = merge_feedback(splits, feedback.decisions(), weight=args.feedback_weight)
        splits, extra = merged.splits, merged.extra_train
        summary["feedback"]["merge"] = {
            "texts": merged.texts,
            "duplicates": merged.duplicates,
            "superseded": merged.superseded,
            "weight": args.feedback_weight,
            "train_examples_added": len(extra),
        }

    if store is None:
        report = retrain(args.output, config, progress, splits, extra)
        summary.update(status="written", version=report.version, output=str(args.output))
        summary["report"] = report.to_dict()
        code = EXIT_OK
    else:
        summary["store"] = str(store.root)
        outcome = refresh(store, config, splits, extra, tolerance, args.force, progress)
        summary.update(outcome.to_dict())
        code = EXIT_HELD if outcome.status == "held" else EXIT_OK

    if feedback is not None:
        from worker.feedback import commit_feedback_offsets

        commit_feedback_offsets(kafka_common, feedback)
        summary["feedback"]["committed"] = feedback.committed
        if feedback.problems:
            summary["feedback"]["problems"] = feedback.problems
    return code


def _retrain_error_code(exc: Exception) -> int:
    from model.checkpoint import CheckpointError
    from model.store import NotAStoreError
    from worker.feedback import FeedbackReadError

    if isinstance(exc, FeedbackReadError):
        return EXIT_BROKER
    if isinstance(exc, CheckpointError):
        return EXIT_CHECKPOINT
    if isinstance(exc, NotAStoreError):
        return EXIT_USAGE
    return EXIT_FAILURE


def _kafka_settings(args: argparse.Namespace) -> Any:
    from worker.settings import WorkerSettings

    overrides = {} if args.kafka_bootstrap is None else {"kafka_bootstrap": args.kafka_bootstrap}
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from exc


def _json_safe(value: Any) -> Any:
    """NaN metrics (one-class splits) become null, so the summary is strict JSON."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# -- checkpoints -------------------------------------------------------------------


def _open_store(args: argparse.Namespace) -> Any:
    import os

    from model.checkpoint import default_checkpoint_dir
    from model.store import DEFAULT_KEEP, CheckpointStore, NotAStoreError, store_root_for

    keep_text = os.environ.get("MODSTREAM_CHECKPOINT_KEEP")
    keep = args.keep
    if keep is None and keep_text:
        try:
            keep = int(keep_text)
        except ValueError as exc:
            raise UsageError(
                f"MODSTREAM_CHECKPOINT_KEEP must be an integer, got {keep_text!r}"
            ) from exc
    keep = DEFAULT_KEEP if keep is None else keep
    if keep < 2:
        raise UsageError(f"--keep / MODSTREAM_CHECKPOINT_KEEP must be >= 2, got {keep}")
    try:
        root = store_root_for(args.store or default_checkpoint_dir())
    except NotAStoreError as exc:
        raise UsageError(f"{exc} (--store / MODSTREAM_CHECKPOINT_DIR)") from exc
    return CheckpointStore(root, keep=keep)


def _run_checkpoints(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError
    from model.store import NoPreviousVersionError, StoreError, UnknownVersionError

    store = _open_store(args)
    try:
        if args.action == "list":
            return _list_checkpoints(store, args.json)
        change = store.promote(args.version) if args.action == "promote" else store.rollback()
    except UnknownVersionError as exc:
        raise UsageError(str(exc)) from exc
    except NoPreviousVersionError as exc:
        sys.stderr.write(f"modstream checkpoints {args.action}: {exc}\n")
        return EXIT_FAILURE
    except CheckpointError as exc:
        sys.stderr.write(
            f"modstream checkpoints {args.action}: refusing, the checkpoint does not load: {exc}\n"
        )
        return EXIT_CHECKPOINT
    except StoreError as exc:
        sys.stderr.write(f"modstream checkpoints {args.action}: {exc}\n")
        return EXIT_FAILURE
    if change.changed:
        sys.stdout.write(
            f"{change.action}: current is now {change.version} (was {change.previous or 'none'})"
            f"; running workers reload it on their next check (or SIGHUP)\n"
        )
    else:
        sys.stdout.write(f"{change.version} is already current\n")
    return EXIT_OK


def _list_checkpoints(store: Any, as_json: bool) -> int:
    infos = store.list()
    if as_json:
        document = {
            "store": str(store.root),
            "current": store.current_version(),
            "previous": store.previous_version(),
            "versions": [info.to_dict() for info in infos],
        }
        sys.stdout.write(json.dumps(_json_safe(document), indent=1) + "\n")
        return EXIT_OK
    if not infos:
        sys.stdout.write(f"no versions in the store at {store.root}\n")
        return EXIT_OK
    sys.stdout.write(f"  {'VERSION':<14}{'CREATED':<27}{'VAL AUC':<9}\n")
    for info in infos:
        mark = "*" if info.current else " "
        auc = "-" if info.mean_validation_auc is None else f"{info.mean_validation_auc:.4f}"
        note = "current" if info.current else "previous" if info.previous else ""
        if info.problem:
            note = f"{note} ({info.problem})".strip()
        sys.stdout.write(f"{mark} {info.version:<14}{info.created_at or '-':<27}{auc:<9}{note}\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
