"""worker/cli.py (with worker/store_commands.py and worker/command_errors.py): `main` maps
every command's errors to its exit code and one stderr line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.checkpoint import WEIGHTS_FILE
from model.errors import ExitCode
from model.store import CheckpointStore
from tests.helpers import make_checkpoint
from worker.cli import exit_code_of, main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "store")
    make_checkpoint(tmp_path / "a", 1)
    store.add(tmp_path / "a")
    return store


def test_checkpoints_errors_name_the_action_and_exit_with_their_code(
    store: CheckpointStore, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(store.root)
    code, _, err = run(capsys, "checkpoints", "rollback", "--store", root)
    assert code == ExitCode.FAILURE
    assert err.startswith("modstream checkpoints rollback: ") and "nothing to roll back" in err

    code, _, err = run(capsys, "checkpoints", "promote", "0123456789ab", "--store", root)
    assert code == ExitCode.USAGE
    assert err.startswith("modstream checkpoints: ") and "0123456789ab" in err  # a usage error
    assert err.count("\n") == 1


def test_promoting_a_version_that_does_not_load_exits_3(
    store: CheckpointStore, capsys: pytest.CaptureFixture[str]
) -> None:
    (version,) = [info.version for info in store.list()]
    weights = store.root / "versions" / version / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    code, out, err = run(capsys, "checkpoints", "promote", version, "--store", str(store.root))
    assert code == ExitCode.CHECKPOINT and out == ""
    assert err.startswith("modstream checkpoints promote: refusing, the checkpoint does not load: ")
    assert store.current_version() is None


def test_a_plain_checkpoint_directory_is_not_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_checkpoint(tmp_path / "plain", 1)
    code, _, err = run(capsys, "checkpoints", "list", "--store", str(tmp_path / "plain"))
    assert code == ExitCode.USAGE
    assert (
        err.startswith("modstream checkpoints: ") and "(--store / MODSTREAM_CHECKPOINT_DIR)" in err
    )


def test_retrain_reports_a_device_it_cannot_use_as_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "retrain", "--output", str(tmp_path / "out"), "--device", "tpu")
    assert code == ExitCode.USAGE
    summary = json.loads(out)
    assert summary["exit_code"] == ExitCode.USAGE and summary["status"] == "error"
    assert "--device tpu" in summary["error"]
    assert err == f"modstream retrain: {summary['error']}\n"
    assert not (tmp_path / "out").exists()


def test_only_modstream_errors_carry_their_own_exit_code() -> None:
    from model.store import NotAStoreError
    from worker.clients import BrokerUnavailableError

    assert exit_code_of(BrokerUnavailableError("down")) == ExitCode.BROKER
    assert exit_code_of(NotAStoreError("plain")) == ExitCode.USAGE
    assert exit_code_of(RuntimeError("bug")) == ExitCode.FAILURE
