"""Training, threshold selection, evaluation and checkpoint writing.

`train` fits a `Classifier` with Adam on a masked multi-label BCE: each example only
knows some labels (insult comments vs SMS spam), and unknown labels must contribute
neither loss nor gradient. Early stopping watches mean validation ROC AUC, scored
through `Engine` so the number tracked is the number served.

`retrain` is the end-to-end job: load data, train, pick a per-label threshold on
validation (max F1, or the lowest cut reaching a configured precision), measure
validation and test through the serving engine, fit the TF-IDF baseline on the same
splits, and atomically write the checkpoint with metrics, thresholds, the data
fingerprint and the evaluation report (`report/`, see `model.report`).

Training data choices (each a `TrainConfig` field, measured on validation; see README):
- embeddings start from GloVe 6B 100d when `make glove` has cached it (`model.glove`);
- hashed character n-grams per token (`model.subword`) for obfuscated spellings;
- `ema_decay`: validation, early stopping and the saved checkpoint use an exponential
  moving average of the weights rather than the last step's (less noise, same model);
- `comments_spam_negative`: insult-corpus comments train the spam head as negatives.
  Assumption: the Kaggle comments are user comments on news/social sites, not bulk
  advertising, so none is spam. Without it the spam head never sees comment-style
  text and scores abusive comments as spam (it only learned "not SMS ham"). Only the
  training split changes: spam validation/test metrics stay SMS-only, and the
  cross-domain flag rates (spam on comments) are reported separately.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from model.baseline import BaselineUnavailableError, fit_baseline
from model.checkpoint import save_checkpoint
from model.data import SOURCE_INSULTS, SOURCE_SMS, DataSplits, Example, label_counts, load_splits
from model.engine import Engine, TokenCache, encode_text, forward_batch, resolve_device
from model.glove import GloveVectors, embedding_matrix, load_glove
from model.metrics import best_f1_threshold, binary_metrics, precision_threshold, roc_auc
from model.network import Classifier, ModelConfig, Pooling, RnnKind
from model.report import REPORT_DIR, Scored, SplitData, build_report, cross_domain, report_files
from model.subword import lookup_forms
from model.tokenizer import DEFAULT_MAX_TOKENS, tokenize
from model.vocab import SPECIAL_TOKENS, UNK_ID, Vocab

Progress = Callable[[str], None]
LABEL_SOURCES = {"insult": SOURCE_INSULTS, "spam": SOURCE_SMS}  # the corpus labelling each


def _quiet(_: str) -> None:
    pass


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
    pos_weight: PosWeight = "sqrt"  # positive-class loss weight per label
    # Threshold rule per label: "" = max F1 on validation; "0.95" = lowest cut reaching
    # that precision on validation (max F1 if none does); "spam=0.98,insult=0.8" per label.
    target_precision: str = ""
    baseline: bool = True  # fit the TF-IDF baseline too (needs scikit-learn)
    report: bool = True  # write report/ into the checkpoint
    min_freq: int = 2
    max_vocab: int = 40_000
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
        )


def parse_target_precision(spec: str) -> dict[str, float]:
    """ "" → {}; "0.9" → {"*": 0.9}; "spam=0.98,insult=0.8" → per label."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        label, sep, value = part.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"target_precision: {part!r} is not LABEL=PRECISION") from None
        if not 0.0 < number <= 1.0:
            raise ValueError(f"target_precision: {number} must be in (0, 1]")
        out[label.strip() if sep else "*"] = number
    return out


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
    baseline: dict[str, Any] = field(default_factory=dict)  # split → label → metrics
    cross_domain: dict[str, Any] = field(default_factory=dict)
    report_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ loss


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
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    labels: Sequence[str],
    target_precision: dict[str, float] | None = None,
    notes: dict[str, str] | None = None,
) -> dict[str, float]:
    """Per label: max F1, or, where `target_precision` names the label (or "*"), the
    lowest cut whose validation precision reaches it (max F1 if none does). `notes`,
    if given, receives the rule applied per label."""
    known = mask > 0
    wanted = target_precision or {}
    thresholds: dict[str, float] = {}
    for j, label in enumerate(labels):
        y, p = targets[known[:, j], j], probabilities[known[:, j], j]
        goal = wanted.get(label, wanted.get("*"))
        cut = precision_threshold(y, p, goal) if goal is not None else None
        if cut is not None:
            thresholds[label] = cut
            rule = f"precision>={goal:g}"
        else:
            thresholds[label] = best_f1_threshold(y, p)
            rule = "max_f1" if goal is None else f"max_f1 (precision {goal:g} unreachable)"
        if notes is not None:
            notes[label] = rule
    return thresholds


