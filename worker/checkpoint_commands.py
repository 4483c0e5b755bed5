"""`modstream checkpoints list | promote | rollback | wait | policy`: the commands that
manage the checkpoint store (model/store.py) without training (`policy` in
worker/policy_commands.py).

Apart from `modstream retrain` (worker/retrain_command.py), which fills the store:
these only read it or move its `current` link, and let their errors reach
`worker/cli.py: main`, which maps them to exit codes. `open_store` is shared with
`retrain`, so both find and refuse a store the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from model.errors import ExitCode
from model.jsonsafe import json_safe
from worker.command_errors import CheckpointUnusableError, UsageError
from worker.policy_commands import add_policy_parser, describe_policy, policy_line

KEEP_HELP = "versions to keep in the store [env MODSTREAM_CHECKPOINT_KEEP] (default: 5)"


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
  modstream checkpoints policy set strict.json

exit codes: 0 ok; 1 nothing to roll back to; 2 an unknown version, a version that removes
labels without --allow-label-change, one the store's policy cannot apply to, or a path
that is not a checkpoint store; 3 the version to make current does not load (wait: the
checkpoint does not load, or none came within --timeout-s)."""


def add_parser(sub: Any) -> None:
    """The `checkpoints` subcommand and its actions, on `modstream`'s subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    store_flags = argparse.ArgumentParser(add_help=False)
    store_flags.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="checkpoint store root, or its current link (default: the store of "
        "MODSTREAM_CHECKPOINT_DIR, i.e. checkpoints/)",
    )
    store_flags.add_argument("--keep", type=int, default=None, metavar="N", help=KEEP_HELP)
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
        "its mean validation AUC and labels, which is current and which a rollback "
        "returns to; and the store's threshold policy.",
        epilog="example:\n  modstream checkpoints list --json\n\nexit codes: 0 ok; 2 the "
        "path is not a checkpoint store.",
        formatter_class=raw,
    )
    listing.add_argument("--json", action="store_true", help="one JSON document")
    promote = actions.add_parser(
        "promote",
        parents=[store_flags],
        help="make VERSION current (after checking it loads); running workers reload it",
        description="Make VERSION current, after checking that it loads. A version that "
        "adds labels is taken (results gain those categories); one that removes or renames "
        "a label of the current version is refused unless --allow-label-change; one the "
        "store's threshold policy names a missing label for is refused.",
        epilog="example:\n  modstream checkpoints promote 3f2a9c01b7de\n\nexit codes: 0 ok; "
        "2 no such version, labels removed without --allow-label-change, a policy "
        "conflict, or not a store; 3 the version does not load.",
        formatter_class=raw,
    )
    promote.add_argument(
        "version", metavar="VERSION", help="a version from `modstream checkpoints list`"
    )
    promote.add_argument(
        "--allow-label-change",
        action="store_true",
        help="promote even if VERSION removes or renames labels (results lose those "
        "categories from one offset on)",
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
    add_policy_parser(actions, store_flags)
    checkpoints.set_defaults(handler=run_checkpoints)


def open_store(args: argparse.Namespace, existing: bool = False) -> Any:
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

    store = open_store(args, existing=True)
    try:
        if args.action == "list":
            return _list_checkpoints(store, args.json)
        if args.action == "promote":
            change = store.promote(args.version, allow_label_change=args.allow_label_change)
        else:
            change = store.rollback()
    except CheckpointError as exc:
        raise CheckpointUnusableError(f"refusing, the checkpoint does not load: {exc}") from exc
    if change.changed:
        labels = "".join(
            f"; labels {kind}: {', '.join(names)}"
            for kind, names in (("added", change.labels_added), ("removed", change.labels_removed))
            if names
        )
        sys.stdout.write(
            f"{change.action}: current is now {change.version} (was {change.previous or 'none'})"
            f"{labels}; running workers reload it on their next check (or SIGHUP)\n"
        )
    else:
        sys.stdout.write(f"{change.version} is already current\n")
    return ExitCode.OK


def _list_checkpoints(store: Any, as_json: bool) -> int:
    infos = store.list()
    policy, problem = describe_policy(store.root)
    if as_json:
        document = {
            "store": str(store.root),
            "current": store.current_version(),
            "previous": store.previous_version(),
            "versions": [info.to_dict() for info in infos],
            "policy": policy,
            "policy_problem": problem,
        }
        sys.stdout.write(json.dumps(json_safe(document), indent=1) + "\n")
        return ExitCode.OK
    if not infos:
        sys.stdout.write(f"no versions in the store at {store.root}\n")
        sys.stdout.write(policy_line(policy, problem))
        return ExitCode.OK
    sys.stdout.write(f"  {'VERSION':<14}{'CREATED':<27}{'VAL AUC':<9}{'LABELS':<24}\n")
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
        labels = (",".join(info.labels) if info.labels is not None else "-") + " "
        created = info.created_at or "-"
        sys.stdout.write(f"{mark} {info.version:<14}{created:<27}{auc:<9}{labels:<24}{note}\n")
    sys.stdout.write(policy_line(policy, problem))
    return ExitCode.OK
