"""`modstream retrain` and `modstream checkpoints`: the commands that fill and manage the
checkpoint store (model/store.py).

`retrain` ends with one JSON summary line on stdout whatever happens, so it maps its
own errors with `exit_code_of`; `checkpoints` lets them reach `worker/cli.py: main`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from model.errors import ExitCode
from model.jsonsafe import json_safe
from worker.command_errors import (
    CheckpointUnusableError,
    UsageError,
    describe_validation_error,
    exit_code_of,
)
from worker.train_flags import add_train_flags, train_overrides, train_problems

_KEEP_HELP = "versions to keep in the store [env MODSTREAM_CHECKPOINT_KEEP] (default: 5)"


RETRAIN_DESCRIPTION = """\
Train a model on the project's data (plus, with --feedback-topic, moderators' decisions
read from Kafka), evaluate it, and add it to the checkpoint store; the promotion gate
makes it current unless its mean validation AUC is worse than the current model's by
more than --gate-tolerance. Running workers reload a promoted model by themselves.
With --output it writes a plain checkpoint directory instead (no store, no gate).
Every argument is checked before any data is read. Progress goes to stderr; stdout
gets one JSON summary line whatever happens. Kafka security settings (SASL, TLS) come
from the worker's MODSTREAM_* variables; the SASL password from the environment only."""

RETRAIN_EPILOG = """\
examples:
  modstream retrain                                   # train, gate, promote in checkpoints/
  modstream retrain --output /tmp/model --epochs 2    # a quick plain checkpoint
  modstream retrain --feedback-topic moderation.feedback --kafka-bootstrap broker:9092

exit codes: 0 promoted (or written with --output, or identical to the current version);
10 the gate kept the current model (0 with --succeed-if-held); 4 the feedback topic
could not be read; 3 a checkpoint is unusable; 2 bad arguments (the message names the
flag); 1 any other failure."""

CHECKPOINTS_DESCRIPTION = """\
Manage the checkpoint store: a directory holding versions/<version>/ and a `current`
link to the serving version (checkpoints/ under the repo root by default). --store
may name the store root or its `current`; a path that is not a store is refused (exit
2) and nothing is created there. Running workers reload a new current version within
MODSTREAM_RELOAD_INTERVAL_S, or at once on SIGHUP."""

CHECKPOINTS_EPILOG = """\
examples:
  modstream checkpoints list
  modstream checkpoints promote 3f2a9c01b7de --store /srv/checkpoints
  modstream checkpoints rollback
  modstream checkpoints wait --timeout-s 600

exit codes: 0 ok; 1 nothing to roll back to; 2 an unknown version, or a path that is not
a checkpoint store; 3 the version to make current does not load (wait: the checkpoint
does not load, or none came within --timeout-s)."""


