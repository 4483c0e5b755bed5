"""The classifier: embeddings → packed (Bi)LSTM/GRU → pooling → one logit per label.

Each token is its word embedding, concatenated (when `subword_buckets` > 0) with the
mean of its hashed character n-gram embeddings (see `model.subword`), so obfuscated
and unseen spellings still carry meaning.

Sequences are packed so the recurrent layer never runs over padding: a message scores
the same alone or in a padded batch, which is what lets the engine batch freely.
Pooling must respect the same rule, so `mean`/`max`/`meanmax` reduce over the packed
steps themselves, per row (`meanmax` concatenates the two). `forward_packed` is the
part after the embeddings, so the serving engine can pack cached token vectors itself
(`model.vectors`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from model.reading import DEFAULT_STRIDE, DEFAULT_WINDOW_TOKENS
from model.vocab import PAD_ID

RnnKind = Literal["lstm", "gru"]
Pooling = Literal["last", "mean", "max", "meanmax"]
RNN_KINDS: tuple[str, ...] = ("lstm", "gru")
POOLINGS: tuple[str, ...] = ("last", "mean", "max", "meanmax")
WINDOW_FIELDS: tuple[str, ...] = ("window_tokens", "window_stride")  # optional when loading


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    num_labels: int
    embed_dim: int = 100
    hidden_dim: int = 64
    num_layers: int = 1
    rnn: RnnKind = "lstm"
    bidirectional: bool = True
    dropout: float = 0.3
    pooling: Pooling = "mean"
    subword_buckets: int = 0  # 0 = no sub-word embeddings
    subword_dim: int = 32
    subword_min_n: int = 3
    subword_max_n: int = 5
    # How the model reads a text (`model.windows`): windows of at most `window_tokens`
    # tokens every `window_stride` tokens, a label's score the maximum over them. The
    # network itself never sees these; the engine and training read texts with them.
    window_tokens: int = DEFAULT_WINDOW_TOKENS
    window_stride: int = DEFAULT_STRIDE

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "num_labels",
            "embed_dim",
            "hidden_dim",
            "num_layers",
            "window_tokens",
            "window_stride",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("subword_buckets", "subword_dim", "subword_min_n", "subword_max_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.subword_buckets and not 1 <= self.subword_min_n <= self.subword_max_n:
            raise ValueError("subword n-gram sizes must satisfy 1 <= subword_min_n <= max_n")
        if self.subword_buckets and self.subword_dim < 1:
            raise ValueError("subword_dim must be positive when subword_buckets > 0")
        if self.window_stride > self.window_tokens:
            raise ValueError(
                f"window_stride {self.window_stride} exceeds window_tokens {self.window_tokens}"
            )
        if self.vocab_size < 2:
            raise ValueError("vocab_size must be at least 2 (PAD and UNK)")
        if self.rnn not in RNN_KINDS:
            raise ValueError(f"rnn must be one of {RNN_KINDS}, got {self.rnn!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"bidirectional must be a bool, got {self.bidirectional!r}")
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise ValueError(f"dropout must be a number, got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def token_dim(self) -> int:
        return self.embed_dim + (self.subword_dim if self.subword_buckets else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Strict: unknown or missing keys are errors, so a checkpoint can't half-load;
        only the window fields, added later, may be absent (the defaults then apply).
        (Fields of removed features are the checkpoint loader's business, see
        `model.checkpoint.RETIRED_CONFIG_FIELDS`.)"""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}")
        missing = sorted(known - set(data) - set(WINDOW_FIELDS))
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        return cls(**data)


class Classifier(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.subword: nn.EmbeddingBag | None = None
        if config.subword_buckets:
            self.subword = nn.EmbeddingBag(config.subword_buckets, config.subword_dim, mode="mean")
            nn.init.normal_(self.subword.weight, std=0.1)
        self.dropout = nn.Dropout(config.dropout)
        rnn_cls = nn.LSTM if config.rnn == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            input_size=config.token_dim,
            hidden_size=config.hidden_dim,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        features = config.hidden_dim * config.num_directions
        if config.pooling == "meanmax":
            features *= 2
        self.head = nn.Linear(features, config.num_labels)

    def embed(
        self,
        token_ids: torch.Tensor,
        subword_ids: torch.Tensor | None = None,
        subword_offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each token's input vector before dropout, `[*token_ids.shape, token_dim]`.

        It depends on the token alone (its id and its sub-words), which is what lets
        the serving engine compute it once per distinct token (`model.vectors`).
        """
        x: torch.Tensor = self.embedding(token_ids)
        if self.subword is not None:
            if subword_ids is None or subword_offsets is None:
                raise ValueError("this model needs subword_ids and subword_offsets")
            bags = self.subword(subword_ids, subword_offsets)  # [numel, S]
            x = torch.cat([x, bags.view(*token_ids.shape, -1)], dim=-1)
        return x

    def forward(
        self,
        token_ids: torch.Tensor,
        lengths: torch.Tensor,
        subword_ids: torch.Tensor | None = None,
        subword_offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """token_ids: [B, T] long on the model's device; lengths: [B] long on CPU, ≥ 1;
        with sub-words, `model.subword.subword_batch` output for the same [B, T] grid.

        Returns logits [B, num_labels].
        """
        x = self.dropout(self.embed(token_ids, subword_ids, subword_offsets))  # [B, T, D]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return self.forward_packed(packed)

    def forward_packed(self, packed: PackedSequence) -> torch.Tensor:
        """Logits [B, num_labels] for token vectors already packed (after dropout), in
        the packed batch's original row order."""
        packed_out, hidden = self.rnn(packed)

        if self.config.pooling == "last":
            # Final hidden state per direction; for the backward direction that is the
            # state after reading the first token, i.e. a summary of the whole message.
            h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # [layers*dirs, B, H]
            if self.config.bidirectional:
                features = torch.cat([h_n[-2], h_n[-1]], dim=1)
            else:
                features = h_n[-1]
        else:
            # Pooled straight from the packed steps: no padded copy, so a bucket may mix
            # any lengths and costs only its real tokens.
            steps = packed_out.data  # [N, D]
            rows = packed_rows(packed_out)  # [N], each step's row
            batch = int(packed_out.batch_sizes[0])
            pooled = []
            if self.config.pooling in ("mean", "meanmax"):
                summed = steps.new_zeros(batch, steps.shape[1]).index_add_(0, rows, steps)
                lengths = torch.bincount(rows, minlength=batch).to(steps.dtype)
                pooled.append(summed / lengths[:, None])
            if self.config.pooling in ("max", "meanmax"):
                pooled.append(
                    steps.new_full((batch, steps.shape[1]), float("-inf")).scatter_reduce_(
                        0, rows[:, None].expand_as(steps), steps, "amax"
                    )
                )
            features = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)

        return cast(torch.Tensor, self.head(self.dropout(features)))


def packed_rows(packed: PackedSequence) -> torch.Tensor:
    """The row (in the batch's original order) of every step in `packed.data`.

    Packed data is time-major: step t holds the first `batch_sizes[t]` rows of the
    length-sorted batch, so the sorted row of each step is its column in that mask.
    """
    sizes = packed.batch_sizes
    present = torch.arange(int(sizes[0]))[None, :] < sizes[:, None]  # [T, B]
    rows = present.nonzero()[:, 1].to(packed.data.device)
    if packed.sorted_indices is not None:
        rows = packed.sorted_indices[rows]
    return rows
