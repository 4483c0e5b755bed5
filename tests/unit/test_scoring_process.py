"""worker/scoring_process.py (and worker/scoring_choice.py's `auto`) with real scoring
processes (no broker): the same scores as in process, in order; a killed process
restarted and its batch scored again; reloads beside the serving model, one version per
batch; never an orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

from model.engine import Engine
from model.threshold_overrides import ThresholdPolicyFile
from tests.helpers import REPO_ROOT, make_checkpoint, wait_for
from worker.decode import Decoder, SourceRecord
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.processing import BatchProcessor
from worker.reload import LabelConflictError, Reloader
from worker.remote_model import RemoteModel
from worker.scoring_choice import ScoringOptions, choose_scoring
from worker.scoring_errors import RemoteLoadError, ScoringProcessDiedError, ScoringStartError
from worker.scoring_process import ScoringProcess

TEXTS = [
    "you idiot",
    "free prize call now",
    "hello",
    "",
    "a long message " * 300,  # several windows
    "naïve 🙂 \ud800",  # a lone surrogate, as JSON can carry it
]
START_S = 60.0  # a process imports torch and loads a model; generous on a busy machine


@pytest.fixture
def scoring() -> Iterator[tuple[ScoringProcess, WorkerMetrics, HealthState]]:
    metrics, health = WorkerMetrics(), HealthState()
    process = ScoringProcess(ScoringOptions(device="cpu", torch_threads=1), metrics, health)
    yield process, metrics, health
    process.close()


def restarts(metrics: WorkerMetrics) -> float:
    value = metrics.registry.get_sample_value("modstream_scoring_process_restarts_total")
    return value or 0.0


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def assert_same_scores(remote: RemoteModel, engine: Engine, texts: list[str]) -> None:
    got, expected = remote.score(texts), engine.score(texts)
    np.testing.assert_array_equal(got.probabilities, expected.probabilities)
    for mine, theirs in zip(got.texts(), expected.texts(), strict=True):
        assert [(w.start, w.end) for w in mine.plan.windows] == [
            (w.start, w.end) for w in theirs.plan.windows
        ]
        assert (mine.plan.chars_scored, mine.plan.strategy) == (
            theirs.plan.chars_scored,
            theirs.plan.strategy,
        )
        np.testing.assert_array_equal(mine.window_scores, theirs.window_scores)


def test_scores_windows_and_order_are_the_engines_own(
    tmp_path: Path, scoring: tuple[ScoringProcess, WorkerMetrics, HealthState]
) -> None:
    make_checkpoint(tmp_path / "a", 1)
    process, metrics, _ = scoring
    model = process.start(tmp_path / "a")
    engine = Engine.load(tmp_path / "a", device="cpu")
    assert (model.version, model.labels, model.thresholds) == (
        engine.version,
        engine.labels,
        engine.thresholds,
    )
    for batch in (TEXTS, TEXTS[::-1], TEXTS[:1], TEXTS * 40):
        assert_same_scores(model, engine, batch)
    assert restarts(metrics) == 0


def test_a_killed_process_is_started_again_and_the_batch_in_hand_scored(
    tmp_path: Path, scoring: tuple[ScoringProcess, WorkerMetrics, HealthState]
) -> None:
    make_checkpoint(tmp_path / "a", 1)
    process, metrics, health = scoring
    model = process.start(tmp_path / "a")
    first = process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: gone(first), START_S, "the scoring process to die")
    with structlog.testing.capture_logs() as logs:
        assert_same_scores(model, Engine.load(tmp_path / "a", device="cpu"), TEXTS)
    assert process.pid not in (None, first)
    assert restarts(metrics) == 1
    (died,) = [line for line in logs if line["event"] == "scoring_process_died"]
    assert died["ended"] == "killed by SIGKILL" and died["pid"] == first
    assert health.scoring_problem is None, "ready again once the new process answered"


def test_a_batch_that_kills_two_processes_fails_alone_and_readiness_says_why(
    tmp_path: Path, scoring: tuple[ScoringProcess, WorkerMetrics, HealthState]
) -> None:
    make_checkpoint(tmp_path / "a", 1)
    process, metrics, health = scoring
    model = process.start(tmp_path / "a")
    killed: list[int] = []
    done = threading.Event()

    def kill_each_new_process() -> None:  # stands in for a text that crashes the model
        while len(killed) < 2 and not done.is_set():
            pid = process.pid
            if pid is not None and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            done.wait(0.001)

    killer = threading.Thread(target=kill_each_new_process)
    killer.start()
    try:
        with pytest.raises(ScoringProcessDiedError):
            model.score(TEXTS)
    finally:
        done.set()
        killer.join()
    assert restarts(metrics) == 2
    ready, body = health.readiness()
    assert not ready and any("scoring process restarting" in r for r in body["reasons"])
    assert "killed by SIGKILL" in str(health.scoring_problem)
    assert_same_scores(model, Engine.load(tmp_path / "a", device="cpu"), TEXTS)
    assert health.scoring_problem is None


def test_a_process_killing_batch_costs_only_its_texts_in_the_worker(
    tmp_path: Path,
    scoring: tuple[ScoringProcess, WorkerMetrics, HealthState],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The processor's fallback: the batch fails, its texts are scored one by one."""
    make_checkpoint(tmp_path / "a", 1)
    process, metrics, _ = scoring
    model = process.start(tmp_path / "a")
    records = [
        SourceRecord("t", 0, n, None, None, f'{{"id": "m{n}", "text": "hello {n}"}}'.encode())
        for n in range(4)
    ]
    processor = BatchProcessor(Decoder(), metrics, "results", "dead-letters")
    staged = processor.stage(records, model)
    score_rows = process.score_rows
    calls: list[int] = []

    def the_whole_batch_kills_it(remote: RemoteModel, rows: Sequence[Sequence[str]]) -> Any:
        calls.append(len(rows))
        if len(calls) == 1:
            raise ScoringProcessDiedError("4 window(s) killed two scoring processes in a row")
        return score_rows(remote, rows)

    monkeypatch.setattr(process, "score_rows", the_whole_batch_kills_it)
    scored = processor.score(staged)
    assert calls == [4, 1, 1, 1, 1] and None not in scored.rows


