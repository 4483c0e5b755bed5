"""Training, threshold selection, evaluation and checkpoint writing.

`train` fits a `Classifier` with Adam on a masked multi-label BCE: each example only
knows some labels (insult comments vs SMS spam), and unknown labels must contribute
neither loss nor gradient. Early stopping watches mean validation ROC AUC, scored
through `Engine` so the number tracked is the number served.

`retrain` is the end-to-end job: load data, train, pick a per-label threshold on
validation (max F1), measure validation and test through the serving engine, and
atomically write the checkpoint with metrics, thresholds and the data fingerprint.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import default_checkpoint_dir, save_checkpoint
from model.data import DataSplits, Example, load_splits
from model.engine import Engine, resolve_device
from model.metrics import best_f1_threshold, binary_metrics, roc_auc
from model.network import Classifier, ModelConfig, Pooling, RnnKind
from model.tokenizer import DEFAULT_MAX_TOKENS, tokenize
from model.vocab import PAD_ID, UNK_ID, Vocab

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1234
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    embed_dim: int = 100
    hidden_dim: int = 64
    layers: int = 1
    rnn: RnnKind = "lstm"
    bidirectional: bool = True
    dropout: float = 0.3
    pooling: Pooling = "mean"
    min_freq: int = 2
    max_vocab: int = 20_000
    max_tokens: int = DEFAULT_MAX_TOKENS
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
            device="cpu",
        )
        return cls(**{**base, **overrides})

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


@dataclass
class RetrainReport:
    output_dir: str
    version: str
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    validation: dict[str, dict[str, Any]]  # label → metrics
    test: dict[str, dict[str, Any]]
    data_fingerprint: str
    best_epoch: int
    train_seconds: float
    total_seconds: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ loss


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over known (mask=1) entries only.

    `torch.where` rather than multiplying by the mask, so even an infinite masked logit
    contributes exactly zero loss and zero gradient.
    """
    known = mask > 0
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    losses = torch.where(known, losses, torch.zeros_like(losses))
    return losses.sum() / known.sum().clamp_min(1)


# -------------------------------------------------------------------------- batching


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool_batches: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples.

    Shuffle, sort within pools of `pool_batches` batches, cut, shuffle batch order:
    little padding, yet every epoch sees different batch compositions.
    """
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _subset(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
    """Deterministic random subset, so a capped run still mixes both sources."""
    if limit is None or limit >= len(examples):
        return list(examples)
    keep = np.random.default_rng(seed).permutation(len(examples))[:limit]
    return [examples[i] for i in sorted(keep)]


def _label_arrays(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray([ex.targets for ex in examples], dtype=np.float32)
    mask = np.asarray([ex.mask for ex in examples], dtype=np.float32)
    return targets, mask


# ------------------------------------------------------------------------ evaluation


def per_label_auc(
    probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    known = mask > 0
    return {
        label: roc_auc(targets[known[:, j], j], probabilities[known[:, j], j])
        for j, label in enumerate(labels)
    }


def mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def choose_thresholds(
    probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    known = mask > 0
    return {
        label: best_f1_threshold(targets[known[:, j], j], probabilities[known[:, j], j])
        for j, label in enumerate(labels)
    }


def evaluate(
    engine: Engine, examples: Sequence[Example], thresholds: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per-label metrics, computed on the examples that know the label."""
    probabilities = engine.score([ex.text for ex in examples]).probabilities
    targets, mask = _label_arrays(examples)
    known = mask > 0
    return {
        label: binary_metrics(
            targets[known[:, j], j], probabilities[known[:, j], j], thresholds[label]
        )
        for j, label in enumerate(engine.labels)
    }


# -------------------------------------------------------------------------- training


