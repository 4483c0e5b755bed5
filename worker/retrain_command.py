"""`modstream retrain`: train a model (optionally with moderators' feedback from Kafka),
then add it to the checkpoint store behind the promotion gate, or write a plain
checkpoint directory with --output.

Its flags: the data it trains on (`worker/data_flags.py`: `--data`, `--no-bundled`,
`--label-spec`, …) and one per training setting (`worker/train_flags.py`).

Apart from `modstream checkpoints` (worker/checkpoint_commands.py) because it is a
different job: it reads data and Kafka and trains, while those commands only move the
store's `current` link. It shares their store opening (`open_store`).

`retrain` ends with one JSON summary line on stdout whatever happens, so it maps its
own errors with `exit_code_of` rather than letting them reach `worker/cli.py: main`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from model.errors import ExitCode
from model.jsonsafe import json_safe
from worker.checkpoint_commands import KEEP_HELP, open_store
from worker.command_errors import UsageError, describe_validation_error, exit_code_of
from worker.data_flags import add_data_flags, data_problems, data_request, read_label_spec
from worker.train_flags import add_train_flags, train_overrides, train_problems

RETRAIN_DESCRIPTION = """\
Train a model on the bundled corpora and/or your own labelled files (--data, in your own
labels; --label-spec names them and sets each one's threshold policy), plus, with
--feedback-topic, moderators' decisions read from Kafka; evaluate it, and add it to the
checkpoint store; the promotion gate
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
  modstream retrain --data decisions.jsonl --label-spec labels.toml --no-bundled
  modstream retrain --feedback-topic moderation.feedback --kafka-bootstrap broker:9092

exit codes: 0 promoted (or written with --output, or identical to the current version);
10 the gate kept the current model (0 with --succeed-if-held); 4 the feedback topic
could not be read; 3 a checkpoint is unusable; 2 bad arguments (the message names the
flag) or a bad data file or label spec (file, line and field; nothing is written);
1 any other failure."""


def add_parser(sub: Any) -> None:
    """The `retrain` subcommand, on `modstream`'s subparsers."""
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
        "--allow-label-change",
        action="store_true",
        help="let the gate promote a candidate that removes or renames labels (compared "
        "on the labels both models have); added labels never need it",
    )
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
    retrain.add_argument("--keep", type=int, default=None, metavar="N", help=KEEP_HELP)
    add_data_flags(retrain)
    add_train_flags(retrain)
    retrain.set_defaults(handler=run_retrain)


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
        # A usage error (a flag, a data file, the label spec) says all in its message.
        summary["error"] = str(exc) if code == ExitCode.USAGE else f"{type(exc).__name__}: {exc}"
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
    problems += data_problems(args)
    if problems:
        raise UsageError("; ".join(problems))
    return overrides


def _retrain(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    """1. check every flag; 2. read the data files (and the corpora); 3. read and merge
    the feedback; 4. check each label can be trained; 5. train, evaluate, gate, promote
    (or write --output). Nothing is written before step 5."""
    overrides = check_retrain_arguments(args)
    spec = read_label_spec(args)
    from model.build import retrain
    from model.data import merge_feedback
    from model.engine import EngineError, resolve_device
    from model.evaluation import parse_target_precision
    from model.gate import DEFAULT_TOLERANCE
    from model.label_plan import check_policy_sources, plan_labels
    from model.label_support import check_trainable
    from model.refresh import refresh
    from model.train_config import TrainConfig
    from model.training_sources import load_training_data

    try:
        config = TrainConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise UsageError(_name_the_flag(str(exc))) from exc
    rules = parse_target_precision(config.target_precision)
    check_policy_sources(spec, rules)
    try:
        resolve_device(config.device)
    except EngineError as exc:  # e.g. cuda on a machine without it
        raise UsageError(f"--device {config.device}: {exc}") from exc
    tolerance = DEFAULT_TOLERANCE if args.gate_tolerance is None else args.gate_tolerance
    store = None if args.output else open_store(args)
    if args.if_missing:
        existing = _existing_model(args.output, store)
        if existing is not None:
            summary.update(status="skipped", reason=f"a model is already there: {existing}")
            return ExitCode.OK

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    data = load_training_data(data_request(args, spec))
    summary["data"] = data.summary()
    splits = data.splits
    plan = plan_labels(splits.labels, spec, rules)
    for warning in data.warnings:
        progress(f"warning: {warning}")

    feedback = None
    kafka_common: dict[str, object] = {}
    if args.feedback_topic:
        from worker.feedback import DEFAULT_FEEDBACK_GROUP, read_feedback
        from worker.worker_command import check_security_files

        kafka_settings = _kafka_settings(args)
        check_security_files(kafka_settings)
        kafka_common = kafka_settings.kafka_common()
        feedback = read_feedback(
            kafka_common,
            args.feedback_topic,
            splits.labels,  # a label the model does not train is skipped: unknown_label
            group_id=args.feedback_group or DEFAULT_FEEDBACK_GROUP,
            timeout_s=args.feedback_timeout_s,
        )
        summary["feedback"] = feedback.summary()
        progress(
            f"feedback: {len(feedback.records)} valid of {feedback.consumed} records on "
            f"{feedback.topic}, skipped {feedback.skipped or 'none'}"
        )

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
    # Both classes of every label in train and validation, else exit 2 naming it; its
    # rarity warnings come again, on the examples measured, from the evaluation.
    check_trainable(replace(splits, train=[*splits.train, *extra]), data.where)

    if store is None:
        report = retrain(args.output, config, progress, splits, extra, plan)
        summary.update(status="written", version=report.version, output=str(args.output))
        summary["report"] = report.to_dict()
        code = ExitCode.OK
    else:
        summary["store"] = str(store.root)
        outcome = refresh(
            store,
            config,
            splits,
            extra,
            tolerance,
            args.force,
            progress,
            plan,
            allow_label_change=args.allow_label_change,
        )
        summary.update(outcome.to_dict())
        report = outcome.report
        held = outcome.status == "held"
        code = ExitCode.HELD if held and not args.succeed_if_held else ExitCode.OK
    summary["warnings"] = [*data.warnings, *report.warnings]

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
