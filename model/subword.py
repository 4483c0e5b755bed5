"""How a token becomes model input: a vocabulary id plus hashed character n-grams.

Obfuscated spellings (`m0r0n`, `1diot`, `stuuupid`, `f*ck`) are rare, so the vocabulary
sees few of them and they would all be UNK. Two mechanisms recover them, both pure
functions of the token string, so training and serving agree and the tokenizer version
(`model.tokenizer.TOKENIZER_VERSION`) covers them:

1. **Vocabulary fallback.** A token missing from the vocabulary is looked up again as
   its de-leeted form (`m0r0n` → `moron`: digits and `@`/`$` read as the letters they
   imitate, only in tokens that also hold letters), then as its canonical form (runs
   of a repeated character collapsed to one: `stuupid` → `stupid`).
2. **Hashed sub-words** (fastText-style). Every word token also contributes the
   character 3- to 5-grams of `<canonical>` (plus the whole `<canonical>`), each hashed
   with CRC-32 into one of `buckets` rows of a sub-word embedding table; the network
   averages them and concatenates the result to the word embedding. `m0r0n` and
   `moron` share the canonical form `moron`, so they get the same sub-word vector;
   `f*ck` shares `ck>`, `<f`… with its plain spelling. Placeholders (`<url>`, `<num>`…)
   and punctuation have no sub-words (an empty bag, a zero vector).

CRC-32 rather than Python's `hash`, which is salted per process.

`ngram_ids` memoises its answers in a dict bounded in bytes (`NGRAM_CACHE_BYTES`,
`model.bounded`): a token's bag has up to `3 * len + 1` ids, so an entry-count bound let
unique long words grow it without limit. The tokenizer caps tokens at 64 characters,
so one entry holds at most ~6 KB; the corpus tokens average 1.1 KB.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch

from model.bounded import BoundedDict, sizeof_entry
from model.vocab import UNK_ID, Vocab

_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
_RUNS = re.compile(r"(.)\1+")
# 32 MiB: the 22,724 distinct tokens of the corpora take 25 MiB.
NGRAM_CACHE_BYTES = 32 << 20
_NGRAM_CACHE: BoundedDict[tuple[str, int, int, int], tuple[int, ...]] = BoundedDict(
    NGRAM_CACHE_BYTES, sizeof_entry
)


def deleet(token: str) -> str:
    """`m0r0n` → `moron`; tokens without both a letter and a digit are unchanged."""
    if any(c.isdigit() for c in token) and any(c.isalpha() for c in token):
        return token.translate(_LEET)
    return token


def canonical(token: str) -> str:
    """De-leeted, with every run of one repeated character collapsed to one."""
    return _RUNS.sub(r"\1", deleet(token))


def lookup_forms(token: str) -> tuple[str, ...]:
    """The spellings tried in order when looking `token` up (distinct, raw first)."""
    forms = [token]
    for form in (deleet(token), canonical(token)):
        if form not in forms:
            forms.append(form)
    return tuple(forms)


def token_id(vocab: Vocab, token: str) -> int:
    """Vocabulary id with the fallback spellings; UNK only if none is known."""
    for form in lookup_forms(token):
        found = vocab.id_of(form)
        if found != UNK_ID:
            return found
    return UNK_ID


def has_subwords(token: str) -> bool:
    """Word-like tokens only: placeholders (`<url>`) and punctuation have none."""
    return not token.startswith("<") and any(c.isalnum() for c in token)


def ngram_ids(token: str, buckets: int, min_n: int, max_n: int) -> tuple[int, ...]:
    """Sorted distinct bucket ids of the token's character n-grams (and whole form)."""
    key = (token, buckets, min_n, max_n)
    found = _NGRAM_CACHE.get(key)
    if found is None:
        found = _NGRAM_CACHE[key] = _ngram_ids(token, buckets, min_n, max_n)
    return found


def _ngram_ids(token: str, buckets: int, min_n: int, max_n: int) -> tuple[int, ...]:
    if buckets < 1 or not has_subwords(token):
        return ()
    marked = f"<{canonical(token)}>"
    grams = {marked}
    for n in range(min_n, max_n + 1):
        grams.update(marked[i : i + n] for i in range(len(marked) - n + 1))
    return tuple(sorted({zlib.crc32(g.encode("utf-8")) % buckets for g in grams}))


def subword_batch(
    rows: Sequence[Sequence[tuple[int, ...]]], width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`EmbeddingBag` input for a padded batch: (flat ids, offsets), one bag per
    position of a `[len(rows), width]` grid in row-major order; padding gets an empty
    bag."""
    flat: list[int] = []
    offsets: list[int] = []
    for row in rows:
        for ids in row:
            offsets.append(len(flat))
            flat.extend(ids)
        offsets.extend([len(flat)] * (width - len(row)))
    return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)
