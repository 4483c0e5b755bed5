"""The worker's side of its scoring process (worker/scoring_child.py): start it, hand it
batches, have it load new models, start it again when it dies.

Why a process: in one interpreter the worker's Python (polling, decoding, tokenising,
building outputs, kafka-python's threads) and the scoring thread's Python between torch
calls take turns under one lock, and a thread waiting for it leaves its core idle (the
lock was held 72 % of the time, README "Benchmarks"). With `MODSTREAM_SCORING=process`
the Engine lives in a child interpreter that turns tokens into vectors and runs the
LSTM, so the two halves run on two cores (the split: worker/remote_model.py). Transfer
goes through shared memory (worker/scoring_wire.py); the socket carries one small
tuple each way per batch.

Scoring a batch (`ScoringProcess.score_rows`, on the scoring thread; one batch at a
time, so the process scores them in the order they were handed over):

1. Write the windows' tokens (worker/remote_model.py plans them) into the request
   buffer; send `("score", version, rows, tokens, size, separated)`.
2. Wait for the answer, or for the socket's end (the process died).
3. `scored`: copy the window scores out of the reply buffer (the next batch reuses it).
   `missing`: the process was started again since that version was loaded: send
   `("load", path, version)`, then go back to 1. `failed`: raise `ScoringRequestError`;
   the processor scores the batch's texts one by one, as it does in process.
4. The process died: log `scoring_process_died` (its exit status), count
   `modstream_scoring_process_restarts_total`, hold /readyz at not ready with the
   reason, start a new process and go back to 1 with the same batch, once. A batch
   that kills two processes raises `ScoringProcessDiedError`: the processor scores its
   texts one by one, and a text that kills two processes gets an `inference_error` dead
   letter (invariant 3). A new process that cannot load the batch's model version
   raises `ModelUnavailableError` (worker/serving.py): the worker stops without
   committing the batch, which is delivered again after the restart.

Reloading (`load`, the reload thread: worker/reload.py's `ModelLoader`): the control
socket asks the process to load, check and warm up a new checkpoint beside the serving
one while it keeps scoring; the answer becomes a `RemoteModel`, which the `EngineSlot`
swaps in between batches like an Engine. Every score request names its version, so a
batch is scored by the model it was staged with (invariant 4).

Never an orphan: the process asks the kernel to kill it when the worker dies
(`PR_SET_PDEATHSIG`, which fires when the *thread* that started it ends, so every start
happens on one thread that lives as long as this object), and it exits when its socket
ends. `close` ends it after the worker drained: closing the sockets, then SIGKILL if it
is not gone within `STOP_TIMEOUT_S`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import structlog

import worker
from model.threshold_overrides import ThresholdPolicyFile
from worker.health import HealthState
from worker.metrics import GC_GENERATIONS, WorkerMetrics
from worker.remote_model import RemoteModel, RowStats
from worker.scoring_choice import ScoringOptions
from worker.scoring_errors import (
    RemoteLabelConflictError,
    RemoteLoadError,
    ScoringProcessDiedError,
    ScoringProcessError,
    ScoringRequestError,
    ScoringStartError,
)
from worker.scoring_wire import SharedBuffer, read_probabilities, write_rows
from worker.serving import ModelUnavailableError, ServingModel

log = structlog.get_logger("modstream.scoring")

STOP_TIMEOUT_S = 10.0


@dataclass
class Child:
    """One scoring process and the worker's ends of its two sockets."""

    proc: subprocess.Popen[bytes]
    scores: Connection
    control: Connection
    number: int  # 1 for the first, +1 per restart

    def close(self) -> None:
        for channel in (self.scores, self.control):
            with contextlib.suppress(OSError):
                channel.close()


