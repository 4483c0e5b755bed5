"""Command-line failures name what is wrong and exit non-zero; `score` mirrors the worker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, free_port


def modstream(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_setting_exits_2_naming_the_field(tmp_path: Path) -> None:
    done = modstream("worker", "--max-batch-size", "0")
    assert done.returncode == 2
    assert "max_batch_size" in done.stderr and "--max-batch-size" in done.stderr

    done = modstream("worker", env={"MODSTREAM_DEVICE": "tpu"})
    assert done.returncode == 2
    assert "device" in done.stderr and "MODSTREAM_DEVICE" in done.stderr


def test_unknown_flag_is_a_usage_error() -> None:
    done = modstream("worker", "--no-such-flag")
    assert done.returncode == 2
    assert "--no-such-flag" in done.stderr


@pytest.mark.parametrize("scoring", ["in_process", "process"])
def test_missing_checkpoint_exits_3_naming_the_path(tmp_path: Path, scoring: str) -> None:
    missing = tmp_path / "nowhere"
    done = modstream("worker", "--checkpoint-dir", str(missing), "--scoring", scoring)
    assert done.returncode == 3
    assert str(missing) in done.stderr


@pytest.mark.parametrize("scoring", ["in_process", "process"])
def test_corrupt_checkpoint_exits_3(tiny_checkpoint: Path, tmp_path: Path, scoring: str) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((tiny_checkpoint / "model.json").read_text())
    weights = (tiny_checkpoint / "weights.safetensors").read_bytes()
    (broken / "weights.safetensors").write_bytes(weights[: len(weights) // 2])
    done = modstream("worker", "--checkpoint-dir", str(broken), "--scoring", scoring)
    assert done.returncode == 3
    assert "weights" in done.stderr.lower()


def test_unreachable_broker_exits_4(tiny_checkpoint: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    done = modstream(
        "worker",
        "--checkpoint-dir",
        str(tiny_checkpoint),
        "--kafka-bootstrap",
        bootstrap,
        "--startup-timeout-s",
        "2",
        "--metrics-port",
        "0",
        env={"MODSTREAM_KAFKA_BOOTSTRAPS": "typo:9092", "MODSTREAM_SASL_PASSWORD": "hunter2"},
    )
    assert done.returncode == 4, done.stderr
    *logged, last = done.stderr.splitlines()
    assert last.startswith(f"modstream worker: no usable Kafka broker at '{bootstrap}'")
    assert last.endswith("nothing accepts TCP connections there")
    records = [json.loads(line) for line in logged]
    assert not [r for r in records if r.get("logger", "").startswith("kafka")], "client flood"
    (warning,) = [r for r in records if r["event"] == "unknown_variable"]
    assert warning["variable"] == "MODSTREAM_KAFKA_BOOTSTRAPS"
    assert warning["did_you_mean"] == "MODSTREAM_KAFKA_BOOTSTRAP"
    (settings,) = [r for r in records if r["event"] == "settings"]
    assert settings["kafka_bootstrap"] == bootstrap and settings["metrics_port"] == 0
    assert settings["sasl_password"] == "**********" and "hunter2" not in done.stderr


def test_a_broker_name_that_does_not_resolve_is_said_in_one_line(tiny_checkpoint: Path) -> None:
    done = modstream(
        "worker",
        "--checkpoint-dir",
        str(tiny_checkpoint),
        "--kafka-bootstrap",
        "no-such-broker.invalid:9092",
        "--startup-timeout-s",
        "2",
        "--metrics-port",
        "0",
    )
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines()[-1].endswith(
        "no-such-broker.invalid does not resolve (DNS): check the host name"
    )
    assert "kafka.net" not in done.stderr


def test_a_metrics_port_in_use_exits_2_naming_the_setting(tiny_checkpoint: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = modstream(
            "worker",
            "--checkpoint-dir",
            str(tiny_checkpoint),
            "--metrics-host",
            "127.0.0.1",
            env={"MODSTREAM_METRICS_PORT": str(port)},
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"modstream worker: metrics port {port} on 127.0.0.1 is already in use "
        "(--metrics-port / MODSTREAM_METRICS_PORT; 0 picks a free port)"
    )
    assert "Traceback" not in done.stderr


def test_score_writes_one_line_per_input_in_order(tiny_checkpoint: Path) -> None:
    lines = [
        json.dumps({"id": f"s{n}", "text": text})
        for n, text in enumerate(["hello", "you idiot", "WIN a prize, call now", "ok"])
    ]
    lines.insert(2, "{broken")
    done = modstream("score", "--checkpoint", str(tiny_checkpoint), stdin="\n".join(lines) + "\n")
    assert done.returncode == 1  # one invalid line
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == 5
    assert [o.get("id") for o in out] == ["s0", "s1", None, "s2", "s3"]
    assert out[2]["error_kind"] == "invalid_json" and out[2]["line"] == 3
    assert all(
        set(o["category_scores"]) == {"insult", "spam"} for o in out if "error_kind" not in o
    )


# -- score, through the real entry point -----------------------------------------------


def test_score_reads_plain_text_and_prints_a_table(tiny_checkpoint: Path) -> None:
    done = modstream(
        "score",
        "--checkpoint",
        str(tiny_checkpoint),
        "--input-format",
        "text",
        "--format",
        "table",
        stdin="\ufeffyou idiot\n\nWIN a prize, call now\n",
    )
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["LINE", "ID", "FLAGGED", "INSULT", "SPAM"]
    assert [row.split()[:2] for row in rows] == [["1", "line-1"], ["3", "line-3"]]


def test_score_reads_csv_and_writes_csv(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = tmp_path / "comments.csv"
    source.write_text('id,text\nc1,"you\nidiot"\nc2,\n', encoding="utf-8")
    done = modstream(
        "score",
        str(source),
        "--checkpoint",
        str(tiny_checkpoint),
        "--input-format",
        "csv",
        "--format",
        "csv",
    )
    assert done.returncode == 1  # c2 has no text
    rows = done.stdout.splitlines()
    assert rows[0] == "line,id,flagged,insult,spam,error_kind,error_message"
    assert rows[1].startswith("2,c1,")
    assert rows[2].startswith("4,c2,,,,empty_text,")
    assert "1 of 2 message(s) not scored (empty_text 1)" in done.stderr


def test_score_hints_at_the_input_format_when_no_line_is_json(tiny_checkpoint: Path) -> None:
    done = modstream("score", "--checkpoint", str(tiny_checkpoint), stdin="hello\nthere\n")
    assert done.returncode == 1
    assert "pass --input-format text or csv" in done.stderr
    assert [json.loads(line)["line"] for line in done.stdout.splitlines()] == [1, 2]


@pytest.mark.integration
def test_score_streams_each_batch_while_the_input_is_still_open(tiny_checkpoint: Path) -> None:
    """A slow pipe: the first result must arrive while stdin is still open, not at
    256 lines or at the end of input."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "score", "--checkpoint", str(tiny_checkpoint)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps({"id": "first", "text": "hello"}) + "\n")
        proc.stdin.flush()
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout=90)
        assert lines and json.loads(lines[0])["id"] == "first", "no result while stdin is open"
        assert proc.poll() is None, "score exited before its input ended"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0


@pytest.mark.integration
def test_score_into_a_closed_pipe_exits_0_without_a_traceback(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`modstream score big.jsonl | head -1`."""
    source = tmp_path / "many.txt"
    source.write_text("".join(f"message number {n}\n" for n in range(5000)))
    done = subprocess.run(
        f"{sys.executable} -m worker.cli score {source} --input-format text "
        f"--checkpoint {tiny_checkpoint} | head -1",
        shell=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        executable="/bin/bash",
    )
    assert json.loads(done.stdout)["id"] == "line-1"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    status = subprocess.run(
        f"set -o pipefail; {sys.executable} -m worker.cli score {source} --input-format text "
        f"--checkpoint {tiny_checkpoint} | head -1 >/dev/null",
        shell=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        executable="/bin/bash",
    )
    assert status.returncode == 0, status.stderr
