"""Command-line failures name what is wrong and exit non-zero; `score` mirrors the worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_missing_checkpoint_exits_3_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = modstream("worker", "--checkpoint-dir", str(missing))
    assert done.returncode == 3
    assert str(missing) in done.stderr


def test_corrupt_checkpoint_exits_3(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((tiny_checkpoint / "model.json").read_text())
    weights = (tiny_checkpoint / "weights.safetensors").read_bytes()
    (broken / "weights.safetensors").write_bytes(weights[: len(weights) // 2])
    done = modstream("worker", "--checkpoint-dir", str(broken))
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
    )
    assert done.returncode == 4, done.stderr
    assert bootstrap in done.stderr


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
    assert out[2]["error_kind"] == "invalid_json"
    assert all(set(o["category_scores"]) == {"insult", "spam"} for o in out if "id" in o)
