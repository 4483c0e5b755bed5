"""`modstream checkpoints policy set FILE | clear`: thresholds changed without retraining.

The store's policy file (model/store_policy.py) sets per-label thresholds over every
version's own; running workers pick a change up like a new version (within
MODSTREAM_RELOAD_INTERVAL_S, or at once on SIGHUP) and apply it between two batches,
and each result's `policy_version` names the policy it was flagged under.
`checkpoints list` shows the policy in place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from model.errors import ExitCode
from worker.command_errors import UsageError

POLICY_DESCRIPTION = """\
Set or clear the threshold policy of the checkpoint store (policy.json beside
`current`): per-label thresholds that replace each version's own, without retraining.
A FILE is JSON: {"version": "strict-2024-06", "description": "…", "thresholds":
{"insult": 0.8}}; `version` names the policy in every result (policy_version), so one
version must always mean the same thresholds. MODSTREAM_THRESHOLDS on a worker still
wins over the file, label by label."""

POLICY_EPILOG = """\
examples:
  modstream checkpoints policy set strict.json
  modstream checkpoints policy clear

exit codes: 0 ok (also when nothing changed); 2 a FILE that is no valid policy, a label
the current version lacks, a version already used for other thresholds, or a path that
is not a store."""


def add_policy_parser(actions: Any, store_flags: argparse.ArgumentParser) -> None:
    """`checkpoints policy` and its two actions, on `checkpoints`' subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    policy = actions.add_parser(
        "policy",
        help="set or clear the store's threshold policy (no retraining)",
        description=POLICY_DESCRIPTION,
        epilog=POLICY_EPILOG,
        formatter_class=raw,
    )
    steps = policy.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    setting = steps.add_parser(
        "set",
        parents=[store_flags],
        help="validate FILE and make it the store's policy (atomically)",
        description="Validate FILE (syntax, bounds, labels of the current version) and "
        "write it as the store's policy.json in one rename; history.json records it.",
        epilog="example:\n  modstream checkpoints policy set strict.json --store "
        "/srv/checkpoints\n\nexit codes: 0 ok; 2 FILE is no valid policy, names a label "
        "the current version lacks or reuses a version for other thresholds, or not a store.",
        formatter_class=raw,
    )
    setting.add_argument("file", type=Path, metavar="FILE", help="the policy, as JSON")
    steps.add_parser(
        "clear",
        parents=[store_flags],
        help="remove the policy: every label back to its version's own threshold",
        description="Remove the store's policy.json; history.json records it.",
        epilog="example:\n  modstream checkpoints policy clear\n\nexit codes: 0 ok (also "
        "when there was none); 2 not a store.",
        formatter_class=raw,
    )
    policy.set_defaults(handler=run_policy)


def run_policy(args: argparse.Namespace) -> int:
    from model.store_policy import clear_policy, set_policy
    from model.threshold_overrides import MAX_POLICY_BYTES, PolicyFileError
    from worker.checkpoint_commands import open_store

    store = open_store(args, existing=True)
    if args.policy_action == "clear":
        change = clear_policy(store.root)
    else:
        try:
            with open(args.file, "rb") as file:
                data = file.read(MAX_POLICY_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from exc
        try:
            change = set_policy(store.root, data, str(args.file))
        except PolicyFileError as exc:  # the operator's file, not the store's: a usage error
            raise UsageError(str(exc)) from exc
    if not change.changed:
        what = "no policy to clear" if change.action == "policy_clear" else "already the policy"
        sys.stdout.write(f"{what} ({change.version}); nothing changed\n")
        return ExitCode.OK
    now = (
        "no policy (each version's own thresholds)"
        if change.action == "policy_clear"
        else (f"policy {change.version}")
    )
    sys.stdout.write(
        f"{now} (was {change.previous or 'none'}); running workers apply it on their next "
        "check (or SIGHUP)\n"
    )
    return ExitCode.OK


def describe_policy(root: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The store's policy for `checkpoints list`: (fields, None), (None, None) when
    there is none, or (None, why) when the file is unusable."""
    from model.store_policy import read_policy
    from model.threshold_overrides import PolicyFileError

    try:
        policy = read_policy(root)
    except PolicyFileError as exc:
        return None, str(exc)
    return (policy.model_dump() if policy is not None else None), None


def policy_line(policy: dict[str, Any] | None, problem: str | None) -> str:
    """One line for the text listing."""
    if problem is not None:
        return f"policy: unusable ({problem}); workers keep the one they have\n"
    if policy is None:
        return "policy: none (each version's own thresholds)\n"
    pairs = ", ".join(f"{label}={value:g}" for label, value in policy["thresholds"].items())
    note = f" - {policy['description']}" if policy["description"] else ""
    return f"policy: {policy['version']} ({pairs or 'no overrides'}){note}\n"