def add_parsers(sub: Any) -> None:
    """The `retrain` and `checkpoints` subcommands, on `modstream`'s subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    retrain = sub.add_parser(
        "retrain",
        help="train (optionally with moderator feedback), gate, promote in the checkpoint store",
        description=RETRAIN_DESCRIPTION,
        epilog=RETRAIN_EPILOG,
        formatter_class=raw,
    )
    where = retrain.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="checkpoint store to add the model to and promote it in "
        "(default: the store of MODSTREAM_CHECKPOINT_DIR, i.e. checkpoints/)",
    )
    where.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a plain checkpoint directory here instead (no store, no gate)",
    )
    retrain.add_argument(
        "--feedback-topic",
        default=None,
        metavar="TOPIC",
        help="also train on moderator feedback from this topic (default: none)",
    )
    retrain.add_argument(
        "--kafka-bootstrap",
        default=None,
        metavar="HOST:PORT",
        help="bootstrap servers for --feedback-topic (default: 127.0.0.1:9092) "
        "[env MODSTREAM_KAFKA_BOOTSTRAP]",
    )
    retrain.add_argument(
        "--feedback-group",
        default=None,
        metavar="GROUP",
        help="consumer group reading the feedback (default: modstream-retrain)",
    )
    retrain.add_argument(
        "--feedback-weight",
        type=int,
        default=3,
        metavar="N",
        help="times each feedback example is repeated in training (default: 3)",
    )
    retrain.add_argument(
        "--feedback-timeout-s",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up reading the feedback topic after this long (default: 120)",
    )
    retrain.add_argument(
        "--gate-tolerance",
        type=float,
        default=None,
        metavar="X",
        help="promote unless mean validation AUC drops by more than this; negative: it "
        "must improve by that much (default: 0.005)",
    )
    retrain.add_argument("--force", action="store_true", help="promote even if the gate says no")
    retrain.add_argument(
        "--succeed-if-held",
        action="store_true",
        help="exit 0 instead of 10 when the gate keeps the current model (the summary "
        "still says held): for schedulers that count any other exit code as a failure "
        "and retry, such as a Kubernetes Job",
    )
    retrain.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing (exit 0, status skipped) when the destination already holds a "
        "model: for a first-run job that must not retrain on every deploy",
    )
    retrain.add_argument("--keep", type=int, default=None, metavar="N", help=_KEEP_HELP)
    add_train_flags(retrain)
    retrain.set_defaults(handler=run_retrain)

    store_flags = argparse.ArgumentParser(add_help=False)
    store_flags.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="checkpoint store root, or its current link (default: the store of "
        "MODSTREAM_CHECKPOINT_DIR, i.e. checkpoints/)",
    )
    store_flags.add_argument("--keep", type=int, default=None, metavar="N", help=_KEEP_HELP)
    checkpoints = sub.add_parser(
        "checkpoints",
        help="list, promote, roll back or wait for checkpoints",
        description=CHECKPOINTS_DESCRIPTION,
        epilog=CHECKPOINTS_EPILOG,
        formatter_class=raw,
    )
    actions = checkpoints.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        parents=[store_flags],
        help="versions in the store, the current and the previous one",
        description="List the versions in the checkpoint store: when each was created, "
        "its mean validation AUC, which is current and which a rollback returns to.",
        epilog="example:\n  modstream checkpoints list --json\n\nexit codes: 0 ok; 2 the "
        "path is not a checkpoint store.",
        formatter_class=raw,
    )
    listing.add_argument("--json", action="store_true", help="one JSON document")
    promote = actions.add_parser(
        "promote",
        parents=[store_flags],
        help="make VERSION current (after checking it loads); running workers reload it",
        description="Make VERSION current, after checking that it loads.",
        epilog="example:\n  modstream checkpoints promote 3f2a9c01b7de\n\nexit codes: 0 ok; "
        "2 no such version, or not a store; 3 the version does not load.",
        formatter_class=raw,
    )
    promote.add_argument(
        "version", metavar="VERSION", help="a version from `modstream checkpoints list`"
    )
    actions.add_parser(
        "rollback",
        parents=[store_flags],
        help="make the previously current version current again",
        description="Make the version that was current before the last promote current again.",
        epilog="example:\n  modstream checkpoints rollback\n\nexit codes: 0 ok; 1 nothing to "
        "roll back to; 2 not a store; 3 that version does not load.",
        formatter_class=raw,
    )
    wait = actions.add_parser(
        "wait",
        help="wait until a checkpoint is there and loads (e.g. the first model of a fresh install)",
        description="Wait until the checkpoint at --checkpoint exists and loads, saying "
        "every --interval-s what it is waiting for. For a worker's init container on a "
        "fresh install, while the first retrain writes the first model.",
        epilog="example:\n  modstream checkpoints wait --checkpoint /var/lib/modstream/"
        "checkpoints/current\n\nexit codes: 0 the checkpoint loads; 3 it is there but does "
        "not load, or --timeout-s passed without one.",
        formatter_class=raw,
    )
    wait.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="DIR",
        help="checkpoint directory, store root or its current link (default: "
        "$MODSTREAM_CHECKPOINT_DIR, else checkpoints/current)",
    )
    wait.add_argument(
        "--timeout-s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="give up after this long; 0 = wait for ever (default: 0)",
    )
    wait.add_argument(
        "--interval-s",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="look this often, and say what it is waiting for (default: 10)",
    )
    wait.set_defaults(handler=run_wait)
    checkpoints.set_defaults(handler=run_checkpoints)


# -- retrain -----------------------------------------------------------------------


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


def check_retrain_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Every retrain argument that can be checked without data or torch, all at once:
    a bad value exits 2 naming its flag before anything is read (it used to surface
    minutes in, as a traceback). Returns the training flags given, by field name."""
    from model.paths import STORE_VERSIONS_DIR

    overrides = train_overrides(args)
    problems = train_problems(overrides)
    if args.feedback_weight < 1:
        problems.append(f"--feedback-weight must be >= 1, got {args.feedback_weight}")
    if not (math.isfinite(args.feedback_timeout_s) and args.feedback_timeout_s > 0):
        problems.append(f"--feedback-timeout-s must be > 0, got {args.feedback_timeout_s:g}")
    tolerance = args.gate_tolerance
    if tolerance is not None and not (math.isfinite(tolerance) and -1 <= tolerance <= 1):
        problems.append(
            f"--gate-tolerance must be in [-1, 1] (an AUC difference), got {tolerance:g}"
        )
    if args.keep is not None and args.keep < 2:
        problems.append(f"--keep must be >= 2 (current and previous), got {args.keep}")
    if args.output is not None and (
        args.output.is_symlink() or (args.output / STORE_VERSIONS_DIR).is_dir()
    ):
        problems.append(
            f"--output {args.output} belongs to a checkpoint store; use --store instead"
        )
    if problems:
        raise UsageError("; ".join(problems))
    return overrides


