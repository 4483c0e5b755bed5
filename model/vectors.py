"""Per-token input vectors, computed once per distinct token instead of per occurrence.

In eval mode a token's input to the recurrent layer (its word embedding, plus the
mean of its sub-word embeddings) depends on the token alone. Serving caches it in a
table, so a bucket of messages becomes one `index_select` of cached rows, packed
directly (`pack_rows`): no per-token Python building sub-word bags, no embedding
lookups and no pad-then-pack copies on the scoring thread. A new token costs one row,
computed with the other new tokens of its batch in a single call.

Threading: one thread encodes (assigns slots, fills new rows) while another scores
earlier batches. A batch keeps a reference to the table it was encoded against; rows
are written only to slots that no earlier batch refers to, and growing or resetting
the table makes a new tensor, so a scorer never sees a row change under it.

The cached rows are only valid for the weights they were computed with: an engine
must not be used after its model's weights change.

Memory is bounded in bytes (`max_bytes`, 64 MiB by default): the table's allocated
rows (`token_dim` float32 each) plus, per cached token, its key (`sys.getsizeof`) and
`SLOT_OVERHEAD` for its dict entry. A table at or past the budget is started afresh
before the next batch (slots cannot be evicted one by one while earlier batches may
still read them), so it holds at most the budget plus one batch's new tokens. The
bound used to be 100,000 slots, whatever the tokens' length: their keys alone could
grow without limit before the tokenizer capped tokens at 64 characters.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

from model.network import Classifier
from model.subword import subword_batch

# 64 MiB: 98,000 tokens of the default model (rows of 100 + 32 float32 = 528 bytes,
# keys of 56 bytes on average), about what the old 100,000-slot bound held. The 11,456
# corpus texts hold 22,724 distinct tokens, and warm-up adds the vocabulary (22,364
# for the default checkpoint).
DEFAULT_MAX_BYTES = 64 << 20
INITIAL_SLOTS = 4096
SLOT_OVERHEAD = 100  # bytes per cached token besides its key: dict entry and index


class TokenVectors:
    def __init__(
        self,
        model: Classifier,
        device: torch.device,
        max_bytes: int = DEFAULT_MAX_BYTES,
        initial_slots: int = INITIAL_SLOTS,
    ) -> None:
        self.model = model
        self.device = device
        self.max_bytes = max_bytes
        self.initial_slots = initial_slots
        self.row_bytes = model.config.token_dim * torch.finfo(torch.float32).bits // 8
        self.resets = 0
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._slots: dict[str, int] = {}
        self._key_bytes = 0
        self._table = torch.empty(
            (self.initial_slots, self.model.config.token_dim), device=self.device
        )

    @property
    def bytes(self) -> int:
        """What the cache holds now: the table's allocated rows and the tokens' keys."""
        return self._table.shape[0] * self.row_bytes + self._key_bytes

    def assign(
        self,
        tokens: Sequence[str],
        describe: Callable[[Sequence[str]], tuple[Sequence[int], Sequence[tuple[int, ...]]]],
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Slots for `tokens` (a batch's, concatenated), and the table that holds them.

        `describe` gives new tokens' vocabulary ids and sub-word buckets (an empty
        sequence for models without sub-words). A table at or past `max_bytes` is
        started afresh first, so it holds at most `max_bytes` plus one batch's new
        tokens.
        """
        with self._lock:
            if self.bytes >= self.max_bytes:
                self._reset()
                self.resets += 1
            slots = self._slots
            found = list(map(slots.get, tokens))
            if None in found:
                new_tokens: list[str] = []
                for position, slot in enumerate(found):
                    if slot is None:
                        token = tokens[position]
                        slot = slots.get(token)
                        if slot is None:
                            slot = slots[token] = len(slots)
                            new_tokens.append(token)
                        found[position] = slot
                key_bytes = sum(map(sys.getsizeof, new_tokens)) + SLOT_OVERHEAD * len(new_tokens)
                self._key_bytes += key_bytes
                try:
                    self._fill(*describe(new_tokens))
                except BaseException:
                    for token in new_tokens:  # no slot may point at a row never written
                        del slots[token]
                    self._key_bytes -= key_bytes
                    raise
            return np.array(found, dtype=np.int64), self._table

    def _fill(self, ids: Sequence[int], subwords: Sequence[tuple[int, ...]]) -> None:
        """Rows for the newest `len(ids)` slots (already in `_slots`)."""
        needed = len(self._slots)
        filled = needed - len(ids)
        if needed > self._table.shape[0]:
            # Doubling, but not past the budget left beside the keys unless one batch
            # needs more.
            affordable = (self.max_bytes - self._key_bytes) // self.row_bytes
            rows = max(needed, min(2 * self._table.shape[0], affordable))
            grown = torch.empty((rows, self._table.shape[1]), device=self.device)
            grown[:filled] = self._table[:filled]
            self._table = grown
        token_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        subword_ids = subword_offsets = None
        if self.model.subword is not None:
            flat, offsets = subword_batch([(bag,) for bag in subwords], 1)
            subword_ids, subword_offsets = flat.to(self.device), offsets.to(self.device)
        with torch.inference_mode():
            vectors = self.model.embed(token_ids, subword_ids, subword_offsets)
        self._table[filled:needed] = vectors


def pack_rows(
    table: torch.Tensor, slots: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> PackedSequence:
    """The packed input for rows given longest first: row i's tokens are
    `slots[starts[i] : starts[i] + lengths[i]]`.

    A packed sequence is time-major (step 0 of every row, then step 1 of the rows at
    least 2 long, ...), so with rows sorted by length its gather index is a masked
    grid, and the vectors are gathered straight into place.
    """
    steps = np.arange(int(lengths[0]))
    present = steps[:, None] < lengths[None, :]  # [T, B]
    positions = (starts[None, :] + steps[:, None])[present]
    index = torch.from_numpy(slots[positions])
    if table.device.type == "cuda":
        index = index.pin_memory().to(table.device, non_blocking=True)
    data = table.index_select(0, index)
    return PackedSequence(data, torch.from_numpy(present.sum(axis=1, dtype=np.int64)))