def test_a_reload_loads_beside_the_serving_model_and_each_batch_uses_its_own(
    tmp_path: Path, scoring: tuple[ScoringProcess, WorkerMetrics, HealthState]
) -> None:
    make_checkpoint(tmp_path / "a", 1)
    make_checkpoint(tmp_path / "b", 2)
    make_checkpoint(tmp_path / "other-labels", 3, labels=("toxic", "spam"))
    process, _, _ = scoring
    first = process.start(tmp_path / "a")
    assert process.load(tmp_path / "a", first, None, {}) is None, "the serving version"
    second = process.load(tmp_path / "b", first, None, {})
    assert second is not None and second.version != first.version
    engine_a = Engine.load(tmp_path / "a", device="cpu")
    engine_b = Engine.load(tmp_path / "b", device="cpu")
    assert_same_scores(first, engine_a, TEXTS)  # a batch staged before the swap
    assert_same_scores(second, engine_b, TEXTS)
    with structlog.testing.capture_logs() as logs:
        assert_same_scores(first, engine_a, TEXTS)  # dropped once b scored: loaded again
    assert any(line["event"] == "model_loaded_again" for line in logs)
    # Other labels may serve, unless the thresholds in effect name one it lacks.
    with pytest.raises(LabelConflictError, match="MODSTREAM_THRESHOLDS sets thresholds for insult"):
        process.load(tmp_path / "other-labels", second, None, {"insult": 0.9})
    policy = ThresholdPolicyFile(version="p1", thresholds={"insult": 0.9})
    with pytest.raises(LabelConflictError, match="policy p1"):
        process.load(tmp_path / "other-labels", second, policy, {"spam": 0.9})
    (tmp_path / "broken").mkdir()
    with pytest.raises(RemoteLoadError):
        process.load(tmp_path / "broken", second, None, {})
    assert_same_scores(second, engine_b, TEXTS)  # still serving
    third = process.load(tmp_path / "other-labels", second, None, {"spam": 0.9})
    assert third is not None and third.labels == ("toxic", "spam")
    assert_same_scores(third, Engine.load(tmp_path / "other-labels", device="cpu"), TEXTS)


