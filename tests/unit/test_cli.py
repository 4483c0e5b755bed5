"""worker/cli.py (with worker/retrain_command.py, worker/checkpoint_commands.py and
worker/command_errors.py): `main` maps every command's errors to its exit code and one
stderr line."""

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


@pytest.mark.parametrize(
    ("flags", "expected"),
    [((), ExitCode.HELD), (("--succeed-if-held",), ExitCode.OK)],
)
def test_a_held_candidate_exits_10_or_0_with_succeed_if_held(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...],
    expected: ExitCode,
) -> None:
    """A Kubernetes Job retries any non-zero exit, so the CronJob maps "the gate kept the
    current model" to 0; the summary still says held, and nothing is promoted."""
    from tests.unit.test_model_refresh import FixedTraining

    monkeypatch.setattr("model.data.load_splits", synthetic_splits)
    store = CheckpointStore(tmp_path / "store")
    # A candidate that drops a serving label: the gate holds whatever its AUC.
    make_checkpoint(tmp_path / "serving", 1, labels=("insult", "spam", "threat"))
    current = store.add(tmp_path / "serving")
    store.promote(current)
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=2, auc=0.99))
    code, out, _ = run(capsys, "retrain", "--store", str(store.root), *flags)
    summary = json.loads(out)
    assert code == expected and summary["exit_code"] == expected
    assert summary["status"] == "held" and "removes threat" in summary["reason"]
    assert store.current_version() == current
    assert summary["version"] in store.versions(), "the candidate stays, promotable by hand"


def test_retrain_allow_label_change_lets_the_gate_promote_a_removal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_model_refresh import FixedTraining

    monkeypatch.setattr("model.data.load_splits", synthetic_splits)
    store = CheckpointStore(tmp_path / "store")
    make_checkpoint(tmp_path / "serving", 1, labels=("insult", "spam", "threat"))
    store.promote(store.add(tmp_path / "serving"))
    monkeypatch.setattr("model.refresh.retrain", FixedTraining(seed=2, auc=0.99))
    argv = ("retrain", "--store", str(store.root), "--allow-label-change")
    code, out, _ = run(capsys, *argv)
    summary = json.loads(out)
    assert code == ExitCode.OK and summary["status"] == "promoted", summary["reason"]
    assert store.current_version() == summary["version"]
    assert store.history()[-1]["labels_removed"] == ["threat"]


# -- checkpoints: label changes and the policy ----------------------------------------


def serving_store(tmp_path: Path, labels: tuple[str, ...] = ("insult", "spam")) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "store")
    make_checkpoint(tmp_path / "serving", 1, labels=labels)
    store.promote(store.add(tmp_path / "serving"))
    return store


def add_version(store: CheckpointStore, tmp_path: Path, seed: int, *labels: str) -> str:
    make_checkpoint(tmp_path / f"v{seed}", seed, labels=labels)
    return store.add(tmp_path / f"v{seed}")


def test_promote_takes_added_labels_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = serving_store(tmp_path)
    wider = add_version(store, tmp_path, 2, "insult", "spam", "threat")
    code, out, _ = run(capsys, "checkpoints", "promote", wider, "--store", str(store.root))
    assert code == ExitCode.OK and store.current_version() == wider
    assert "labels added: threat;" in out
    event = store.history()[-1]
    assert (event["version"], event["labels_added"], event["labels_removed"]) == (
        wider,
        ["threat"],
        [],
    )


@pytest.mark.parametrize("labels", [("insult",), ("insult", "scam")])  # a removal, a rename
def test_promote_refuses_removed_labels_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: tuple[str, ...]
) -> None:
    store = serving_store(tmp_path)
    current = store.current_version()
    narrower = add_version(store, tmp_path, 2, *labels)
    argv = ("checkpoints", "promote", narrower, "--store", str(store.root))
    code, out, err = run(capsys, *argv)
    assert code == ExitCode.USAGE and out == ""
    assert err.startswith(f"modstream checkpoints: version {narrower} (against the current ")
    assert "removes label(s) spam" in err and "--allow-label-change" in err
    assert store.current_version() == current and store.history()[-1]["version"] == current

    code, out, _ = run(capsys, *argv, "--allow-label-change")
    assert code == ExitCode.OK and store.current_version() == narrower
    assert "labels removed: spam" in out
    assert store.history()[-1]["labels_removed"] == ["spam"]


