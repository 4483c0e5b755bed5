"""Training: `TrainConfig` and the loop that fits a `Classifier` to it.

`train` fits a `Classifier` with Adam on a masked multi-label BCE: each example only
knows some labels (insult comments vs SMS spam), and unknown labels must contribute
neither loss nor gradient. Early stopping watches mean validation ROC AUC, scored
through `Engine` so the number tracked is the number served. `model.build.retrain`
wraps it into the whole job (evaluate, report, save, verify).

Training data choices (each a `TrainConfig` field, measured on validation; see README):
- embeddings start from GloVe 6B 100d when `make glove` has cached it (`model.glove`);
- hashed character n-grams per token (`model.subword`) for obfuscated spellings;
- `ema_decay`: validation, early stopping and the saved checkpoint use an exponential
  moving average of the weights rather than the last step's (`model.ema`);
- `comments_spam_negative`: insult-corpus comments train the spam head as negatives
  (`model.training_data`);
- windows (`window_tokens`, `window_stride`, `model.windows`): every example is read
  as serving reads it, and a label's logit for an example is the maximum over its
  windows' logits, so the loss reaches the window that decides (a multiple-instance
  objective; an example that fits one window trains exactly as before);
- `context_share`: each epoch that share of the insult comments is also trained
  placed among 1 to `context_fillers` clean training comments, so one abusive part
  must drive a long message and clean context must not (`model.training_data`);
- `short_benign`: short benign chat is a negative for every label (`model.short_chat`).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from model.data import DataSplits, Example
from model.ema import Ema
from model.engine import Encoded, Engine, TokenCache, forward_batch, resolve_device
from model.evaluation import (
    evaluation_examples,
    masked_log_loss,
    mean_finite,
    parse_target_precision,
    per_label_auc,
)
from model.glove import GloveVectors, embedding_matrix
from model.network import Classifier, ModelConfig, Pooling, RnnKind
from model.progress import Progress, ProgressBar, quiet
from model.reading import DEFAULT_STRIDE, DEFAULT_WINDOW_TOKENS
from model.tokenizer import tokenize
from model.training_data import (
    build_vocab,
    context_examples,
    encode_examples,
    glove_for,
    glove_rows,
    label_arrays,
    length_bucketed_batches,
    training_examples,
)
from model.vocab import Vocab

LrSchedule = Literal["constant", "linear"]
PosWeight = Literal["none", "sqrt", "balanced"]


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1234
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    lr_schedule: LrSchedule = "constant"  # linear: decays to 10% over `epochs`
    embed_dim: int = 100
    hidden_dim: int = 64
    layers: int = 1
    rnn: RnnKind = "lstm"
    bidirectional: bool = True
    dropout: float = 0.3
    pooling: Pooling = "meanmax"
    subword_buckets: int = 20_000  # hashed char n-gram rows; 0 = word embeddings only
    subword_dim: int = 32
    # >0: validate and keep an exponential moving average of the weights (this decay per
    # step, ~200-step horizon at 0.995) instead of the raw weights; 0 = raw weights.
    ema_decay: float = 0.995
    glove: bool = True  # initialise embeddings from the GloVe cache when present
    glove_dir: str | None = None  # default: $MODSTREAM_GLOVE_DIR or ~/.cache/modstream/glove
    glove_min_freq: int = 0  # >0: also keep tokens this frequent if GloVe knows them
    glove_vocab: int = 20_000  # add GloVe's N most frequent words to the vocabulary (<= 20000)
    freeze_glove: bool = True  # keep GloVe-initialised rows fixed while training
    comments_spam_negative: bool = True  # insult-corpus comments are spam negatives
    short_benign: bool = True  # short benign chat is a negative for every label
    window_tokens: int = DEFAULT_WINDOW_TOKENS  # tokens per window (model.windows)
    window_stride: int = DEFAULT_STRIDE  # tokens between window starts
    # Each epoch, this share of the insult comments is also trained placed among 1 to
    # `context_fillers` clean training comments; 0 = off.
    context_share: float = 0.5
    context_fillers: int = 4
    pos_weight: PosWeight = "sqrt"  # positive-class loss weight per label
    # Threshold rule per label: "" = max F1 on validation; "0.95" = lowest cut reaching
    # that precision on validation (max F1 if none does); "spam=0.98,insult=0.8" per label.
    target_precision: str = ""
    baseline: bool = True  # fit the TF-IDF baseline too (needs scikit-learn)
    report: bool = True  # write report/ into the checkpoint
    min_freq: int = 2
    max_vocab: int = 40_000
    patience: int = 2
    grad_clip: float = 1.0
    limit: int | None = None  # cap on training examples (quick runs, tests)
    eval_limit: int | None = None  # cap on validation and test examples each
    device: str = "auto"
    # One thread: this small LSTM trains about as fast on 1 thread as on 2 (measured on
    # 2 cores), and extra OpenMP threads stall badly when other processes share the CPU.
    num_threads: int = 1

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """Seconds-long config for throw-away checkpoints in tests; quality is irrelevant."""
        base: dict[str, Any] = dict(
            epochs=1,
            limit=400,
            eval_limit=200,
            embed_dim=16,
            hidden_dim=16,
            max_vocab=2000,
            subword_buckets=1000,
            subword_dim=8,
            device="cpu",
            glove=False,
            glove_vocab=0,
            freeze_glove=False,
            baseline=False,
            report=False,
            ema_decay=0.0,
        )
        return cls(**{**base, **overrides})

    def __post_init__(self) -> None:
        parse_target_precision(self.target_precision)
        if not self.ema_decay < 1.0:  # 1 would never move from zero (and divide by zero)
            raise ValueError(f"ema_decay must be below 1 (0 = off), got {self.ema_decay!r}")
        if not 0.0 <= self.context_share <= 1.0:
            raise ValueError(f"context_share must be in [0, 1], got {self.context_share!r}")
        if self.context_fillers < 1:
            raise ValueError(f"context_fillers must be >= 1, got {self.context_fillers!r}")

    def model_config(self, vocab_size: int, num_labels: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            num_labels=num_labels,
            embed_dim=self.embed_dim,
            hidden_dim=self.hidden_dim,
            num_layers=self.layers,
            rnn=self.rnn,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            pooling=self.pooling,
            subword_buckets=self.subword_buckets,
            subword_dim=self.subword_dim,
            window_tokens=self.window_tokens,
            window_stride=self.window_stride,
        )


@dataclass
class TrainResult:
    model: Classifier  # best-validation weights, eval mode
    vocab: Vocab
    labels: tuple[str, ...]
    config: TrainConfig
    best_epoch: int
    best_validation_auc: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    embeddings: dict[str, Any] = field(default_factory=dict)  # GloVe coverage etc.


def train(
    config: TrainConfig,
    splits: DataSplits,
    progress: Progress = quiet,
    extra_examples: Sequence[Example] = (),
) -> TrainResult:
    """`extra_examples` (e.g. moderator feedback) always train, whatever `config.limit`."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    with torch_settings(config, device):
        torch.manual_seed(config.seed)
        return _train(config, splits, splits.labels, device, progress, started, extra_examples)


