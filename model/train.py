"""Training: the loop that fits a `Classifier` to a `TrainConfig`.

`train` fits a `Classifier` with Adam on a masked multi-label BCE: each example only
knows some labels (insult comments vs SMS spam), and unknown labels must contribute
neither loss nor gradient (`model.loss`). Early stopping watches mean validation ROC
AUC, scored through `Engine` so the number tracked is the number served. `model.build.retrain`
wraps it into the whole job (evaluate, report, save, verify).

See `model.train_config` for the data and model choices a run makes.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.data import DataSplits, Example
from model.ema import Ema
from model.encoding import TokenCache
from model.engine import Engine, resolve_device
from model.evaluation import (
    evaluation_examples,
    masked_log_loss,
    mean_finite,
    per_label_auc,
)
from model.glove import GloveVectors, embedding_matrix
from model.loss import example_logits, masked_bce, positive_weights
from model.network import Classifier
from model.progress import Progress, ProgressBar, quiet
from model.tokenizer import tokenize
from model.train_config import TrainConfig
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
    pos_weight = positive_weights(config.pos_weight, targets, mask, device)
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


def _joined(
    targets: np.ndarray, mask: np.ndarray, placed: Sequence[Example]
) -> tuple[np.ndarray, np.ndarray]:
    """The label arrays of the examples followed by those of `placed`."""
    if not placed:
        return targets, mask
    more_targets, more_mask = label_arrays(placed)
    return np.concatenate([targets, more_targets]), np.concatenate([mask, more_mask])


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
