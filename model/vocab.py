"""Token ↔ id mapping, built once from training data and frozen into the checkpoint.

Ids 0 and 1 are fixed (`PAD_ID`, `UNK_ID`) because the network relies on them: the
embedding's `padding_idx` is 0, and the engine encodes an empty message as one UNK.
Ordering is by descending count then token, so the same corpus always yields the same
ids regardless of dict or set iteration order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN)


class Vocab:
    """Immutable after construction; `tokens[i]` is the token with id `i`."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if tuple(tokens[:2]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}, got {tuple(tokens[:2])}")
        if not all(isinstance(t, str) for t in tokens):
            raise ValueError("vocab tokens must all be strings")
        self.tokens: tuple[str, ...] = tuple(tokens)
        self._ids: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            raise ValueError("vocab tokens must be unique")

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        min_freq: int = 2,
        max_size: int = 20_000,
        keep: Callable[[str, int], bool] | None = None,
    ) -> Vocab:
        """Rare tokens are left to UNK so the model learns a useful UNK embedding.

        A token is kept when it occurs `min_freq` times, or, with `keep`, when
        `keep(token, count)` says so; the most frequent `max_size` ids win."""
        if max_size < len(SPECIAL_TOKENS):
            raise ValueError(f"max_size must be at least {len(SPECIAL_TOKENS)}")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        wanted = keep or (lambda _token, count: count >= min_freq)
        ranked = sorted(
            (item for item in counts.items() if wanted(*item)),
            key=lambda item: (-item[1], item[0]),
        )
        kept = [token for token, _ in ranked[: max_size - len(SPECIAL_TOKENS)]]
        return cls([*SPECIAL_TOKENS, *kept])

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.tokens)

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def id_of(self, token: str) -> int:
        return self._ids.get(token, UNK_ID)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self._ids.get
        return [get(token, UNK_ID) for token in tokens]

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocab:
        tokens = data.get("tokens") if isinstance(data, Mapping) else None
        if not isinstance(tokens, list):
            raise ValueError("vocab.tokens must be a list of strings")
        return cls(tokens)