def test_policy_set_list_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = serving_store(tmp_path)
    root = str(store.root)
    policy = tmp_path / "strict.json"
    policy.write_text(
        json.dumps({"version": "strict-1", "description": "tighter", "thresholds": {"spam": 0.9}})
    )
    code, out, _ = run(capsys, "checkpoints", "list", "--store", root)
    assert code == 0 and out.splitlines()[-1] == "policy: none (each version's own thresholds)"
    assert "insult,spam" in out, "each version's labels are listed"

    code, out, _ = run(capsys, "checkpoints", "policy", "set", str(policy), "--store", root)
    assert code == 0 and out.startswith("policy strict-1 (was none)")
    code, out, _ = run(capsys, "checkpoints", "list", "--store", root)
    assert out.splitlines()[-1] == "policy: strict-1 (spam=0.9) - tighter"
    code, out, _ = run(capsys, "checkpoints", "list", "--json", "--store", root)
    document = json.loads(out)
    assert document["policy"] == {
        "version": "strict-1",
        "description": "tighter",
        "thresholds": {"spam": 0.9},
    }
    assert document["policy_problem"] is None
    assert document["versions"][0]["labels"] == ["insult", "spam"]

    code, out, _ = run(capsys, "checkpoints", "policy", "clear", "--store", root)
    assert code == 0 and out.startswith("no policy (each version's own thresholds) (was strict-1)")
    assert (
        json.loads(run(capsys, "checkpoints", "list", "--json", "--store", root)[1])["policy"]
        is None
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('{"version": "v1", "thresholds": {"spam": 1.5}}', "thresholds.spam"),
        ('{"version": "v1", "thresholds": {"threat": 0.5}}', "sets thresholds for threat"),
        ("not json", "not JSON"),
    ],
)
def test_policy_set_refuses_a_bad_file_with_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, problem: str
) -> None:
    store = serving_store(tmp_path)
    policy = tmp_path / "p.json"
    policy.write_text(body)
    argv = ("checkpoints", "policy", "set", str(policy), "--store", str(store.root))
    code, _, err = run(capsys, *argv)
    assert code == ExitCode.USAGE and err.startswith("modstream checkpoints: ")
    assert problem in err and str(policy) in err
    assert not (store.root / "policy.json").exists()


def test_promote_refuses_a_version_the_policy_cannot_apply_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = serving_store(tmp_path)
    policy = tmp_path / "p.json"
    policy.write_text('{"version": "v1", "thresholds": {"spam": 0.9}}')
    run(capsys, "checkpoints", "policy", "set", str(policy), "--store", str(store.root))
    narrower = add_version(store, tmp_path, 2, "insult")
    argv = ("checkpoints", "promote", narrower, "--allow-label-change")
    code, _, err = run(capsys, *argv, "--store", str(store.root))
    assert code == ExitCode.USAGE and "policy v1 (policy.json) sets thresholds for spam" in err


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
    assert [line.get("error_kind") or line["id"] for line in out] == [
        "a",
        "invalid_json",
        "missing_field",
    ]
    assert err.startswith("modstream score: 2 of 3 message(s) not scored")


@pytest.mark.parametrize("bad", ["batch size", "missing file"])
def test_score_exits_2_for_bad_arguments(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    if bad == "batch size":
        argv = [jsonl(tmp_path, '{"id": "a", "text": "hi"}'), "--batch-size", "0"]
        message = "--batch-size must be >= 1, got 0"
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
    assert out == [] and err.startswith(f"modstream score: checkpoint {checkpoint}")


@pytest.mark.parametrize(
    "action", [["list"], ["list", "--json"], ["promote", "0123456789ab"], ["rollback"]]
)
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_path_that_is_not_a_store_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: list[str], state: str
) -> None:
    typo = tmp_path / "typo"
    if state == "empty":
        typo.mkdir()
    code, out, err = run(capsys, "checkpoints", *action, "--store", str(typo))
    assert code == ExitCode.USAGE and out == ""
    assert err.startswith("modstream checkpoints: no checkpoint store at ")
    assert str(typo) in err and "--store" in err
    if state == "missing":
        assert not typo.exists()
    else:
        assert list(typo.iterdir()) == [], "no .lock, no versions/"


def test_the_default_store_is_named_by_its_variable_when_it_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODSTREAM_CHECKPOINT_DIR", str(tmp_path / "nothing" / "current"))
    code, _, err = run(capsys, "checkpoints", "list")
    assert code == ExitCode.USAGE and "MODSTREAM_CHECKPOINT_DIR" in err
    assert "`modstream retrain` creates one" in err
    assert not (tmp_path / "nothing").exists()