def _train(
    config: TrainConfig,
    splits: DataSplits,
    labels: tuple[str, ...],
    device: torch.device,
    progress: Progress,
    started: float,
    extra_examples: Sequence[Example] = (),
) -> TrainResult:
    # 1. Data: examples, vocabulary, encoded inputs (see model.training_data).
    rng = np.random.default_rng(config.seed)  # batch order; torch's seed is set by `train`
    context_rng = random.Random(config.seed)  # which comments go into context, and where
    examples = training_examples(config, splits) + list(extra_examples)
    validation = evaluation_examples(config, splits, "validation")
    glove = glove_for(config, progress)
    vocab = build_vocab(config, [tokenize(ex.text, None) for ex in examples], glove)
    model_config = config.model_config(len(vocab), len(labels))
    cache: TokenCache = {}
    encoded, lengths = encode_examples(vocab, model_config, examples, cache)
    targets, mask = label_arrays(examples)
    progress(
        f"training on {len(examples)} examples, vocab {len(vocab)}, "
        f"validating on {len(validation)}, device {device}"
    )

    # 2. Model, optimiser, schedule, loss weights, weight average.
    model = Classifier(model_config).to(device)
    embeddings = _start_from_glove(model, vocab, glove, config, progress)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = _lr_scheduler(optimizer, config, len(examples))
    pos_weight = _pos_weight(config, targets, mask, device)
    ema = Ema(model, config.ema_decay)
    validate = _Validator(validation, vocab, labels, device)
    best_auc, best_epoch, best_state = -math.inf, 0, _cpu_state(model)
    history: list[dict[str, float]] = []
    interactive = progress is not quiet and sys.stderr.isatty()

    # 3. Epochs: this epoch's comments in context join the examples; train on
    #    length-bucketed batches, then validate the averaged weights; keep the best
    #    epoch, stop after `patience` epochs without improvement.
    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        total_loss = 0.0
        placed = context_examples(
            examples, labels, context_rng, config.context_share, config.context_fillers
        )
        placed_rows, placed_lengths = encode_examples(vocab, model_config, placed, cache)
        rows = encoded + placed_rows
        epoch_targets, epoch_mask = _joined(targets, mask, placed)
        batches = length_bucketed_batches(
            np.concatenate([lengths, placed_lengths]), config.batch_size, rng
        )
        bar = ProgressBar(len(batches), f"epoch {epoch}/{config.epochs}", interactive)
        for step, batch in enumerate(batches, start=1):
            logits = example_logits(model, [rows[i] for i in batch], device)
            loss = masked_bce(
                logits,
                torch.from_numpy(epoch_targets[batch]).to(device),
                torch.from_numpy(epoch_mask[batch]).to(device),
                pos_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update(model)
            total_loss += float(loss.item())
            bar.update(step, total_loss / step)
        bar.close()

        with ema.applied(model):  # validate, and keep, the averaged weights
            aucs, validation_loss = validate(model)
            mean_auc = mean_finite(list(aucs.values()))
            record = {
                "epoch": float(epoch),
                "train_loss": total_loss / max(len(batches), 1),
                "validation_loss": validation_loss,
                "validation_mean_auc": mean_auc,
                **{f"validation_auc_{label}": auc for label, auc in aucs.items()},
                "lr": float(scheduler.get_last_lr()[0]),
                "seconds": time.perf_counter() - epoch_start,
            }
            history.append(record)
            auc_text = " ".join(f"{label}={auc:.4f}" for label, auc in aucs.items())
            progress(
                f"epoch {epoch}/{config.epochs} loss {record['train_loss']:.4f} "
                f"val loss {record['validation_loss']:.4f} auc {auc_text} "
                f"({record['seconds']:.1f}s)"
            )
            if mean_auc > best_auc or (best_epoch == 0 and not math.isfinite(best_auc)):
                best_auc, best_epoch, best_state = mean_auc, epoch, _cpu_state(model)
            elif epoch - best_epoch >= config.patience:
                progress(f"early stop: no improvement since epoch {best_epoch}")
                break

    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        vocab=vocab,
        labels=labels,
        config=config,
        best_epoch=best_epoch,
        best_validation_auc=best_auc,
        history=history,
        seconds=time.perf_counter() - started,
        embeddings=embeddings,
    )


