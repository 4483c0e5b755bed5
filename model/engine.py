"""The one inference path: worker, `score` CLI and evaluation all go through `Engine`.

Keeping a single path means the metrics written into a checkpoint were measured with
exactly the code that serves it.

Windows: every text is read as one or more windows (`model.windows`: at most the
model's `window_tokens` tokens each, overlapping, spans into the original text, a
character budget `max_chars` and a cap of `max_windows` per text). Every window is a
row of the same packed, bucketed batches, and a label's score for a text is the
maximum over its windows, so one abusive part drives it however long the text is. A
text that fits one window is one row holding exactly the tokens of the whole text, so
it scores as it did before windows (tested for equality). `Scores` keeps each
window's scores and span for coverage and evidence.

Batching: rows are cut into buckets by length and a token budget (`model.buckets`),
so memory is bounded whatever the mix of lengths. Packing makes each row's score
independent of its bucket-mates, so batched scores equal one-by-one scores (tested to
1e-5) and results come back in input order.

Serving reads each token's input vector from a per-engine cache (`model.vectors`)
and packs a bucket straight from it, and pooling reduces the packed steps: no padding
is ever computed. So buckets need not be of similar length, and fewer buckets mean
fewer recurrent time steps, each a pass with its own overhead: by default only
`max_batch_tokens` splits a batch. One-by-one scoring and training build the same
vectors from the embeddings every time (`forward_batch`), which keeps the cache honest.

The text → rows encoding shared with training is `model.encoding`; the batch and
result types are `model.scores`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from model.bounded import TOKEN_CACHE_BYTES, BoundedDict, sizeof_entry
from model.buckets import DEFAULT_BUCKET_WIDTH, DEFAULT_MAX_BATCH_TOKENS, length_buckets
from model.checkpoint import load_checkpoint
from model.encoding import (
    Encoded,
    TokenCache,
    encode_tokens,
    encode_windows,
    forward_batch,
    row_tokens,
    serving_windows,
)
from model.errors import ExitCode, ModstreamError
from model.network import Classifier
from model.reading import DEFAULT_MAX_CHARS, DEFAULT_MAX_WINDOWS
from model.scores import EncodedBatch, Scores
from model.tokenizer import DEFAULT_MAX_TOKENS, TOKENIZER_VERSION
from model.vectors import TokenVectors, pack_rows
from model.vocab import Vocab
from model.windows import (
    WindowError,
    WindowPlan,
    WindowPlanner,
    aggregate,
)


class EngineError(ModstreamError):
    exit_code = ExitCode.CHECKPOINT

    """The engine cannot be built as asked (e.g. CUDA requested but unavailable)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' prefers CUDA; an explicit CUDA request on a CPU-only host is an error,
    because silently running a GPU deployment on CPU hides a broken setup."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise EngineError(f"invalid device {device!r}: {e}") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(
                f"device {device!r} requested but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use device 'cpu' or 'auto'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise EngineError(
                f"device {device!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    elif resolved.type != "cpu":
        raise EngineError(f"unsupported device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    return resolved


class Engine:
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    version: str
    device: torch.device

    def __init__(
        self,
        model: Classifier,
        vocab: Vocab,
        labels: Sequence[str],
        thresholds: Mapping[str, float],
        version: str,
        device: torch.device,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        bucket_width: int = DEFAULT_BUCKET_WIDTH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        cpu_threads: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        tokenizer: str = TOKENIZER_VERSION,
    ) -> None:
        """`cpu_threads` (CPU devices only), if given, sets torch's process-wide intra-op
        thread count. This model is too small for intra-op parallelism to pay: on a
        2-core host 1 thread matched 2 when idle and was ~8x faster when other processes
        competed for the CPU (OpenMP threads spin-wait), so 1 is the advice for serving;
        None leaves the process setting alone.

        Windows: the model's own shape (`ModelConfig.window_tokens`, `window_stride`),
        cut to `max_tokens` tokens if that is lower; `max_chars` and `max_windows` are
        the scoring budget per text (`model.windows`, rules 1 and 4). `tokenizer` is the
        version the model was trained with: rule 6 applies only from v3 on."""
        labels = tuple(labels)
        if len(labels) != model.config.num_labels:
            raise EngineError(f"{len(labels)} labels for a model with {model.config.num_labels}")
        if set(thresholds) != set(labels):
            raise EngineError(f"thresholds {sorted(thresholds)} must cover labels {labels}")
        if max_tokens < 1 or bucket_width < 1 or max_batch_tokens < 1:
            raise EngineError("max_tokens, bucket_width and max_batch_tokens must be >= 1")
        try:
            self.windows = serving_windows(
                model.config, max_tokens, max_chars, max_windows, tokenizer
            )
        except WindowError as e:
            raise EngineError(str(e)) from e
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.labels = labels
        self.thresholds = {label: float(thresholds[label]) for label in labels}
        self.version = version
        self.device = device
        self.max_tokens = self.windows.window_tokens  # tokens per row
        self.bucket_width = bucket_width
        self.max_batch_tokens = max_batch_tokens
        self._token_cache: TokenCache = BoundedDict(TOKEN_CACHE_BYTES, sizeof_entry)
        self._planner = WindowPlanner(self.windows)
        self._vectors = TokenVectors(self.model, device)
        if device.type == "cpu" and cpu_threads is not None:
            torch.set_num_threads(max(1, cpu_threads))

    @classmethod
    def load(
        cls,
        checkpoint_dir: str | Path,
        device: str = "auto",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        bucket_width: int = DEFAULT_BUCKET_WIDTH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        cpu_threads: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> Engine:
        """Raises `CheckpointError` subclasses for bad checkpoints, `EngineError` for devices."""
        resolved = resolve_device(device)
        checkpoint = load_checkpoint(checkpoint_dir)
        return cls(
            checkpoint.model,
            checkpoint.vocab,
            checkpoint.labels,
            checkpoint.thresholds,
            checkpoint.version,
            resolved,
            max_tokens=max_tokens,
            bucket_width=bucket_width,
            max_batch_tokens=max_batch_tokens,
            cpu_threads=cpu_threads,
            max_chars=max_chars,
            max_windows=max_windows,
            tokenizer=checkpoint.tokenizer,
        )

    @classmethod
    def from_model(
        cls,
        model: Classifier,
        vocab: Vocab,
        labels: Sequence[str],
        thresholds: Mapping[str, float] | None = None,
        version: str = "unsaved",
        device: str | torch.device = "auto",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        bucket_width: int = DEFAULT_BUCKET_WIDTH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        cpu_threads: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> Engine:
        """Wraps an in-memory model (training evaluation, tests). Puts it in eval mode;
        callers that keep training must switch it back with `model.train()`."""
        labels = tuple(labels)
        return cls(
            model,
            vocab,
            labels,
            thresholds if thresholds is not None else dict.fromkeys(labels, 0.5),
            version,
            resolve_device(device),
            max_tokens=max_tokens,
            bucket_width=bucket_width,
            max_batch_tokens=max_batch_tokens,
            cpu_threads=cpu_threads,
            max_chars=max_chars,
            max_windows=max_windows,
        )

    def plan(self, text: str) -> WindowPlan:
        """The windows this engine reads `text` as."""
        return self._planner.plan(text)

    def encode_text(self, text: str) -> list[Encoded]:
        """One text's rows, one per window (`encode_windows`)."""
        return encode_windows(self.vocab, self.model.config, self._planner, text, self._token_cache)

    def warm_up(self) -> float:
        """Gets a fresh engine to its steady speed before it serves; returns seconds.

        Computes the cached input vector of every vocabulary word (one call), so the
        first batches do not pay for them, and runs one batch per length up to
        `max_tokens`, so torch's first-call work (allocations, kernel selection) is
        done. Without it a worker's first seconds ran several times slower than the
        rest and built a backlog it then had to drain.
        """
        start = time.perf_counter()
        self._vectors.assign(self.vocab.tokens, self._describe)
        words = [token for token in self.vocab.tokens[2:] if token.isalpha()][:64] or ["word"]
        lengths = sorted({1, 4, 16, 64, self.max_tokens, 4 * self.max_tokens})
        texts = [" ".join(words[i % len(words)] for i in range(n)) for n in lengths]
        self.score(texts * 8)
        return time.perf_counter() - start

    def buckets(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Input indices grouped by similar length, shortest first (`length_buckets`)."""
        return length_buckets(lengths, self.bucket_width, self.max_batch_tokens)

    def score(self, texts: Sequence[str]) -> Scores:
        return self.score_encoded(self.encode_batch(texts))

    def encode_batch(self, texts: Sequence[str]) -> EncodedBatch:
        """The pure-Python half of `score`: a worker runs it on another thread than
        `score_encoded`, whose LSTM releases the GIL, so the two halves overlap."""
        start = time.perf_counter()
        plans = tuple(self._planner.plan(text) for text in texts)
        rows = [row_tokens(window.tokens) for plan in plans for window in plan.windows]
        slots, table = self._vectors.assign(list(chain.from_iterable(rows)), self._describe)
        lengths = np.fromiter((len(t) for t in rows), dtype=np.int64, count=len(rows))
        starts = np.zeros_like(lengths)
        np.cumsum(lengths[:-1], out=starts[1:])
        counts = np.fromiter((len(p.windows) for p in plans), dtype=np.int64, count=len(plans))
        owners = np.repeat(np.arange(len(plans), dtype=np.int64), counts)
        return EncodedBatch(
            lengths,
            self.version,
            time.perf_counter() - start,
            slots,
            starts,
            table,
            plans,
            owners,
        )

    def _describe(self, tokens: Sequence[str]) -> tuple[list[int], tuple[tuple[int, ...], ...]]:
        """New tokens' ids and sub-word buckets, for the token-vector cache."""
        encoded = encode_tokens(self.vocab, self.model.config, tokens, self._token_cache)
        return encoded.ids, encoded.subwords

    def score_encoded(self, batch: EncodedBatch) -> Scores:
        if batch.version != self.version:
            raise EngineError(f"batch encoded for model {batch.version}, not {self.version}")
        lengths = batch.lengths
        start = time.perf_counter()
        probabilities = np.empty((len(lengths), len(self.labels)), dtype=np.float32)
        padded_tokens = 0
        buckets = self.buckets(lengths)
        with torch.inference_mode():
            for bucket in buckets:
                longest_first = bucket[::-1]
                packed = pack_rows(
                    batch.table, batch.slots, batch.starts[longest_first], lengths[longest_first]
                )
                logits = self.model.forward_packed(packed)
                probabilities[longest_first] = torch.sigmoid(logits).float().cpu().numpy()
                padded_tokens += len(bucket) * int(lengths[longest_first[0]])
        texts = len(batch.plans)
        per_text = (
            probabilities  # one window each: the rows are the texts
            if len(lengths) == texts
            else aggregate(probabilities, batch.owners, texts)
        )
        return Scores(
            probabilities=per_text,
            tokenize_seconds=batch.tokenize_seconds,
            inference_seconds=time.perf_counter() - start,
            real_tokens=int(lengths.sum()),
            padded_tokens=padded_tokens,
            num_buckets=len(buckets),
            plans=batch.plans,
            window_probabilities=probabilities,
            owners=batch.owners,
        )

    def score_one_by_one(self, texts: Sequence[str]) -> np.ndarray:
        """Unbatched reference path: one forward per window, no padding at all, each
        text's maximum over its windows."""
        probabilities = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for i, text in enumerate(texts):
                windows = [self._forward([row])[0] for row in self.encode_text(text)]
                probabilities[i] = np.max(windows, axis=0)
        return probabilities

    def _forward(self, rows: Sequence[Encoded]) -> np.ndarray:
        logits = forward_batch(self.model, rows, self.device)
        result: np.ndarray = torch.sigmoid(logits).float().cpu().numpy()
        return result