def train(
    config: TrainConfig,
    splits: DataSplits,
    progress: Progress = _quiet,
    extra_examples: Sequence[Example] = (),
) -> TrainResult:
    """`extra_examples` (e.g. moderator feedback) always train, whatever `config.limit`."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    with _torch_settings(config, device):
        torch.manual_seed(config.seed)
        return _train(config, splits, splits.labels, device, progress, started, extra_examples)


@contextmanager
def _torch_settings(config: TrainConfig, device: torch.device) -> Iterator[None]:
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


def _train(
    config: TrainConfig,
    splits: DataSplits,
    labels: tuple[str, ...],
    device: torch.device,
    progress: Progress,
    started: float,
    extra_examples: Sequence[Example] = (),
) -> TrainResult:
    rng = np.random.default_rng(config.seed)
    train_examples = _subset(splits.train, config.limit, config.seed) + list(extra_examples)
    validation = _subset(splits.validation, config.eval_limit, config.seed + 1)
    token_lists = [tokenize(ex.text, config.max_tokens) for ex in train_examples]
    vocab = Vocab.build(token_lists, min_freq=config.min_freq, max_size=config.max_vocab)
    encoded = [vocab.encode(tokens) or [UNK_ID] for tokens in token_lists]
    lengths = np.asarray([len(ids) for ids in encoded], dtype=np.int64)
    targets, mask = _label_arrays(train_examples)
    val_targets, val_mask = _label_arrays(validation)
    val_texts = [ex.text for ex in validation]
    progress(
        f"training on {len(train_examples)} examples, vocab {len(vocab)}, "
        f"validating on {len(validation)}, device {device}"
    )

    model = Classifier(config.model_config(len(vocab), len(labels))).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    best_auc, best_epoch, best_state = -math.inf, 0, _cpu_state(model)
    history: list[dict[str, float]] = []

    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        total_loss, total_batches = 0.0, 0
        for batch in length_bucketed_batches(lengths, config.batch_size, rng):
            width = int(lengths[batch].max())
            ids = np.full((len(batch), width), PAD_ID, dtype=np.int64)
            for row, index in enumerate(batch):
                ids[row, : lengths[index]] = encoded[index]
            logits = model(torch.from_numpy(ids).to(device), torch.from_numpy(lengths[batch]))
            loss = masked_bce(
                logits,
                torch.from_numpy(targets[batch]).to(device),
                torch.from_numpy(mask[batch]).to(device),
            )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total_loss += float(loss.item())
            total_batches += 1

        engine = Engine.from_model(
            model, vocab, labels, device=device, max_tokens=config.max_tokens, cpu_threads=None
        )
        val_probs = engine.score(val_texts).probabilities
        aucs = per_label_auc(val_probs, val_targets, val_mask, labels)
        mean_auc = mean_finite(list(aucs.values()))
        record = {
            "epoch": float(epoch),
            "train_loss": total_loss / max(total_batches, 1),
            "validation_mean_auc": mean_auc,
            **{f"validation_auc_{label}": auc for label, auc in aucs.items()},
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        auc_text = " ".join(f"{label}={auc:.4f}" for label, auc in aucs.items())
        progress(
            f"epoch {epoch}/{config.epochs} loss {record['train_loss']:.4f} "
            f"val auc {auc_text} ({record['seconds']:.1f}s)"
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
    )


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- retrain


def retrain(
    output_dir: str | Path,
    config: TrainConfig | None = None,
    progress: Progress = _quiet,
    splits: DataSplits | None = None,
    extra_examples: Sequence[Example] = (),
) -> RetrainReport:
    """Load data, train, evaluate through `Engine`, write the checkpoint atomically.

    `extra_examples` join the training set (see `model.data.merge_feedback`).
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    splits = splits or load_splits()
    progress(
        f"data: train {len(splits.train)}, validation {len(splits.validation)}, "
        f"test {len(splits.test)}, fingerprint {splits.fingerprint[:12]}"
    )
    result = train(config, splits, progress, extra_examples)
    with _torch_settings(config, resolve_device(config.device)):
        return _evaluate_and_save(output_dir, config, splits, result, progress, started)


