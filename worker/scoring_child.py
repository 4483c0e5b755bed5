"""The scoring process: a worker's models, run in an interpreter of their own.

Started by worker/scoring_process.py as `python -m worker.scoring_child OPTIONS_JSON`,
with four descriptors: the score and control sockets, and the request and reply buffers
(worker/scoring_wire.py). The worker plans each text's windows (worker/remote_model.py);
this process turns the windows' tokens into vectors and runs the LSTM, on its own core
and under its own interpreter lock, while the worker's interpreter polls, decodes,
builds outputs and talks to Kafka.

Protocol. The score socket, on the main thread, one request at a time, in order:

1. `("score", version, rows, tokens, size, separated)`: the windows in the request buffer,
   scored by the engine of `version` only (invariant 4). Answers
   `("scored", RowStats, reply_size, pauses)` with the window scores in the reply buffer
   (`pauses`: this process's garbage collections since the last answer), or
   `("missing", version)` when it holds no engine of that version (it was restarted),
   or `("failed", error)` when scoring raised (the worker scores one by one then).
   Scoring with a version drops the engines loaded before it: the worker swaps models
   only between batches, in order, so no later batch needs them.
2. `("load", path, version)`: load the checkpoint at `path` now, which must be
   `version` (after a restart, before scoring again). Answers `("loaded", card)` or
   `("load_failed", error)`.

The control socket, on a thread of its own so that scoring goes on meanwhile:

3. `("reload", path, serving_version, policy, overrides)`: load a checkpoint (the
   first one at start: no serving model); unless it is the serving version, check it
   as worker/reload.py does (`validate_engine`: the labels the threshold policy and
   `MODSTREAM_THRESHOLDS` name, the canary batch), warm it up and freeze what it built
   (worker/collector.py). Answers `("loaded", card)`, `("same_version", version)` or
   `("load_failed", error, is_checkpoint_error, is_label_conflict)`.

It ends when the score socket reaches its end: the worker closed it, or died. The kernel
ends it too if the worker dies by any means (`PR_SET_PDEATHSIG`, Linux), so it never
outlives the worker; it ignores SIGINT, SIGTERM and SIGHUP, which a terminal or an
init system may send the whole process group: the worker decides when it stops, after
draining the batches in hand.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import structlog

from model.bounded import TOKEN_CACHE_BYTES, BoundedDict, sizeof_entry
from model.checkpoint import CheckpointError
from model.encoding import TokenCache, encode_tokens
from model.engine import Engine
from model.scores import EncodedBatch, Scores
from model.threshold_overrides import ThresholdPolicyFile
from model.vectors import TokenVectors
from model.windows import STRATEGY_WHOLE, WindowPlan
from worker.collector import freeze_long_lived
from worker.logs import configure_logging
from worker.reload import LabelConflictError, validate_engine
from worker.remote_model import RowStats
from worker.scoring_wire import SharedBuffer, read_rows, write_probabilities

log = structlog.get_logger("modstream.scorer")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class ChildOptions:
    """What the worker passes on the command line (JSON)."""

    parent_pid: int
    score_fd: int
    control_fd: int
    request_fd: int
    request_size: int
    reply_fd: int
    reply_size: int
    device: str
    engine_options: dict[str, int]
    torch_threads: int
    switch_interval_us: int
    log_level: str


def card(engine: Engine) -> dict[str, Any]:
    """What the worker needs to know of a loaded model."""
    return {
        "version": engine.version,
        "labels": list(engine.labels),
        "thresholds": engine.thresholds,
        "device": str(engine.device),
        "windows": dataclasses.asdict(engine.windows),
    }


def exit_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGKILL when the worker dies, however it dies; exit at once if
    it already has (the request only covers deaths after it is made)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("parent_death_signal_unavailable", errno=ctypes.get_errno())
    if os.getppid() != parent_pid:
        os._exit(0)


# `Engine.score_encoded` reads only how many plans a batch has: the worker has the real ones.
NO_PLAN = WindowPlan((), 0, 0, STRATEGY_WHOLE)


class ServedEngine:
    """An engine fed tokens instead of texts: the second half of `Engine.encode_batch`
    (tokens → vocabulary ids and sub-words → cached vectors), then its
    `score_encoded`, each window its own row. Its token-vector cache is its own (the
    Engine's serves `validate_engine`'s canary). Main thread only, once loaded."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.vectors = TokenVectors(engine.model, engine.device)
        self._token_cache: TokenCache = BoundedDict(TOKEN_CACHE_BYTES, sizeof_entry)

    @property
    def version(self) -> str:
        return self.engine.version

    def _describe(self, tokens: Sequence[str]) -> tuple[list[int], tuple[tuple[int, ...], ...]]:
        encoded = encode_tokens(
            self.engine.vocab, self.engine.model.config, tokens, self._token_cache
        )
        return encoded.ids, encoded.subwords

    def score_rows(self, tokens: list[str], lengths: np.ndarray) -> tuple[Scores, float]:
        """Each window's scores (`probabilities` has one row per window), and the
        seconds spent turning tokens into vectors."""
        start = time.perf_counter()
        slots, table = self.vectors.assign(tokens, self._describe)
        starts = np.zeros_like(lengths)
        np.cumsum(lengths[:-1], out=starts[1:])
        rows = len(lengths)
        encode_seconds = time.perf_counter() - start
        batch = EncodedBatch(
            lengths,
            self.engine.version,
            encode_seconds,
            slots,
            starts,
            table,
            (NO_PLAN,) * rows,
            np.arange(rows, dtype=np.int64),
        )
        return self.engine.score_encoded(batch), encode_seconds

    def warm_up(self) -> float:
        """`Engine.warm_up` on this path: every vocabulary word's vector, then one batch
        per length up to `max_tokens`, planned as the worker plans them."""
        start = time.perf_counter()
        engine = self.engine
        self.vectors.assign(engine.vocab.tokens, self._describe)
        words = [token for token in engine.vocab.tokens[2:] if token.isalpha()][:64] or ["word"]
        lengths = sorted({1, 4, 16, 64, engine.max_tokens, 4 * engine.max_tokens})
        texts = [" ".join(words[i % len(words)] for i in range(n)) for n in lengths] * 8
        rows = [w.tokens or ("<unk>",) for t in texts for w in engine.plan(t).windows]
        flat = [token for row in rows for token in row]
        self.score_rows(flat, np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)))
        return time.perf_counter() - start