def test_a_first_checkpoint_that_does_not_load_is_a_checkpoint_error(
    tmp_path: Path, scoring: tuple[ScoringProcess, WorkerMetrics, HealthState]
) -> None:
    process, _, _ = scoring
    with pytest.raises(ScoringStartError) as raised:
        process.start(tmp_path / "missing")
    assert raised.value.checkpoint


def test_signals_for_the_process_group_leave_it_scoring_and_close_ends_it(
    tmp_path: Path, scoring: tuple[ScoringProcess, WorkerMetrics, HealthState]
) -> None:
    make_checkpoint(tmp_path / "a", 1)
    process, metrics, _ = scoring
    model = process.start(tmp_path / "a")
    pid = process.pid
    assert pid is not None
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(pid, signum)  # a terminal's ^C, an init system's stop: the worker drains
    assert_same_scores(model, Engine.load(tmp_path / "a", device="cpu"), TEXTS)
    assert process.pid == pid and restarts(metrics) == 0
    with structlog.testing.capture_logs() as logs:
        process.close()
    (stopped,) = [line for line in logs if line["event"] == "scoring_process_stopped"]
    assert stopped["exit_code"] == 0, "it left on its own once its socket ended, not killed"
    assert gone(pid)


PARENT = """
import sys
from pathlib import Path
from worker.health import HealthState
from worker.logs import configure_logging
from worker.metrics import WorkerMetrics
from worker.scoring_choice import ScoringOptions
from worker.scoring_process import ScoringProcess

configure_logging("warning")  # stderr: stdout carries the pid
process = ScoringProcess(ScoringOptions(device="cpu"), WorkerMetrics(), HealthState())
process.start(Path(sys.argv[1]))
print(process.pid, flush=True)
sys.stdin.read()  # until killed
"""


def test_the_scoring_process_dies_with_its_worker_even_by_kill_9(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "a", 1)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "a")],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.kill()
        parent.wait(timeout=START_S)
        wait_for(lambda: gone(child), 10, "the orphaned scoring process to exit")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_auto_runs_a_scoring_process_from_two_cpus_on() -> None:
    assert choose_scoring("auto", cpus=1.0) == "in_process"
    assert choose_scoring("auto", cpus=1.5) == "in_process"
    assert choose_scoring("auto", cpus=2.0) == "process"
    assert choose_scoring("in_process", cpus=16.0) == "in_process"
    assert choose_scoring("process", cpus=1.0) == "process"


def test_the_reloader_offers_a_model_loaded_in_the_scoring_process(
    tmp_path: Path, scoring: tuple[ScoringProcess, WorkerMetrics, HealthState]
) -> None:
    from model.store import CheckpointStore
    from tests.unit.test_reload import Slot

    store = CheckpointStore(tmp_path / "store", keep=10)
    make_checkpoint(tmp_path / "a", 1)
    make_checkpoint(tmp_path / "b", 2)
    store.promote(store.add(tmp_path / "a"))
    process, metrics, _ = scoring
    slot = Slot(process.start(store.root))
    reloader = Reloader(store.root, slot, metrics, interval_s=0, loader=process)
    assert reloader.check() == "same_version"
    store.promote(store.add(tmp_path / "b"))
    assert reloader.check() == "offered"
    (offered,) = slot.offered
    assert isinstance(offered, RemoteModel) and offered.version == store.current_version()
    assert_same_scores(offered, Engine.load(tmp_path / "b", device="cpu"), TEXTS)


def test_a_worker_whose_model_runs_in_its_scoring_process_never_imports_torch() -> None:
    """≈ 520 MB of resident memory the worker's own process does without."""
    code = (
        "import sys\n"
        "import worker.app, worker.cli, worker.reload, worker.scoring_process\n"
        "import worker.worker_command, worker.scoring_choice, worker.scoring_errors\n"
        "assert 'torch' not in sys.modules, [m for m in sys.modules if 'torch' in m][:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
