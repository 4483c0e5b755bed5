"""The README's worked example, end to end on the real broker: a three-label file the
bundled corpora lack, `retrain --data --label-spec --no-bundled` into an empty store
(promoted), served by a worker whose results and metrics carry the new categories; a
store policy that flips `flagged` without a new model; a worker pinned by
`MODSTREAM_THRESHOLDS`. And a store serving insult/spam takes the new taxonomy only
with `--allow-label-change`.

The commands and the files come from the README block (`worked_example`), so the block
stays runnable; the test replaces its `kcat` lines by a Kafka client and writes the
policy file with a threshold from the scores it observed (the README shows those of
one run). Measured: 38-55 s on a shared, busy 2-core machine (the retrain 13 s of it), plus
7-11 s for the session's broker when it is the first test to need one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from model.store import CheckpointStore
from tests.helpers import (
    REPO_ROOT,
    Consumed,
    TopicReader,
    WorkerProcess,
    make_checkpoint,
    produce,
    wait_for,
    worker_env,
)
from tests.user_files import USER_LABELS

pytestmark = pytest.mark.integration

SECTION = "### Worked example: your own labels, end to end"
#: The label the README's policy tightens: its checkpoint threshold is the label spec's
#: fixed 0.35, whatever training gives, so the pinned worker's value is known.
LABEL = "self_harm"
SPEC_THRESHOLD = 0.35


@dataclass
class WorkedExample:
    """The README block: its commands (env assignments apart) and its here-documents."""

    commands: list[tuple[dict[str, str], list[str]]]
    files: dict[str, str]

    def command(self, prefix: str, nth: int = 0) -> tuple[dict[str, str], list[str]]:
        """The `nth` command whose words start with `prefix`."""
        found = [(env, argv) for env, argv in self.commands if " ".join(argv).startswith(prefix)]
        assert len(found) > nth, f"the README's worked example has no `{prefix}` command"
        return found[nth]


def worked_example() -> WorkedExample:
    """Parses the first ```bash block after SECTION: continuation lines joined, comments
    and blank lines skipped, `cat > FILE <<'TAG'` here-documents collected as files, a
    trailing `&` dropped, leading NAME=VALUE words taken as the command's environment."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(SECTION + "\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    lines = iter(block.replace("\\\n", " ").splitlines())
    commands: list[tuple[dict[str, str], list[str]]] = []
    files: dict[str, str] = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = re.fullmatch(r"cat > (\S+) <<'(\w+)'", line.strip())
        if heredoc:
            name, tag = heredoc.groups()
            body = []
            for inner in lines:
                if inner == tag:
                    break
                body.append(inner)
            files[name] = "\n".join(body) + "\n"
            continue
        words = shlex.split(line.removesuffix("&").strip())
        env = {}
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        commands.append((env, words))
    return WorkedExample(commands, files)


def run(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A README command in `cwd`: `modstream` and `python` are this interpreter, and
    the checkout's packages (tests/ included) come first."""
    program = {"modstream": [sys.executable, "-m", "worker.cli"], "python": [sys.executable]}
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [*program[argv[0]], *argv[1:]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def readme_worker(
    bootstrap: str, topics: dict[str, str], cwd: Path, env: dict[str, str], name: str
) -> WorkerProcess:
    """`modstream worker` with the README line's MODSTREAM_* variables (paths in `cwd`),
    on the test's broker and topics; not waited for."""
    settings = {k.removeprefix("MODSTREAM_").lower(): v for k, v in env.items()}
    checkpoint = cwd / settings.pop("checkpoint_dir")
    return WorkerProcess(
        worker_env(bootstrap, topics, checkpoint, f"g-{name}-{os.getpid()}", **settings),
        cwd / f"{name}.log",
    )


def send(bootstrap: str, topic: str, requests: list[dict[str, str]], suffix: str = "") -> None:
    """What `kcat -P -l messages.jsonl` does: one record per request, keyed by its id."""
    produce(
        bootstrap,
        topic,
        [
            (r["id"].encode() + suffix.encode(), json.dumps({**r, "id": r["id"] + suffix}).encode())
            for r in requests
        ],
    )


def by_id(records: list[Consumed]) -> dict[str, dict[str, Any]]:
    return {r.value["id"]: r.value for r in records}


def stricter_threshold(score: float) -> float:
    """The next multiple of 0.05 strictly above `score`: the borderline message's flag
    goes, and a reader of the README can redo the choice."""
    threshold = (math.floor(score * 20) + 1) / 20
    assert score < threshold <= 1.0, f"no threshold above {score} flips it"
    return threshold


def test_the_readme_worked_example_trains_serves_and_retunes_three_labels_of_its_own(
    kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    example = worked_example()
    requests = [json.loads(line) for line in example.files["messages.jsonl"].splitlines()]
    texts = {r["id"]: r["text"] for r in requests}

    # 1. The generated file and label spec.
    _, generate = example.command("python -m tests.user_files")
    done = run(tmp_path, generate)
    assert done.returncode == 0, done.stderr
    for name in generate[3:]:
        assert (tmp_path / name).stat().st_size > 0, name

    # 2. Retrain into an empty store: promoted, in the spec's labels.
    _, retrain = example.command("modstream retrain")
    done = run(tmp_path, retrain)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    summary = json.loads(line)
    assert summary["status"] == "promoted" and summary["previous"] is None, summary
    assert summary["data"]["bundled"] is False
    assert summary["data"]["labels"] == list(USER_LABELS)
    version = summary["version"]
    store_dir = tmp_path / retrain[retrain.index("--store") + 1]
    store = CheckpointStore(store_dir)
    assert store.current_version() == version
    _, listing = example.command("modstream checkpoints list")
    listed = run(tmp_path, listing)
    assert listed.returncode == 0, listed.stderr
    (row,) = [ln for ln in listed.stdout.splitlines() if version in ln]
    assert row.startswith("*") and "harassment,scam,self_harm" in row and "current" in row

    # 3. Serve it. While the worker starts: the same version into a store serving the
    #    bundled labels needs --allow-label-change (it removes insult and spam).
    topics = make_topics(partitions=1)
    serve_env, serve = example.command("modstream worker")
    assert serve == ["modstream", "worker"] and "MODSTREAM_THRESHOLDS" not in serve_env
    worker = readme_worker(kafka_bootstrap, topics, tmp_path, serve_env, "worker")
    try:
        bundled = CheckpointStore(tmp_path / "bundled-store")
        make_checkpoint(tmp_path / "insult-spam", 1)
        bundled.promote(bundled.add(tmp_path / "insult-spam"))
        assert bundled.add(store.versions_dir / version) == version
        promote = ["modstream", "checkpoints", "promote", version, "--store", str(bundled.root)]
        refused = run(tmp_path, promote)
        assert refused.returncode == 2, refused.stderr
        assert "removes label(s) insult, spam" in refused.stderr
        allowed = run(tmp_path, [*promote, "--allow-label-change"])
        assert allowed.returncode == 0, allowed.stderr
        assert "labels added: harassment, scam, self_harm; labels removed: insult, spam" in (
            allowed.stdout
        )
        assert bundled.current_version() == version

        worker.wait_ready(timeout_s=120)
        reader = TopicReader(kafka_bootstrap, topics["output"])
        send(kafka_bootstrap, topics["input"], requests)
        first = by_id(reader.read_until(len(requests), timeout_s=60))
        assert sorted(first) == sorted(texts)
        for result in first.values():
            assert result["model_version"] == version
            assert list(result["category_scores"]) == list(USER_LABELS), result
            assert list(result["categories"]) == list(USER_LABELS), result
            assert result["policy_version"] == "checkpoint"
        checkpoint_cut = worker.metric("modstream_category_threshold", category=LABEL)
        assert checkpoint_cut == SPEC_THRESHOLD, "the spec's fixed threshold is served"

        def scored_everything() -> bool:
            return all(
                worker.metric("modstream_category_score_count", category=label) == len(requests)
                for label in USER_LABELS
            )

        wait_for(scored_everything, 30, "one score per message and category in /metrics")
        for label in USER_LABELS:
            flagged = sum(result["categories"][label] for result in first.values())
            assert worker.metric("modstream_flagged_total", category=label) == flagged, label
        _, metrics = worker.get("/metrics")
        assert 'category="insult"' not in metrics and 'category="spam"' not in metrics

        # 4. The borderline flag: the lowest LABEL score the spec's cut flags.
        flagged_scores = {
            message_id: result["category_scores"][LABEL]
            for message_id, result in first.items()
            if result["categories"][LABEL]
        }
        assert flagged_scores, f"no message flagged {LABEL}: {first}"
        borderline = min(flagged_scores, key=flagged_scores.__getitem__)
        score = flagged_scores[borderline]
        threshold = stricter_threshold(score)
        policy_version = f"self-harm-{threshold:g}"
        _, policy_set = example.command("modstream checkpoints policy set")
        policy_file = tmp_path / policy_set[4]
        assert policy_set[4] in example.files, "the README shows the policy file it sets"
        shown = json.loads(example.files[policy_set[4]])
        assert list(shown["thresholds"]) == [LABEL], "the README tightens LABEL"
        policy_file.write_text(
            json.dumps({"version": policy_version, "thresholds": {LABEL: threshold}})
        )
        done = run(tmp_path, policy_set)
        assert done.returncode == 0, done.stderr
        _, listing = example.command("modstream checkpoints list", nth=1)
        listed = run(tmp_path, listing)
        assert f"policy: {policy_version} ({LABEL}={threshold:g})" in listed.stdout

        copies = 0

        def a_copy_under_the_new_policy() -> dict[str, Any] | None:
            """Sends the borderline message again; the newest copy's result once it
            carries the new policy."""
            nonlocal copies
            copies += 1
            sent = f"-copy-{copies}"
            send(
                kafka_bootstrap,
                topics["input"],
                [{"id": borderline, "text": texts[borderline]}],
                sent,
            )
            answered = by_id(reader.read_until(len(requests) + copies, timeout_s=30))
            result = answered[borderline + sent]
            return result if result["policy_version"] == policy_version else None

        flipped = wait_for(a_copy_under_the_new_policy, 60, "a result under the new policy", 0.2)
        assert flipped["category_scores"][LABEL] == score, "the same model, the same score"
        assert flipped["categories"][LABEL] is False, "flagged no more, without retraining"
        assert flipped["model_version"] == version
        assert worker.metric("modstream_category_threshold", category=LABEL) == threshold
        assert worker.metric("modstream_policy_reloads_total", result="ok") == 1
        assert worker.metric("modstream_model_reloads_total", result="ok") == 0, "no new model"
        send(kafka_bootstrap, topics["input"], requests, "-again")
        again = by_id(reader.read_until(len(requests) * 2 + copies, timeout_s=60))
        for message_id, result in first.items():
            copy = again[message_id + "-again"]
            assert copy["policy_version"] == policy_version
            assert copy["category_scores"] == result["category_scores"]
            assert copy["categories"][LABEL] is (copy["category_scores"][LABEL] >= threshold)
            for label in set(USER_LABELS) - {LABEL}:
                assert copy["categories"][label] is result["categories"][label]
        assert again[borderline + "-again"]["categories"][LABEL] is False
    finally:
        assert worker.stop() == 0, worker.logs()
    reader.close()

    # 5. A worker pinned by MODSTREAM_THRESHOLDS: the spec's cut again, over the policy.
    pinned_env, pinned_cmd = example.command("modstream worker", nth=1)
    assert pinned_cmd == ["modstream", "worker"]
    assert pinned_env["MODSTREAM_THRESHOLDS"] == f"{LABEL}={SPEC_THRESHOLD}"
    topics = make_topics(partitions=1)
    pinned = readme_worker(kafka_bootstrap, topics, tmp_path, pinned_env, "pinned")
    try:
        pinned.wait_ready(timeout_s=120)
        reader = TopicReader(kafka_bootstrap, topics["output"])
        send(kafka_bootstrap, topics["input"], requests)
        pinned_results = by_id(reader.read_until(len(requests), timeout_s=60))
        for message_id, result in first.items():
            mine = pinned_results[message_id]
            assert re.fullmatch(
                rf"{re.escape(policy_version)}\+env-[0-9a-f]{{8}}", mine["policy_version"]
            ), mine
            assert mine["model_version"] == version
            assert mine["categories"] == result["categories"], "the checkpoint's flags again"
        assert pinned_results[borderline]["categories"][LABEL] is True
        reader.close()
    finally:
        assert pinned.stop() == 0, pinned.logs()
