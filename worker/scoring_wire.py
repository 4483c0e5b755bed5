"""What crosses between the worker and its scoring process: a batch's tokens one way,
its windows' scores the other, through shared memory; only one small control tuple
each way per batch goes through the socket.

Why shared memory: the per-token objects of a batch would otherwise be pickled and
unpickled on the hot path. Here the worker joins a batch's tokens with a separator into
one string (one copy into a buffer both processes map, beside one integer array); the
scoring process splits them out again (the one Python object per token it needs for
its token-vector cache) and writes back one float32 array. Measured on 20,480 corpus
texts in batches of 512 (37 tokens per message): 2.3-2.8 µs per message to write,
1.4-1.6 to read, against 2.3 + 1.0 for pickling and unpickling the same token tuples
(before the socket copies them), and ≈ 200 µs of tokenising and scoring; the scores
come back in 0.02 µs per message. Tokens never contain the separator (a newline: they
are cut at whitespace; none among the 760,000 tokens of that sample), and the writer
checks: a batch where one does is sent with each token's end offset instead.

`SharedBuffer` is an anonymous memory file (`memfd_create`): the scoring process
inherits its descriptor at start, both map it, and the kernel frees it once both are
gone, even after a kill -9, so nothing is left behind in /dev/shm. Whoever has more
to write than it holds grows it (`ensure`) and names the new size in the message that
follows; the reader maps the new size first (`follow`).

Request (the worker writes), for `rows` windows of `tokens` tokens in all:
`row_tokens` int64[rows] (tokens per window), then the tokens joined by `SEPARATOR` in
UTF-8 (lone surrogates pass through: JSON can carry them); or, when not `separated`,
`token_ends` int64[tokens] (character offsets) and the tokens concatenated.

Reply (the scoring process writes): `window_probabilities` float32[rows, labels].
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from itertools import chain

import numpy as np

INITIAL_BYTES = 1 << 20
INT64 = np.dtype(np.int64)


class SharedBuffer:
    """A memory file both processes map. One writer at a time (the protocol's turn)."""

    def __init__(self, fd: int, size: int) -> None:
        """Map `size` bytes of the memory file open as `fd` (owned from now on)."""
        self.fd = fd
        self._map = mmap.mmap(fd, size)

    @classmethod
    def create(cls, name: str, size: int = INITIAL_BYTES) -> SharedBuffer:
        fd = os.memfd_create(name)
        os.ftruncate(fd, size)
        return cls(fd, size)

    @property
    def size(self) -> int:
        return len(self._map)

    @property
    def memory(self) -> mmap.mmap:
        return self._map

    def ensure(self, size: int) -> None:
        """Writer: hold at least `size` bytes (doubling), the file grown for both."""
        if size > self.size:
            grown = max(size, 2 * self.size)
            grown += -grown % mmap.PAGESIZE
            os.ftruncate(self.fd, grown)
            self._remap(grown)

    def follow(self, size: int) -> None:
        """Reader: map `size` bytes, the size the writer named."""
        if size != self.size:
            self._remap(size)

    def _remap(self, size: int) -> None:
        old, self._map = self._map, mmap.mmap(self.fd, size)
        # An array may still look at the old map: then it is closed when dropped.
        with contextlib.suppress(BufferError):
            old.close()

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._map.close()
        os.close(self.fd)


SEPARATOR = "\n"  # never inside a token (tokens are cut at whitespace): checked anyway


def write_rows(buffer: SharedBuffer, rows: Sequence[Sequence[str]]) -> tuple[int, int, bool]:
    """The request for `rows` (each a window's tokens, never empty); returns the number
    of tokens, the bytes written and whether the tokens are separated (else measured)."""
    tokens = list(chain.from_iterable(rows))
    row_tokens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)).tobytes()
    joined = SEPARATOR.join(tokens)
    separated = joined.count(SEPARATOR) == len(tokens) - 1
    if separated:
        head = row_tokens
    else:  # a token holds the separator: say where each one ends instead
        joined = "".join(tokens)
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        head = row_tokens + np.cumsum(lengths).tobytes()
    text = joined.encode("utf-8", "surrogatepass")
    size = len(head) + len(text)
    buffer.ensure(size)
    memory = buffer.memory
    memory[: len(head)] = head
    memory[len(head) : size] = text
    return len(tokens), size, separated


def read_rows(
    buffer: SharedBuffer, rows: int, tokens: int, size: int, separated: bool
) -> tuple[list[str], np.ndarray]:
    """The request's tokens, in order, and the tokens per window (int64[rows])."""
    memory = buffer.memory
    row_tokens = np.frombuffer(memory, dtype=np.int64, count=rows).copy()
    if separated:
        text = memory[rows * INT64.itemsize : size].decode("utf-8", "surrogatepass")
        return (text.split(SEPARATOR) if tokens else []), row_tokens
    ends = np.frombuffer(memory, dtype=np.int64, count=tokens, offset=rows * 8).tolist()
    text = memory[(rows + tokens) * INT64.itemsize : size].decode("utf-8", "surrogatepass")
    starts = [0, *ends[:-1]]
    return [text[start:end] for start, end in zip(starts, ends, strict=True)], row_tokens


def write_probabilities(buffer: SharedBuffer, probabilities: np.ndarray) -> None:
    """The reply: float32[rows, labels]."""
    data = np.ascontiguousarray(probabilities, dtype=np.float32).tobytes()
    buffer.ensure(len(data))
    buffer.memory[: len(data)] = data


def read_probabilities(buffer: SharedBuffer, rows: int, labels: int) -> np.ndarray:
    """The reply's float32[rows, labels], copied out (the next batch reuses the buffer)."""
    flat = np.frombuffer(buffer.memory, dtype=np.float32, count=rows * labels).copy()
    return flat.reshape(rows, labels)
