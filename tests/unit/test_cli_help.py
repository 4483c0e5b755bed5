"""The command line a newcomer meets first: help for every command, `--version`, and
argument errors that answer at once (no torch import: it took 2.3 s) naming the flag.

These run the real entry point (`python -m worker.cli`) in a subprocess; none loads a
model, so each takes a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import typing

import pytest

from tests.helpers import REPO_ROOT
from worker.train_flags import TRAIN_FLAGS

COMMANDS = [
    ["worker"],
    ["score"],
    ["retrain"],
    ["checkpoints"],
    ["checkpoints", "list"],
    ["checkpoints", "promote"],
    ["checkpoints", "rollback"],
    ["checkpoints", "wait"],
    ["checkpoints", "policy"],
    ["checkpoints", "policy", "set"],
    ["checkpoints", "policy", "clear"],
]


def modstream(
    *args: str, env: dict[str, str] | None = None, importtime: bool = False
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODSTREAM_")}
    return subprocess.run(
        [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "worker.cli", *args],
        cwd=REPO_ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def imported(stderr: str) -> set[str]:
    """Module names from `python -X importtime` lines."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def messages(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_a_description_an_example_and_its_exit_codes(
    command: list[str],
) -> None:
    done = modstream(*command, "--help", importtime=True)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert "example" in text and "exit codes:" in text
    assert "default: None" not in text and " VALUE" not in text
    assert "torch" not in imported(done.stderr), "help must not wait for torch"


def test_worker_help_shows_defaults_choices_units_and_the_env_only_password() -> None:
    text = " ".join(modstream("worker", "--help").stdout.split())
    assert "--max-batch-size N Close a batch at this many records (default: 512)" in text
    assert "--device {auto,cpu,cuda}" in text
    assert "--max-batch-wait-ms MS" in text and "--startup-timeout-s SECONDS" in text
    assert "[env MODSTREAM_METRICS_PORT]" in text
    assert "MODSTREAM_SASL_PASSWORD and MODSTREAM_SSL_KEY_PASSWORD in the environment only" in text
    assert not re.search(r"--sasl-password(?!-file)", text), "no password flag"


def test_score_help_names_the_formats_and_their_defaults() -> None:
    text = " ".join(modstream("score", "--help").stdout.split())
    assert "--input-format {jsonl,text,csv}" in text and "--format {jsonl,table,csv}" in text
    assert "--torch-threads N" in text and "(default: 1," in text
    assert "header row naming a 'text' column" in text


def test_retrain_help_describes_each_training_flag_with_its_default() -> None:
    text = " ".join(modstream("retrain", "--help").stdout.split())
    assert "--dropout X dropout probability (default: 0.3)" in text
    assert "--rnn {lstm,gru}" in text and "--bidirectional, --no-bidirectional" in text


def test_version() -> None:
    done = modstream("--version")
    assert done.returncode == 0
    assert re.fullmatch(r"modstream \d+\.\d+\.\d+\S*\n", done.stdout)


def test_parsing_every_command_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from worker.cli import build_parser\n"
        "for argv in (['worker'], ['score', 'x'], ['retrain', '--epochs', '2'],\n"
        "             ['checkpoints', 'promote', 'v1']):\n"
        "    build_parser().parse_args(argv)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--dropout", "7", "--dropout must be in [0, 1), got 7"),
        ("--epochs", "-1", "--epochs must be >= 1, got -1"),
        ("--lr", "-3", "--lr must be > 0, got -3"),
        ("--glove-vocab", "30000", "--glove-vocab must be in [0, 20000], got 30000"),
        ("--feedback-weight", "0", "--feedback-weight must be >= 1, got 0"),
        ("--gate-tolerance", "nan", "--gate-tolerance must be in [-1, 1]"),
    ],
)
def test_retrain_checks_every_argument_before_reading_data(
    flag: str, value: str, says: str, tmp_path: object
) -> None:
    done = modstream("retrain", "--output", f"{tmp_path}/out", flag, value, importtime=True)
    assert done.returncode == 2
    assert says in messages(done.stderr)
    summary = json.loads(done.stdout)
    assert summary["exit_code"] == 2 and says in summary["error"]
    loaded = imported(done.stderr)
    assert "model.data" not in loaded and "torch" not in loaded, "checked before any data"


def test_retrain_names_every_bad_argument_at_once(tmp_path: object) -> None:
    done = modstream("retrain", "--output", f"{tmp_path}/out", "--epochs", "0", "--lr", "0")
    assert done.returncode == 2
    assert "--epochs must be >= 1" in done.stderr and "--lr must be > 0" in done.stderr


def test_a_bad_worker_setting_is_reported_before_torch_loads() -> None:
    done = modstream("worker", "--max-batch-size", "0", importtime=True)
    assert done.returncode == 2
    assert "--max-batch-size / MODSTREAM_MAX_BATCH_SIZE" in messages(done.stderr)
    assert "torch" not in imported(done.stderr)


def test_a_missing_sasl_password_is_named_as_environment_only() -> None:
    done = modstream(
        "worker",
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "PLAIN",
        "--sasl-username",
        "alice",
    )
    assert done.returncode == 2
    assert "MODSTREAM_SASL_PASSWORD (environment only)" in done.stderr
    assert not re.search(r"--sasl-password(?!-file)", done.stderr)


def test_the_training_flag_table_matches_train_config() -> None:
    """worker/train_flags.py describes TrainConfig without importing torch: it must
    have the same fields, defaults, types and choices, or the flags would lie."""
    from model.train_config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert [spec.name for spec in TRAIN_FLAGS] == list(fields)
    for spec in TRAIN_FLAGS:
        hint = hints[spec.name]
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = type(None) in typing.get_args(hint)
        inner = options[0] if optional else hint
        assert spec.default == fields[spec.name].default, spec.name
        assert spec.optional == optional, spec.name
        if typing.get_origin(inner) is typing.Literal:
            assert spec.choices == typing.get_args(inner), spec.name
            assert spec.kind is str
        else:
            assert spec.kind is inner and not spec.choices, spec.name
        if spec.valid is not None and spec.default is not None:
            assert spec.problem(spec.default) is None, f"{spec.name}: default out of range"


def test_score_checks_its_paths_before_loading_a_model(tmp_path: object) -> None:
    for target, says in (
        (f"{tmp_path}/missing.jsonl", "does not exist"),
        (str(tmp_path), "is a directory"),
    ):
        done = modstream("score", target, importtime=True)
        assert done.returncode == 2 and says in messages(done.stderr)
        assert "torch" not in imported(done.stderr)
    done = modstream("score", "--checkpoint", f"{tmp_path}/nowhere", "-", importtime=True)
    assert done.returncode == 3
    assert "train one with `modstream retrain`" in messages(done.stderr)
    assert "torch" not in imported(done.stderr)


def test_score_refuses_a_csv_without_a_text_column_before_loading_a_model(tmp_path: object) -> None:
    source = f"{tmp_path}/in.csv"
    with open(source, "w", encoding="utf-8") as file:
        file.write("id,comment\n1,hello\n")
    done = modstream("score", source, "--input-format", "csv", importtime=True)
    assert done.returncode == 2
    assert "needs a header row naming a 'text' column" in messages(done.stderr)
    assert "torch" not in imported(done.stderr)
