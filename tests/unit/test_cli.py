"""worker/cli.py (with worker/store_commands.py and worker/command_errors.py): `main` maps
every command's errors to its exit code and one stderr line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from model.checkpoint import WEIGHTS_FILE
from model.errors import ExitCode
from model.store import CheckpointStore
from tests.helpers import make_checkpoint, synthetic_splits
from worker.cli import exit_code_of, main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`score` configures logging for the process: undo it for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.fixture
def no_training_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that must fail before training: loading the corpora is already too far."""

    def refuse() -> None:
        raise AssertionError("the command went on to load the training data")

    monkeypatch.setattr("model.data.load_splits", refuse)


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


@pytest.mark.usefixtures("no_training_data")
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


def broken_weights(directory: Path) -> None:
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])


def test_retrain_exits_1_when_training_fails_and_still_writes_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("model.data.load_splits", synthetic_splits)

    def training_fails(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("model.build.retrain", training_fails)
    code, out, err = run(capsys, "retrain", "--output", str(tmp_path / "out"))
    assert code == ExitCode.FAILURE
    summary = json.loads(out)
    assert summary["status"] == "error" and summary["exit_code"] == ExitCode.FAILURE
    assert summary["error"] == "OSError: [Errno 28] No space left on device"
    assert err.startswith(f"modstream retrain: {summary['error']}\n")
    assert "Traceback" in err, "an unexpected failure shows where it happened"


def test_retrain_exits_3_when_the_new_checkpoint_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint training wrote is refused by the store; nothing is promoted."""
    monkeypatch.setattr("model.data.load_splits", synthetic_splits)

    def writes_a_broken_checkpoint(output_dir: Path, *_: Any, **__: Any) -> None:
        make_checkpoint(Path(output_dir), 5)
        broken_weights(Path(output_dir))

    monkeypatch.setattr("model.refresh.retrain", writes_a_broken_checkpoint)
    root = tmp_path / "store"
    code, out, err = run(capsys, "retrain", "--store", str(root))
    assert code == ExitCode.CHECKPOINT
    summary = json.loads(out)
    assert summary["status"] == "error" and summary["exit_code"] == ExitCode.CHECKPOINT
    assert "weights" in summary["error"].lower()
    assert err == f"modstream retrain: {summary['error']}\n", "a known failure: no traceback"
    store = CheckpointStore(root)
    assert store.list() == [] and store.current_version() is None


# -- score ---------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    make_checkpoint(tmp_path / "ckpt", 3)
    return tmp_path / "ckpt"


def jsonl(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def score(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[Any], str]:
    code, out, err = run(capsys, "score", "--device", "cpu", *argv)
    return code, [json.loads(line) for line in out.splitlines()], err


def test_score_exits_0_when_every_line_is_a_valid_request(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = jsonl(tmp_path, '{"id": "a", "text": "you idiot"}', "", '{"id": "b", "text": "hi"}')
    code, out, err = score(capsys, source, "--checkpoint", str(checkpoint))
    assert code == ExitCode.OK, err
    assert [line["id"] for line in out] == ["a", "b"]
    assert err == ""


def test_score_exits_1_when_some_lines_are_invalid_and_still_answers_every_line(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = jsonl(tmp_path, '{"id": "a", "text": "hi"}', "{broken", '{"id": "c"}')
    code, out, err = score(capsys, source, "--checkpoint", str(checkpoint))
    assert code == ExitCode.FAILURE
    assert [line.get("id", line.get("error_kind")) for line in out] == [
        "a",
        "invalid_json",
        "missing_field",
    ]
    assert err.startswith("modstream score: 2 invalid input line(s)")


@pytest.mark.parametrize("bad", ["batch size", "missing file"])
def test_score_exits_2_for_bad_arguments(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    if bad == "batch size":
        argv = [jsonl(tmp_path, '{"id": "a", "text": "hi"}'), "--batch-size", "0"]
        message = "--batch-size must be ≥ 1, got 0"
    else:
        argv, message = [str(tmp_path / "missing.jsonl")], "does not exist"
    code, out, err = score(capsys, *argv, "--checkpoint", str(checkpoint))
    assert code == ExitCode.USAGE
    assert out == [] and err.startswith("modstream score: ") and message in err


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_score_exits_3_for_a_checkpoint_that_does_not_load(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    if problem == "missing":
        checkpoint = tmp_path / "nowhere"
    else:
        broken_weights(checkpoint)
    source = jsonl(tmp_path, '{"id": "a", "text": "hi"}')
    code, out, err = score(capsys, source, "--checkpoint", str(checkpoint))
    assert code == ExitCode.CHECKPOINT
    assert out == [] and err.startswith(f"modstream score: checkpoint {checkpoint}: ")