def test_a_legacy_plain_current_checkpoint_is_listed_and_its_root_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a fresh clone has after `make demo`: `checkpoints/current/` is a plain
    checkpoint directory. Naming the root or its `current` lists it as current."""
    version = make_checkpoint(tmp_path / "checkpoints" / "current", 1)
    for store in (tmp_path / "checkpoints", tmp_path / "checkpoints" / "current"):
        code, out, _ = run(capsys, "checkpoints", "list", "--store", str(store))
        assert code == ExitCode.OK
        (row,) = [line for line in out.splitlines() if version in line]
        assert row.startswith("* ") and "current" in row and "plain directory" in row

        code, out, _ = run(capsys, "checkpoints", "list", "--json", "--store", str(store))
        document = json.loads(out)
        assert document["current"] == version
        assert [(v["version"], v["current"], v["legacy"]) for v in document["versions"]] == [
            (version, True, True)
        ]
    assert not (tmp_path / "checkpoints" / "versions").exists(), "listing changes nothing"


def test_the_store_root_of_a_legacy_checkpoint_loads_as_a_checkpoint(tmp_path: Path) -> None:
    from model.checkpoint import load_checkpoint

    version = make_checkpoint(tmp_path / "checkpoints" / "current", 1)
    assert load_checkpoint(tmp_path / "checkpoints").version == version


def test_promoting_in_a_legacy_store_root_adopts_its_current_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "checkpoints"
    legacy = make_checkpoint(root / "current", 1)
    make_checkpoint(tmp_path / "new", 2)
    added = CheckpointStore(root).add(tmp_path / "new")
    code, out, _ = run(capsys, "checkpoints", "promote", added, "--store", str(root))
    assert code == ExitCode.OK and f"(was {legacy})" in out
    code, out, _ = run(capsys, "checkpoints", "rollback", "--store", str(root))
    assert code == ExitCode.OK and f"current is now {legacy}" in out


def test_checkpoints_wait_returns_once_the_first_model_appears(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a worker pod's init container does on a fresh install."""
    import threading

    from tests.helpers import wait_for

    target = tmp_path / "checkpoints" / "current"
    codes: list[int] = []
    argv = ["checkpoints", "wait", "--checkpoint", str(target), "--interval-s", "0.05"]
    waiter = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    waiter.start()
    seen: list[str] = []

    def said_waiting() -> bool:
        seen.append(capsys.readouterr().err)
        return "waiting for the first model at" in "".join(seen)

    wait_for(said_waiting, 30, "the waiting line")
    assert not codes, "returned before there was a model"
    version = make_checkpoint(target, 1)
    waiter.join(timeout=30)
    assert codes == [ExitCode.OK]
    assert f"model {version} is ready at {target}" in capsys.readouterr().out


def test_checkpoints_wait_fails_at_once_on_a_checkpoint_that_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_checkpoint(tmp_path / "current", 1)
    weights = tmp_path / "current" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run(capsys, "checkpoints", "wait", "--checkpoint", str(tmp_path / "current"))
    assert code == ExitCode.CHECKPOINT and "is there but does not load" in err


def test_checkpoints_wait_gives_up_after_its_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "checkpoints",
        "wait",
        "--checkpoint",
        str(tmp_path / "never"),
        "--interval-s",
        "0.01",
        "--timeout-s",
        "0.05",
    )
    assert code == ExitCode.CHECKPOINT
    assert err.splitlines()[-1].startswith("modstream checkpoints wait: no model at ")


@pytest.mark.parametrize("where", ["output", "store"])
def test_retrain_if_missing_does_nothing_when_a_model_is_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: CheckpointStore, where: str
) -> None:
    if where == "output":
        make_checkpoint(tmp_path / "out", 3)
        argv = ["retrain", "--output", str(tmp_path / "out"), "--if-missing"]
    else:
        store.promote(store.versions()[0])
        argv = ["retrain", "--store", str(store.root), "--if-missing"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, _ = run(capsys, *argv)
    summary = json.loads(out)
    assert code == ExitCode.OK and summary["status"] == "skipped"
    assert "a model is already there" in summary["reason"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing written"


@pytest.mark.parametrize("threads", [1, 3])
def test_score_sets_the_torch_threads_it_is_given(tmp_path: Path, threads: int) -> None:
    import torch

    from worker.score_command import _load_engine

    make_checkpoint(tmp_path / "current", 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _load_engine(tmp_path / "current", "cpu", threads)
        assert torch.get_num_threads() == threads
        _load_engine(tmp_path / "current", "cpu", 0)  # 0 leaves torch's setting alone
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
