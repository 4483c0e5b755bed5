"""A dict that holds at most a byte budget, forgetting its oldest entries first.

The per-token caches (sub-word n-grams, the engine's token lookups) were bounded by
entry count, and an entry's size grows with its token: 3,000 messages of one unique
9,000-letter word each took a worker from 885 to 2,538 MiB. A byte budget bounds them
whatever the tokens look like.

Eviction is first-in, first-out (the head of the `OrderedDict`'s order list, O(1)): a hit is a
plain C `dict.get`, no bookkeeping, so ordinary traffic pays nothing for the bound. A
frequent token evicted by a flood of new ones is computed again on its next use
(microseconds) and goes back in.

Sizes are estimates that err high (`sizeof_entry`): what `sys.getsizeof` reports for
the key and value, plus their nested tuples and the int objects inside them (an int
of 257 or more is its own object, 28 bytes, plus its 8-byte slot), plus
`ENTRY_OVERHEAD` for the dict's hash slot and the order list's node. Objects shared
between caches are counted in each.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# The engine's per-token lookups (`model.encoding.TokenCache`): the 22,724 distinct
# tokens of the corpora take 24 MiB there.
TOKEN_CACHE_BYTES = 64 << 20
ENTRY_OVERHEAD = 104  # dict entry 24 + index ~16 + OrderedDict node 56 + slack, bytes
_INT_BYTES = 28 + 8


class BoundedDict(OrderedDict[K, V]):
    """`dict` whose inserts evict the oldest entries while it holds more than
    `max_bytes` (by `size_of`). Reads are `dict`'s own; writes go through
    `d[key] = value` or `del`/`pop`/`popitem`/`clear` (not `setdefault`/`update`,
    which would skip the count). Writes take a lock, so threads may share one (the
    sub-word cache is module-wide): a miss costs ~1 µs more, a hit nothing."""

    def __init__(self, max_bytes: int, size_of: Callable[[K, V], int]) -> None:
        super().__init__()
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.bytes = 0
        self.evictions = 0
        self._lock = threading.Lock()

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            if key in self:
                self._forget(key)
            super().__setitem__(key, value)
            self.bytes += self.size_of(key, value)
            while self.bytes > self.max_bytes and len(self) > 1:
                self._forget(next(iter(self)))
                self.evictions += 1

    def __delitem__(self, key: K) -> None:
        with self._lock:
            self._forget(key)

    def pop(self, key: K, *default: Any) -> Any:
        with self._lock:
            if key in self:
                value = self[key]
                self._forget(key)
                return value
            return super().pop(key, *default)

    def popitem(self, last: bool = True) -> tuple[K, V]:
        with self._lock:
            key, value = super().popitem(last)
            self.bytes -= self.size_of(key, value)
            return key, value

    def clear(self) -> None:
        with self._lock:
            super().clear()
            self.bytes = 0

    def _forget(self, key: K) -> None:
        value = super().pop(key)
        self.bytes -= self.size_of(key, value)


def sizeof_entry(key: object, value: object) -> int:
    """Bytes an entry holds (see the module docstring): key, value, tuples one level
    down, the ints in them, and `ENTRY_OVERHEAD`."""
    return ENTRY_OVERHEAD + _sizeof(key) + _sizeof(value)


def _sizeof(item: object) -> int:
    size = sys.getsizeof(item)
    if isinstance(item, tuple):
        for part in item:
            if isinstance(part, tuple):
                size += sys.getsizeof(part) + _INT_BYTES * len(part)
            elif isinstance(part, int):
                size += _INT_BYTES
            else:
                size += sys.getsizeof(part)
    return size