def evaluate(
    engine: Engine, examples: Sequence[Example], thresholds: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per-label metrics, computed on the examples that know the label."""
    probabilities = engine.score([ex.text for ex in examples]).probabilities
    targets, mask = _label_arrays(examples)
    return metrics_from_scores(probabilities, targets, mask, engine.labels, thresholds)


def metrics_from_scores(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    labels: Sequence[str],
    thresholds: dict[str, float],
) -> dict[str, dict[str, Any]]:
    known = mask > 0
    return {
        label: binary_metrics(
            targets[known[:, j], j], probabilities[known[:, j], j], thresholds[label]
        )
        for j, label in enumerate(labels)
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


def training_examples(config: TrainConfig, splits: DataSplits) -> list[Example]:
    """The training split as the model sees it (subset, spam-negative comments)."""
    examples = _subset(splits.train, config.limit, config.seed)
    if config.comments_spam_negative and "spam" in splits.labels:
        examples = [spam_negative(ex, splits.labels) for ex in examples]
    return examples


def spam_negative(example: Example, labels: Sequence[str]) -> Example:
    """An insult-corpus comment that also says "not spam" (see the module docstring)."""
    if example.source != SOURCE_INSULTS:
        return example
    j = list(labels).index("spam")
    targets = tuple(0.0 if i == j else t for i, t in enumerate(example.targets))
    mask = tuple(1.0 if i == j else m for i, m in enumerate(example.mask))
    return replace(example, targets=targets, mask=mask)


def build_vocab(
    config: TrainConfig, token_lists: Sequence[Sequence[str]], glove: GloveVectors | None
) -> Vocab:
    """`Vocab.build` rules, plus (with `glove_min_freq` > 0) rarer tokens GloVe knows,
    plus (with `glove_vocab` = N) GloVe's N most frequent words, which the training
    data need not contain: with `freeze_glove` they keep their pre-trained meaning, so
    words first seen at serving time are not all UNK. Those N come from GloVe's own
    frequency order, never from validation or test text."""
    glove_words = set(glove.words) if glove is not None else set()
    if config.glove_min_freq <= 0 or not glove_words:
        vocab = Vocab.build(token_lists, min_freq=config.min_freq, max_size=config.max_vocab)
    else:
        vocab = _glove_aware_vocab(config, token_lists, glove_words)
    if glove is None or config.glove_vocab <= 0:
        return vocab
    extra = [w for w in glove.words[: config.glove_vocab] if vocab.id_of(w) == UNK_ID]
    room = max(config.max_vocab - len(vocab), 0)
    return Vocab([*vocab.tokens, *[w for w in extra if w not in SPECIAL_TOKENS][:room]])


def _glove_aware_vocab(
    config: TrainConfig, token_lists: Sequence[Sequence[str]], glove_words: set[str]
) -> Vocab:
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    for special in SPECIAL_TOKENS:
        counts.pop(special, None)

    def keep(token: str, count: int) -> bool:
        if count >= config.min_freq:
            return True
        in_glove = any(form in glove_words for form in lookup_forms(token))
        return count >= config.glove_min_freq and in_glove

    ranked = sorted(
        (item for item in counts.items() if keep(*item)), key=lambda item: (-item[1], item[0])
    )
    kept = [token for token, _ in ranked[: config.max_vocab - len(SPECIAL_TOKENS)]]
    return Vocab([*SPECIAL_TOKENS, *kept])


def glove_rows(vocab: Vocab, glove: GloveVectors) -> torch.Tensor:
    """Bool [len(vocab)]: rows whose embedding came from GloVe (see `embedding_matrix`)."""
    known = set(glove.words)
    return torch.tensor(
        [any(form in known for form in lookup_forms(token)) for token in vocab.tokens]
    )


def _freeze_rows(weight: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero the gradient of `rows` on every backward pass: Adam then never moves them
    (its moments stay zero), while the other rows train."""
    keep = (~rows).to(weight.dtype).unsqueeze(1)
    weight.register_hook(lambda grad: grad * keep.to(grad.device))  # type: ignore[no-untyped-call]


def _pos_weight(config: TrainConfig, targets: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    if config.pos_weight == "none":
        return None
    known = mask > 0
    positives = ((targets > 0.5) & known).sum(axis=0).clip(min=1)
    negatives = ((targets <= 0.5) & known).sum(axis=0).clip(min=1)
    ratio = negatives / positives
    return np.asarray(np.sqrt(ratio) if config.pos_weight == "sqrt" else ratio, np.float32)


class _Bar:
    """A one-line batch progress bar on an interactive stderr; silent otherwise (the
    per-epoch lines are the plain progress)."""

    def __init__(self, total: int, prefix: str, enabled: bool) -> None:
        self.total, self.prefix, self.enabled = total, prefix, enabled
        self.started = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if not self.enabled or (done % 5 and done != self.total):
            return
        filled = int(30 * done / max(self.total, 1))
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (self.total - done)
        sys.stderr.write(
            f"\r{self.prefix} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
            f"loss {loss:.4f} eta {eta:4.0f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


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
    train_examples = training_examples(config, splits) + list(extra_examples)
    validation = _subset(splits.validation, config.eval_limit, config.seed + 1)
    glove = None
    embeddings: dict[str, Any] = {"glove": False}
    if config.glove:
        glove = load_glove(Path(config.glove_dir) if config.glove_dir else None)
        if glove is None:
            progress(
                "GloVe: no converted vectors found (run `make glove`); word embeddings start random"
            )
        elif glove.dimensions != config.embed_dim:
            progress(f"GloVe: {glove.dimensions}d vectors but embed_dim {config.embed_dim}; unused")
            glove = None
    token_lists = [tokenize(ex.text, config.max_tokens) for ex in train_examples]
    vocab = build_vocab(config, token_lists, glove)
    model_config = config.model_config(len(vocab), len(labels))
    cache: TokenCache = {}
    encoded = [
        encode_text(vocab, model_config, ex.text, config.max_tokens, cache) for ex in train_examples
    ]
    lengths = np.asarray([len(e.ids) for e in encoded], dtype=np.int64)
    targets, mask = _label_arrays(train_examples)
    val_targets, val_mask = _label_arrays(validation)
    val_texts = [ex.text for ex in validation]
    progress(
        f"training on {len(train_examples)} examples, vocab {len(vocab)}, "
        f"validating on {len(validation)}, device {device}"
    )

    model = Classifier(model_config).to(device)
    if glove is not None:
        matrix, found = embedding_matrix(vocab, glove, np.random.default_rng(config.seed))
        with torch.no_grad():
            model.embedding.weight.copy_(torch.from_numpy(matrix))
        embeddings = {"glove": True, "source": glove.source, "covered": found, "vocab": len(vocab)}
        if config.freeze_glove:
            _freeze_rows(model.embedding.weight, glove_rows(vocab, glove))
        progress(f"GloVe: {found}/{len(vocab)} vocabulary tokens initialised ({glove.source})")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * math.ceil(len(train_examples) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        (lambda step: 1.0 - 0.9 * min(step, steps) / max(steps, 1))
        if config.lr_schedule == "linear"
        else (lambda step: 1.0),
    )
    weights = _pos_weight(config, targets, mask)
    pos_weight = None if weights is None else torch.from_numpy(weights).to(device)
    best_auc, best_epoch, best_state = -math.inf, 0, _cpu_state(model)
    ema = _Ema(model, config.ema_decay) if config.ema_decay > 0 else None
    history: list[dict[str, float]] = []
    interactive = progress is not _quiet and sys.stderr.isatty()

    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        total_loss, total_batches = 0.0, 0
        batches = length_bucketed_batches(lengths, config.batch_size, rng)
        bar = _Bar(len(batches), f"epoch {epoch}/{config.epochs}", interactive)
        for batch in batches:
            logits = forward_batch(model, [encoded[i] for i in batch], device)
            loss = masked_bce(
                logits,
                torch.from_numpy(targets[batch]).to(device),
                torch.from_numpy(mask[batch]).to(device),
                pos_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            total_loss += float(loss.item())
            total_batches += 1
            bar.update(total_batches, total_loss / total_batches)
        bar.close()

        raw_state = None
        if ema is not None:
            raw_state = _cpu_state(model)
            ema.copy_to(model)
        engine = Engine.from_model(
            model, vocab, labels, device=device, max_tokens=config.max_tokens, cpu_threads=None
        )
        val_probs = engine.score(val_texts).probabilities
        aucs = per_label_auc(val_probs, val_targets, val_mask, labels)
        mean_auc = mean_finite(list(aucs.values()))
        record = {
            "epoch": float(epoch),
            "train_loss": total_loss / max(total_batches, 1),
            "validation_loss": _masked_log_loss(val_probs, val_targets, val_mask),
            "validation_mean_auc": mean_auc,
            **{f"validation_auc_{label}": auc for label, auc in aucs.items()},
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        auc_text = " ".join(f"{label}={auc:.4f}" for label, auc in aucs.items())
        progress(
            f"epoch {epoch}/{config.epochs} loss {record['train_loss']:.4f} "
            f"val loss {record['validation_loss']:.4f} auc {auc_text} ({record['seconds']:.1f}s)"
        )
        if mean_auc > best_auc or (best_epoch == 0 and not math.isfinite(best_auc)):
            best_auc, best_epoch, best_state = mean_auc, epoch, _cpu_state(model)
        elif epoch - best_epoch >= config.patience:
            progress(f"early stop: no improvement since epoch {best_epoch}")
            break
        if raw_state is not None:
            model.load_state_dict(raw_state)  # training goes on from the raw weights

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


class _Ema:
    """Exponential moving average of a model's floating-point state with a constant
    `decay` per optimizer step (a horizon of about 1 / (1 - decay) steps), started at
    zero and bias-corrected like Adam's moments, so the starting weights never linger."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay, self.steps = decay, 0
        self.state = {
            k: torch.zeros_like(v) for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        current = model.state_dict()
        for name, average in self.state.items():
            average.lerp_(current[name].detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        correction = 1.0 / (1.0 - self.decay**self.steps) if self.steps else 1.0
        current = model.state_dict()
        for name, average in self.state.items():
            current[name].copy_(average * correction)


def _masked_log_loss(probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean binary log loss over known entries (the validation curve beside train loss)."""
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    losses = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    known = mask > 0
    return float(losses[known].mean()) if known.any() else math.nan


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
        return _evaluate_and_save(
            output_dir, config, splits, result, progress, started, extra_examples
        )


def _evaluate_and_save(
    output_dir: str | Path,
    config: TrainConfig,
    splits: DataSplits,
    result: TrainResult,
    progress: Progress,
    started: float,
    extra_examples: Sequence[Example] = (),
) -> RetrainReport:
    labels = result.labels
    engine = Engine.from_model(
        result.model,
        result.vocab,
        labels,
        device=config.device,
        max_tokens=config.max_tokens,
        cpu_threads=None,
    )
    parts = {
        "validation": _subset(splits.validation, config.eval_limit, config.seed + 1),
        "test": _subset(splits.test, config.eval_limit, config.seed + 2),
    }
    data = {
        name: SplitData(*_label_arrays(examples), [ex.source for ex in examples])
        for name, examples in parts.items()
    }
    texts = {name: [ex.text for ex in examples] for name, examples in parts.items()}
    probs = {name: engine.score(texts[name]).probabilities for name in parts}
    rules = parse_target_precision(config.target_precision)
    notes: dict[str, str] = {}
    val = data["validation"]
    thresholds = choose_thresholds(probs["validation"], val.targets, val.mask, labels, rules, notes)
    lstm = {name: Scored(probs[name], thresholds) for name in parts}
    measured = {
        name: metrics_from_scores(probs[name], d.targets, d.mask, labels, thresholds)
        for name, d in data.items()
    }
    models = {"lstm": lstm}

    baseline_metrics: dict[str, Any] = {}
    baseline_seconds = 0.0
    if config.baseline:
        try:
            baseline = fit_baseline(
                training_examples(config, splits) + list(extra_examples), labels, config.seed
            )
        except BaselineUnavailableError as e:
            progress(f"baseline: skipped ({e})")
        else:
            baseline_seconds = baseline.seconds
            b_probs = {name: baseline.predict(texts[name]) for name in parts}
            b_thresholds = choose_thresholds(
                b_probs["validation"], val.targets, val.mask, labels, rules
            )
            models["baseline"] = {name: Scored(b_probs[name], b_thresholds) for name in parts}
            baseline_metrics = {
                "name": baseline.name,
                **{
                    name: metrics_from_scores(
                        b_probs[name], d.targets, d.mask, labels, b_thresholds
                    )
                    for name, d in data.items()
                },
            }
    crossed = {
        model_name: {
            name: cross_domain(data[name], scored[name], labels, LABEL_SOURCES) for name in parts
        }
        for model_name, scored in models.items()
    }

    metrics = {
        "validation": measured["validation"],
        "test": measured["test"],
        "training": {
            "best_epoch": result.best_epoch,
            "best_validation_mean_auc": result.best_validation_auc,
            "seconds": result.seconds,
            "train_examples": min(len(splits.train), config.limit or len(splits.train)),
            "history": result.history,
            "embeddings": result.embeddings,
        },
        "train_config": asdict(config),
        "threshold_rules": notes,
        "baseline": baseline_metrics,
        "cross_domain": crossed,
    }
    report: dict[str, Any] | None = None
    if config.report:
        report = build_report(
            labels,
            data,
            models,
            LABEL_SOURCES,
            {
                "data_fingerprint": splits.fingerprint,
                "data": {
                    "fingerprint": splits.fingerprint,
                    **{
                        f"{name} examples (known, positive)": label_counts(examples)
                        for name, examples in (("train", splits.train), *parts.items())
                    },
                    "embeddings": result.embeddings,
                },
                "thresholds": thresholds,
                "threshold_rules": notes,
                "best_epoch": result.best_epoch,
                "history": result.history,
                "config": asdict(config),
                "timings": {
                    "lstm training": result.seconds,
                    "baseline fit": baseline_seconds,
                    "until report": time.perf_counter() - started,
                },
            },
        )

    def extra_files(version: str, created_at: str) -> dict[str, bytes]:
        if report is None:
            return {}
        return report_files({**report, "version": version, "created_at": created_at})

    version = save_checkpoint(
        output_dir,
        result.model,
        result.vocab,
        labels,
        thresholds,
        metrics=metrics,
        data_fingerprint=splits.fingerprint,
        extra_files=extra_files,
    )
    _verify_written(output_dir, version, engine, texts["validation"][:64])
    for split_name in parts:
        for model_name, split_metrics in (
            ("lstm", measured[split_name]),
            ("baseline", baseline_metrics.get(split_name, {})),
        ):
            for label, m in split_metrics.items():
                progress(
                    f"{split_name} {label} {model_name}: auc {m['roc_auc']:.4f} f1 {m['f1']:.4f} "
                    f"precision {m['precision']:.4f} recall {m['recall']:.4f} "
                    f"@ {m['threshold']:.3f} (n={m['examples']})"
                )
    for what, c in crossed["lstm"]["validation"].items():
        progress(f"validation {what} lstm: flag rate {c['flag_rate']:.4f} (n={c['examples']})")
    report_dir = str(Path(output_dir) / REPORT_DIR) if report is not None else None
    progress(
        f"wrote checkpoint {version} to {output_dir}"
        + (f", report in {report_dir}" if report_dir else "")
    )
    return RetrainReport(
        output_dir=str(output_dir),
        version=version,
        labels=labels,
        thresholds=thresholds,
        validation=measured["validation"],
        test=measured["test"],
        data_fingerprint=splits.fingerprint,
        best_epoch=result.best_epoch,
        train_seconds=result.seconds,
        total_seconds=time.perf_counter() - started,
        config=asdict(config),
        baseline=baseline_metrics,
        cross_domain=crossed,
        report_dir=report_dir,
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