class EngineShelf:
    """The engines this process holds, oldest first. Threads: both."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, ServedEngine] = {}

    def put(self, engine: ServedEngine) -> None:
        with self._lock:
            self._engines.pop(engine.version, None)
            self._engines[engine.version] = engine  # newest last

    def get(self, version: str) -> ServedEngine | None:
        """The engine of `version`, dropping every one loaded before it."""
        with self._lock:
            engine = self._engines.get(version)
            if engine is not None:
                for older in list(self._engines):
                    if older == version:
                        break
                    del self._engines[older]
            return engine

    def versions(self) -> list[str]:
        with self._lock:
            return list(self._engines)


class PauseLog:
    """This process's garbage collections since the last answer (`gc.callbacks`)."""

    def __init__(self) -> None:
        self._pauses: list[tuple[int, float]] = []
        self._started = 0.0
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.append((info["generation"], time.perf_counter() - self._started))

    def take(self) -> list[tuple[int, float]]:
        taken, self._pauses = self._pauses, []
        return taken


class ScoringServer:
    """Steps 1-3 of the module docstring."""

    def __init__(self, options: ChildOptions) -> None:
        self.options = options
        self.shelf = EngineShelf()
        self.pauses = PauseLog()
        self.requests = SharedBuffer(options.request_fd, options.request_size)
        self.replies = SharedBuffer(options.reply_fd, options.reply_size)

    def load(self, path: str) -> Engine:
        return Engine.load(path, device=self.options.device, **self.options.engine_options)

    def serve_scores(self, channel: Connection) -> None:
        """Steps 1 and 2 until the worker closes the socket (or dies)."""
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "score":
                channel.send(self._score(*message[1:]))
            elif kind == "load":
                channel.send(self._load_known(*message[1:]))
            else:
                channel.send(("failed", f"unknown request {kind!r}"))

    def _score(
        self, version: str, rows: int, tokens: int, request_size: int, separated: bool
    ) -> tuple[Any, ...]:
        served = self.shelf.get(version)
        if served is None:
            return ("missing", version)
        self.requests.follow(request_size)
        try:
            flat, lengths = read_rows(self.requests, rows, tokens, request_size, separated)
            scores, encode_seconds = served.score_rows(flat, lengths)
            write_probabilities(self.replies, scores.probabilities)
        except Exception as exc:  # the worker scores one by one, to find the text
            return ("failed", f"{type(exc).__name__}: {exc}")
        stats = RowStats(
            encode_seconds,
            scores.inference_seconds,
            scores.real_tokens,
            scores.padded_tokens,
            scores.num_buckets,
        )
        return ("scored", stats, self.replies.size, self.pauses.take())

    def _load_known(self, path: str, version: str) -> tuple[Any, ...]:
        try:
            engine = self.load(path)
            if engine.version != version:
                return ("load_failed", f"{path} now holds version {engine.version}, not {version}")
            served = ServedEngine(engine)
            served.warm_up()
        except Exception as exc:
            return ("load_failed", f"{type(exc).__name__}: {exc}")
        self.shelf.put(served)
        freeze_long_lived()
        log.info("model_loaded", version=engine.version, path=path)
        return ("loaded", card(engine))

    def serve_control(self, channel: Connection) -> None:
        """Step 3 until the worker closes the socket (or dies)."""
        structlog.contextvars.bind_contextvars(process="scorer")  # per thread
        while True:
            try:
                message = channel.recv()
            except (EOFError, OSError):
                return
            channel.send(self._reload(*message[1:]))

    def _reload(
        self,
        path: str,
        serving_version: str | None,
        policy: ThresholdPolicyFile | None,
        overrides: dict[str, float],
    ) -> tuple[Any, ...]:
        try:
            engine = self.load(path)
            if engine.version == serving_version:
                return ("same_version", engine.version)
            if serving_version is not None:  # the first model: the worker checks its labels
                validate_engine(engine, policy, overrides)
            served = ServedEngine(engine)
            seconds = served.warm_up()
        except Exception as exc:  # CheckpointError, EngineError, ReloadError, torch's own
            return (
                "load_failed",
                f"{type(exc).__name__}: {exc}",
                isinstance(exc, CheckpointError),
                isinstance(exc, LabelConflictError),
            )
        self.shelf.put(served)
        freeze_long_lived()
        log.info("model_loaded", version=engine.version, path=path, warm_up_s=round(seconds, 3))
        return ("loaded", card(engine))


def main(argv: Sequence[str]) -> int:
    options = ChildOptions(**json.loads(argv[0]))
    configure_logging(options.log_level)  # stderr, as the worker's; stdout stays clean
    structlog.contextvars.bind_contextvars(process="scorer")
    exit_with_parent(options.parent_pid)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    if options.switch_interval_us:
        sys.setswitchinterval(options.switch_interval_us / 1e6)
    if options.torch_threads:
        import torch

        torch.set_num_threads(options.torch_threads)
    server = ScoringServer(options)
    control = threading.Thread(
        target=server.serve_control,
        args=(Connection(options.control_fd),),
        name="scorer-control",
        daemon=True,
    )
    control.start()
    server.serve_scores(Connection(options.score_fd))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # No interpreter shutdown: it would tear down torch's threads under the control
    # thread ("terminate called without an active exception"), and there is nothing to
    # clean up (the buffers are memory files the kernel frees).
    sys.stderr.flush()
    os._exit(code)