def _retrain(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    overrides = check_retrain_arguments(args)
    from model.build import retrain
    from model.data import LABELS, load_splits, merge_feedback
    from model.engine import EngineError, resolve_device
    from model.gate import DEFAULT_TOLERANCE
    from model.refresh import refresh
    from model.train_config import TrainConfig

    try:
        config = TrainConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise UsageError(_name_the_flag(str(exc))) from exc
    try:
        resolve_device(config.device)
    except EngineError as exc:  # e.g. cuda on a machine without it
        raise UsageError(f"--device {config.device}: {exc}") from exc
    tolerance = DEFAULT_TOLERANCE if args.gate_tolerance is None else args.gate_tolerance
    store = None if args.output else _open_store(args)
    if args.if_missing:
        existing = _existing_model(args.output, store)
        if existing is not None:
            summary.update(status="skipped", reason=f"a model is already there: {existing}")
            return ExitCode.OK

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
        held = outcome.status == "held"
        code = ExitCode.HELD if held and not args.succeed_if_held else ExitCode.OK

    if feedback is not None:
        from worker.feedback import commit_feedback_offsets

        commit_feedback_offsets(kafka_common, feedback)
        summary["feedback"]["committed"] = feedback.committed
        if feedback.problems:
            summary["feedback"]["problems"] = feedback.problems
    return code


def _existing_model(output: Path | None, store: Any) -> str | None:
    """What `--if-missing` finds at the destination: the checkpoint there, or None."""
    from model.paths import META_FILE

    if output is not None:
        return str(output) if (output / META_FILE).is_file() else None
    current = store.current_dir()
    return None if current is None else str(current)


def _name_the_flag(message: str) -> str:
    """TrainConfig's errors start with a field name (`target_precision: …`): say the flag."""
    field, sep, rest = message.partition(":")
    if sep and field.isidentifier():
        return f"--{field.replace('_', '-')}:{rest}"
    return message


def _kafka_settings(args: argparse.Namespace) -> Any:
    from worker.settings import WorkerSettings

    overrides = {} if args.kafka_bootstrap is None else {"kafka_bootstrap": args.kafka_bootstrap}
    try:
        return WorkerSettings(**overrides)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from exc


# -- checkpoints -------------------------------------------------------------------


def _open_store(args: argparse.Namespace, existing: bool = False) -> Any:
    """The store `--store` (else MODSTREAM_CHECKPOINT_DIR) designates. With `existing`
    (the `checkpoints` commands) it must be a store already: a typo exits 2 and creates
    nothing, where it used to leave `.lock` and `versions/` behind. `retrain` may start
    a new store at a path that does not exist yet."""
    import os

    from model.paths import default_checkpoint_dir
    from model.store import DEFAULT_KEEP, CheckpointStore, NotAStoreError
    from model.store_layout import is_store, store_root_for

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
    where = "--store" if args.store else "MODSTREAM_CHECKPOINT_DIR"
    try:
        root = store_root_for(args.store or default_checkpoint_dir())
    except NotAStoreError as exc:
        raise UsageError(f"{exc} (--store / MODSTREAM_CHECKPOINT_DIR)") from exc
    if existing and not is_store(root):
        state = "is empty" if root.is_dir() else "does not exist"
        raise UsageError(
            f"no checkpoint store at {root} ({where}): it {state}; `modstream retrain` "
            "creates one, or name the store root with --store"
        )
    return CheckpointStore(root, keep=keep)


def run_wait(args: argparse.Namespace) -> int:
    """Polls until the checkpoint loads. A missing one is waited for; one that is there
    but does not load fails at once (waiting would not fix it)."""
    import time

    from model.checkpoint import CheckpointError, CheckpointMissingError, load_checkpoint
    from model.paths import default_checkpoint_dir

    if not (math.isfinite(args.interval_s) and args.interval_s > 0):
        raise UsageError(f"--interval-s must be > 0, got {args.interval_s:g}")
    if not (math.isfinite(args.timeout_s) and args.timeout_s >= 0):
        raise UsageError(f"--timeout-s must be >= 0, got {args.timeout_s:g}")
    path: Path = args.checkpoint or default_checkpoint_dir()
    started = time.monotonic()
    while True:
        try:
            loaded = load_checkpoint(path)
        except CheckpointMissingError as exc:
            waited = time.monotonic() - started
            if args.timeout_s and waited >= args.timeout_s:
                raise CheckpointUnusableError(
                    f"no model at {path} after {waited:.0f}s: {exc}"
                ) from exc
            sys.stderr.write(
                f"modstream checkpoints wait: waiting for the first model at {path} "
                f"({waited:.0f}s so far; a retrain writes it): {exc}\n"
            )
            sys.stderr.flush()
            time.sleep(args.interval_s)
            continue
        except CheckpointError as exc:
            raise CheckpointUnusableError(f"{path} is there but does not load: {exc}") from exc
        sys.stdout.write(f"model {loaded.version} is ready at {path}\n")
        return ExitCode.OK


def run_checkpoints(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError

    store = _open_store(args, existing=True)
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
        if info.legacy:
            note += (
                f" (a plain directory at {info.path.name}/; the next promote or retrain "
                "makes it a version)"
            )
        if info.problem:
            note = f"{note} ({info.problem})".strip()
        sys.stdout.write(f"{mark} {info.version:<14}{info.created_at or '-':<27}{auc:<9}{note}\n")
    return ExitCode.OK