def _evaluate_and_save(
    output_dir: str | Path,
    config: TrainConfig,
    splits: DataSplits,
    result: TrainResult,
    progress: Progress,
    started: float,
) -> RetrainReport:
    engine = Engine.from_model(
        result.model,
        result.vocab,
        result.labels,
        device=config.device,
        max_tokens=config.max_tokens,
        cpu_threads=None,
    )
    validation = _subset(splits.validation, config.eval_limit, config.seed + 1)
    test = _subset(splits.test, config.eval_limit, config.seed + 2)
    val_probs = engine.score([ex.text for ex in validation]).probabilities
    val_targets, val_mask = _label_arrays(validation)
    thresholds = choose_thresholds(val_probs, val_targets, val_mask, result.labels)
    val_metrics = evaluate(engine, validation, thresholds)
    test_metrics = evaluate(engine, test, thresholds)

    metrics = {
        "validation": val_metrics,
        "test": test_metrics,
        "training": {
            "best_epoch": result.best_epoch,
            "best_validation_mean_auc": result.best_validation_auc,
            "seconds": result.seconds,
            "train_examples": min(len(splits.train), config.limit or len(splits.train)),
            "history": result.history,
        },
        "train_config": asdict(config),
    }
    version = save_checkpoint(
        output_dir,
        result.model,
        result.vocab,
        result.labels,
        thresholds,
        metrics=metrics,
        data_fingerprint=splits.fingerprint,
    )
    _verify_written(output_dir, version, engine, [ex.text for ex in validation[:64]])
    for split_name, split_metrics in (("validation", val_metrics), ("test", test_metrics)):
        for label, m in split_metrics.items():
            progress(
                f"{split_name} {label}: auc {m['roc_auc']:.4f} f1 {m['f1']:.4f} "
                f"precision {m['precision']:.4f} recall {m['recall']:.4f} "
                f"@ {m['threshold']:.3f} (n={m['examples']})"
            )
    progress(f"wrote checkpoint {version} to {output_dir}")
    return RetrainReport(
        output_dir=str(output_dir),
        version=version,
        labels=result.labels,
        thresholds=thresholds,
        validation=val_metrics,
        test=test_metrics,
        data_fingerprint=splits.fingerprint,
        best_epoch=result.best_epoch,
        train_seconds=result.seconds,
        total_seconds=time.perf_counter() - started,
        config=asdict(config),
    )


def validation_subset(config: TrainConfig, splits: DataSplits) -> list[Example]:
    """The validation examples `retrain` measures on, so another model can be compared
    on exactly the same data (the promotion gate)."""
    return _subset(splits.validation, config.eval_limit, config.seed + 1)


def _verify_written(directory: str | Path, version: str, engine: Engine, texts: list[str]) -> None:
    """Reload what was written and check it scores like the in-memory model did."""
    loaded = Engine.load(
        directory, device=str(engine.device), max_tokens=engine.max_tokens, cpu_threads=None
    )
    if loaded.version != version:
        raise RuntimeError(f"reloaded checkpoint has version {loaded.version}, wrote {version}")
    if texts:
        expected = engine.score(texts).probabilities
        got = loaded.score(texts).probabilities
        if not np.allclose(expected, got, atol=1e-5):
            raise RuntimeError("reloaded checkpoint scores differ from the trained model")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m model.train [--out DIR] [--tiny] [--epochs N] ...`"""
    parser = argparse.ArgumentParser(description="Train a modstream checkpoint.")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke config")
    for name, kind in (("epochs", int), ("hidden_dim", int), ("limit", int), ("seed", int)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    overrides = {
        name: getattr(args, name)
        for name in ("epochs", "hidden_dim", "limit", "seed", "device")
        if getattr(args, name) is not None
    }
    config = TrainConfig.tiny(**overrides) if args.tiny else TrainConfig(**overrides)
    report = retrain(args.out or default_checkpoint_dir(), config, progress=print)
    print(json.dumps(report.to_dict(), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