def _died(child: Child) -> str:
    """How `child` ended, in words (it is reaped here)."""
    try:
        code = child.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        code = child.proc.wait()
        return "its socket closed while it ran on; killed"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class ScoringProcess:
    """The scoring process and its restarts.

    Threads: `score` on the scoring thread (or the processing thread when not
    pipelined), one call at a time; `reload` on the reload thread; `start` and `close`
    on the main thread. Starting a process always runs on the `scorer-start` thread.
    """

    def __init__(
        self,
        options: ScoringOptions,
        metrics: WorkerMetrics,
        health: HealthState,
    ) -> None:
        if not hasattr(os, "memfd_create"):
            raise ScoringProcessError(
                "MODSTREAM_SCORING=process needs Linux (anonymous memory files); "
                "use in_process here"
            )
        self.options = options
        self.metrics = metrics
        self.health = health
        self.requests = SharedBuffer.create("modstream-requests")
        self.replies = SharedBuffer.create("modstream-replies")
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer-start")
        self._lock = threading.Lock()  # guards `_child` and restarts
        self._score_lock = threading.Lock()
        self._control_lock = threading.Lock()
        self._child: Child | None = None
        self._started = 0
        self._closed = False
        self._pauses = {
            g: metrics.gc_pauses.labels(process="scorer", generation=g) for g in GC_GENERATIONS
        }

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, checkpoint_dir: Path) -> RemoteModel:
        """Start the process and load the first model in it (warmed up)."""
        self._current()
        answer = self._control(("reload", str(checkpoint_dir), None, None, {}), retry=False)
        if answer[0] != "loaded":
            raise ScoringStartError(str(answer[1]), checkpoint=bool(answer[2]))
        return RemoteModel.from_card(answer[1], checkpoint_dir, self)

    def close(self) -> None:
        """End the process (it exits when its sockets end), then the buffers. Once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            child.close()
            try:
                code = child.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                code = child.proc.wait()
            log.info("scoring_process_stopped", process=child.number, exit_code=code)
        self._starter.shutdown()
        self.requests.close()
        self.replies.close()

    @property
    def pid(self) -> int | None:
        """The current process's id (tests, benchmarks)."""
        child = self._child
        return None if child is None else child.proc.pid

    # -- scoring -----------------------------------------------------------------------

    def score_rows(
        self, model: RemoteModel, rows: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, RowStats]:
        """Steps 1-4 of the module docstring (`RowScorer`)."""
        with self._score_lock:
            for attempt in (1, 2):
                child = self._current()
                try:
                    return self._score_on(child, model, rows)
                except (EOFError, OSError) as exc:
                    self._replace(child, f"{type(exc).__name__} while scoring", len(rows))
                    if attempt == 2:
                        raise ScoringProcessDiedError(
                            f"{len(rows)} window(s) killed two scoring processes in a row"
                        ) from exc
            raise AssertionError("unreachable")

    def _score_on(
        self, child: Child, model: RemoteModel, rows: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, RowStats]:
        tokens, size, separated = write_rows(self.requests, rows)
        request = ("score", model.version, len(rows), tokens, size, separated)
        child.scores.send(request)
        answer = child.scores.recv()
        if answer[0] == "missing":
            self._load_known(child, model)
            child.scores.send(request)
            answer = child.scores.recv()
        kind = answer[0]
        if kind == "failed":
            raise ScoringRequestError(str(answer[1]))
        if kind != "scored":
            raise ScoringProcessError(f"unexpected answer {kind!r} to a score request")
        stats: RowStats
        _, stats, reply_size, pauses = answer
        self.replies.follow(reply_size)
        self._count_pauses(pauses)
        self.health.set(scoring_problem=None)
        return read_probabilities(self.replies, len(rows), len(model.labels)), stats

    def _load_known(self, child: Child, model: RemoteModel) -> None:
        """Load `model` again in a process started since (step 3, `missing`)."""
        child.scores.send(("load", str(model.path), model.version))
        answer = child.scores.recv()
        if answer[0] != "loaded":
            raise ModelUnavailableError(
                f"model {model.version} cannot be loaded again in the scoring process: {answer[1]}"
            )
        log.info("model_loaded_again", version=model.version, process=child.number)

    def _count_pauses(self, pauses: list[tuple[int, float]]) -> None:
        for generation, seconds in pauses:
            self._pauses[str(generation)].observe(seconds)

    # -- reloading ---------------------------------------------------------------------

    def load(
        self,
        path: Path,
        serving: ServingModel,
        policy: ThresholdPolicyFile | None,
        overrides: Mapping[str, float],
    ) -> RemoteModel | None:
        """Load, check (`validate_engine` with `policy` and `overrides`) and warm up the
        checkpoint at `path` in the process, beside the serving model (`ModelLoader`);
        None when it is the serving version. Raises `RemoteLabelConflictError` when the
        policy or overrides name a label it lacks, else `RemoteLoadError`."""
        answer = self._control(("reload", str(path), serving.version, policy, dict(overrides)))
        if answer[0] == "same_version":
            return None
        if answer[0] != "loaded":
            if answer[3]:
                raise RemoteLabelConflictError(str(answer[1]))
            raise RemoteLoadError(str(answer[1]))
        return RemoteModel.from_card(answer[1], path, self)

    def _control(self, request: tuple[Any, ...], retry: bool = True) -> tuple[Any, ...]:
        """One control request; if the process dies meanwhile, once more in a new one."""
        with self._control_lock:
            for attempt in (1, 2):
                child = self._current()
                try:
                    child.control.send(request)
                    answer: tuple[Any, ...] = child.control.recv()
                    return answer
                except (EOFError, OSError) as exc:
                    self._replace(child, f"{type(exc).__name__} while loading a model", 0)
                    if attempt == 2 or not retry:
                        raise ScoringProcessError(
                            "the scoring process died while loading a model"
                        ) from exc
            raise AssertionError("unreachable")

    # -- processes ---------------------------------------------------------------------

    def _current(self) -> Child:
        with self._lock:
            if self._closed:
                raise ModelUnavailableError("the scoring process was closed")
            if self._child is None:
                self._child = self._starter.submit(self._spawn).result()
            return self._child

    def _replace(self, dead: Child, why: str, batch_size: int) -> None:
        """Step 4: reap `dead` and start another, unless another thread already did."""
        with self._lock:
            if self._child is not dead or self._closed:
                return
            dead.close()
            ended = _died(dead)
            self.metrics.scoring_restarts.inc()
            problem = f"scoring process restarting: it died ({ended})"
            self.health.set(scoring_problem=problem)
            log.error(
                "scoring_process_died",
                process=dead.number,
                pid=dead.proc.pid,
                ended=ended,
                noticed=why,
                batch_size=batch_size,
                action="starting another; the batch in hand is scored again",
            )
            try:
                self._child = self._starter.submit(self._spawn).result()
            except OSError as exc:
                self._child = None
                raise ModelUnavailableError(f"the scoring process cannot start: {exc}") from exc

    def _spawn(self) -> Child:
        """Start a process (on the `scorer-start` thread: see the module docstring)."""
        score_ours, score_theirs = socket.socketpair()
        control_ours, control_theirs = socket.socketpair()
        self._started += 1
        options = {
            "parent_pid": os.getpid(),
            "score_fd": score_theirs.fileno(),
            "control_fd": control_theirs.fileno(),
            "request_fd": self.requests.fd,
            "request_size": self.requests.size,
            "reply_fd": self.replies.fd,
            "reply_size": self.replies.size,
            "device": self.options.device,
            "engine_options": self.options.engine_options,
            "torch_threads": self.options.torch_threads,
            "switch_interval_us": self.options.switch_interval_us,
            "log_level": self.options.log_level,
        }
        # The child imports this very `worker` package, wherever it was imported from.
        source_root = str(Path(worker.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.scoring_child", json.dumps(options)],
                pass_fds=(
                    score_theirs.fileno(),
                    control_theirs.fileno(),
                    self.requests.fd,
                    self.replies.fd,
                ),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            score_theirs.close()  # the child holds them now: its death ends our reads
            control_theirs.close()
        log.info("scoring_process_started", process=self._started, pid=proc.pid)
        return Child(
            proc, Connection(score_ours.detach()), Connection(control_ours.detach()), self._started
        )
