"""`TrainConfig`: every choice a training run makes, validated when it is built.

Why its own module: the flags (`worker.train_flags`), the data preparation
(`model.training_data`), evaluation and the store's refresh all read the config
without needing the training loop (`model.train`) or torch's optimiser.

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

from dataclasses import dataclass
from typing import Any, Literal

from model.evaluation import parse_target_precision
from model.network import ModelConfig, Pooling, RnnKind
from model.reading import DEFAULT_STRIDE, DEFAULT_WINDOW_TOKENS

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