def example_logits(
    model: Classifier, examples: Sequence[Sequence[Encoded]], device: torch.device
) -> torch.Tensor:
    """Logits [examples, labels]: each label's maximum over an example's windows, as
    serving takes it (the gradient reaches the deciding window). A batch of one-window
    examples is one forward, exactly as before windows."""
    rows = [row for windows in examples for row in windows]
    logits = forward_batch(model, rows, device)
    if len(rows) == len(examples):
        return logits
    owners = torch.repeat_interleave(
        torch.arange(len(examples), device=logits.device),
        torch.tensor([len(windows) for windows in examples], device=logits.device),
    )
    return logits.new_zeros((len(examples), logits.shape[1])).scatter_reduce(
        0, owners[:, None].expand_as(logits), logits, "amax", include_self=False
    )


def _joined(
    targets: np.ndarray, mask: np.ndarray, placed: Sequence[Example]
) -> tuple[np.ndarray, np.ndarray]:
    """The label arrays of the examples followed by those of `placed`."""
    if not placed:
        return targets, mask
    more_targets, more_mask = label_arrays(placed)
    return np.concatenate([targets, more_targets]), np.concatenate([mask, more_mask])


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean BCE-with-logits over known (mask=1) entries only.

    `torch.where` rather than multiplying by the mask, so even an infinite masked logit
    contributes exactly zero loss and zero gradient. `pos_weight` [labels] scales the
    positive term per label (class weighting); the mean is still over known entries.
    """
    known = mask > 0
    losses = F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none", pos_weight=pos_weight
    )
    losses = torch.where(known, losses, torch.zeros_like(losses))
    return losses.sum() / known.sum().clamp_min(1)


class _Validator:
    """Per-label ROC AUC and log loss on the validation examples, scored through
    `Engine` as served (which leaves the model in eval mode)."""

    def __init__(
        self,
        examples: Sequence[Example],
        vocab: Vocab,
        labels: tuple[str, ...],
        device: torch.device,
    ) -> None:
        self.texts = [ex.text for ex in examples]
        self.targets, self.mask = label_arrays(examples)
        self.vocab, self.labels, self.device = vocab, labels, device

    def __call__(self, model: Classifier) -> tuple[dict[str, float], float]:
        engine = Engine.from_model(model, self.vocab, self.labels, device=self.device)
        probabilities = engine.score(self.texts).probabilities
        aucs = per_label_auc(probabilities, self.targets, self.mask, self.labels)
        return aucs, masked_log_loss(probabilities, self.targets, self.mask)


def _start_from_glove(
    model: Classifier,
    vocab: Vocab,
    glove: GloveVectors | None,
    config: TrainConfig,
    progress: Progress,
) -> dict[str, Any]:
    """Copies GloVe's vectors into the word embedding (frozen with `freeze_glove`);
    returns the coverage recorded in the metrics."""
    if glove is None:
        return {"glove": False}
    matrix, found = embedding_matrix(vocab, glove, np.random.default_rng(config.seed))
    with torch.no_grad():
        model.embedding.weight.copy_(torch.from_numpy(matrix))
    if config.freeze_glove:
        _freeze_rows(model.embedding.weight, glove_rows(vocab, glove))
    progress(f"GloVe: {found}/{len(vocab)} vocabulary tokens initialised ({glove.source})")
    return {"glove": True, "source": glove.source, "covered": found, "vocab": len(vocab)}


def _freeze_rows(weight: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero the gradient of `rows` on every backward pass: Adam then never moves them
    (its moments stay zero), while the other rows train."""
    keep = (~rows).to(weight.dtype).unsqueeze(1)
    weight.register_hook(lambda grad: grad * keep.to(grad.device))  # type: ignore[no-untyped-call]


