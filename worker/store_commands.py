"""`modstream retrain` and `modstream checkpoints`: the commands that fill and manage the
checkpoint store (model/store.py).

`retrain` ends with one JSON summary line on stdout whatever happens, so it maps its
own errors with `exit_code_of`; `checkpoints` lets them reach `worker/cli.py: main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from model.errors import ExitCode
from model.jsonsafe import json_safe
from worker.command_errors import (
    CheckpointUnusableError,
    UsageError,
    describe_validation_error,
    exit_code_of,
)

_KEEP_HELP = "versions to keep in the store [env MODSTREAM_CHECKPOINT_KEEP] (default: 5)"


def add_parsers(sub: Any) -> None:
    """The `retrain` and `checkpoints` subcommands, on `modstream`'s subparsers."""
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
    retrain.set_defaults(handler=run_retrain)

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
    checkpoints.set_defaults(handler=run_checkpoints)


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


def run_retrain(args: argparse.Namespace) -> int:
    """Train → (store: add, gate, promote) → one JSON summary line on stdout."""
    import time

    started = time.monotonic()
    summary: dict[str, Any] = {"status": "error"}
    code: int = ExitCode.FAILURE
    try:
        code = _retrain(args, summary)
    except Exception as exc:  # the summary line is written whatever failed
        code = exit_code_of(exc)
        summary["error"] = (
            str(exc) if isinstance(exc, UsageError) else f"{type(exc).__name__}: {exc}"
        )
        sys.stderr.write(f"modstream retrain: {summary['error']}\n")
        if code == ExitCode.FAILURE:
            import traceback

            traceback.print_exc(file=sys.stderr)
    summary["exit_code"] = code
    summary["seconds"] = round(time.monotonic() - started, 3)
    sys.stdout.write(json.dumps(json_safe(summary), sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
    return code


def _retrain(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    from model.build import retrain
    from model.checkpoint import STORE_VERSIONS_DIR
    from model.data import LABELS, load_splits, merge_feedback
    from model.engine import EngineError, resolve_device
    from model.gate import DEFAULT_TOLERANCE
    from model.refresh import refresh
    from model.train import TrainConfig

    overrides = {
        key.removeprefix("train_"): value
        for key, value in vars(args).items()
        if key.startswith("train_") and value is not None
    }
    try:
        config = TrainConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        resolve_device(config.device)
    except EngineError as exc:  # e.g. cuda on a machine without it
        raise UsageError(f"--device {config.device}: {exc}") from exc
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
        from worker.cli import check_security_files
        from worker.feedback import DEFAULT_FEEDBACK_GROUP, read_feedback

        kafka_settings = _kafka_settings(args)
        check_security_files(kafka_settings)
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
        code = ExitCode.OK
    else:
        summary["store"] = str(store.root)
        outcome = refresh(store, config, splits, extra, tolerance, args.force, progress)
        summary.update(outcome.to_dict())
        code = ExitCode.HELD if outcome.status == "held" else ExitCode.OK

    if feedback is not None:
        from worker.feedback import commit_feedback_offsets

        commit_feedback_offsets(kafka_common, feedback)
        summary["feedback"]["committed"] = feedback.committed
        if feedback.problems:
            summary["feedback"]["problems"] = feedback.problems
    return code


def _kafka_settings(args: argparse.Namespace) -> Any:
    from worker.settings import WorkerSettings

    overrides = {} if args.kafka_bootstrap is None else {"kafka_bootstrap": args.kafka_bootstrap}
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from exc


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


def run_checkpoints(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError

    store = _open_store(args)
    try:
        if args.action == "list":
            return _list_checkpoints(store, args.json)
        change = store.promote(args.version) if args.action == "promote" else store.rollback()
    except CheckpointError as exc:
        raise CheckpointUnusableError(f"refusing, the checkpoint does not load: {exc}") from exc
    if change.changed:
        sys.stdout.write(
            f"{change.action}: current is now {change.version} (was {change.previous or 'none'})"
            f"; running workers reload it on their next check (or SIGHUP)\n"
        )
    else:
        sys.stdout.write(f"{change.version} is already current\n")
    return ExitCode.OK


def _list_checkpoints(store: Any, as_json: bool) -> int:
    infos = store.list()
    if as_json:
        document = {
            "store": str(store.root),
            "current": store.current_version(),
            "previous": store.previous_version(),
            "versions": [info.to_dict() for info in infos],
        }
        sys.stdout.write(json.dumps(json_safe(document), indent=1) + "\n")
        return ExitCode.OK
    if not infos:
        sys.stdout.write(f"no versions in the store at {store.root}\n")
        return ExitCode.OK
    sys.stdout.write(f"  {'VERSION':<14}{'CREATED':<27}{'VAL AUC':<9}\n")
    for info in infos:
        mark = "*" if info.current else " "
        auc = "-" if info.mean_validation_auc is None else f"{info.mean_validation_auc:.4f}"
        note = "current" if info.current else "previous" if info.previous else ""
        if info.problem:
            note = f"{note} ({info.problem})".strip()
        sys.stdout.write(f"{mark} {info.version:<14}{info.created_at or '-':<27}{auc:<9}{note}\n")
    return ExitCode.OK