def _lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, examples: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant, or (`lr_schedule="linear"`) decaying to 10% over `config.epochs`."""
    steps = config.epochs * math.ceil(examples / config.batch_size)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        (lambda step: 1.0 - 0.9 * min(step, steps) / max(steps, 1))
        if config.lr_schedule == "linear"
        else (lambda step: 1.0),
    )


def _pos_weight(
    config: TrainConfig, targets: np.ndarray, mask: np.ndarray, device: torch.device
) -> torch.Tensor | None:
    """The loss weight of each label's positives: none, √(negatives/positives) or the
    ratio itself, counted on the known entries of the training set."""
    if config.pos_weight == "none":
        return None
    known = mask > 0
    positives = ((targets > 0.5) & known).sum(axis=0).clip(min=1)
    negatives = ((targets <= 0.5) & known).sum(axis=0).clip(min=1)
    ratio = negatives / positives
    weights = np.asarray(np.sqrt(ratio) if config.pos_weight == "sqrt" else ratio, np.float32)
    return torch.from_numpy(weights).to(device)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@contextmanager
def torch_settings(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Process-wide torch knobs for the duration of a run, restored afterwards."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, config.num_threads))
    if device.type == "cpu":
        # CUDA would additionally need CUBLAS_WORKSPACE_CONFIG; seeded CPU runs are exact.
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)
