"""Windows: the parts of a message the model scores, with spans into the original text.

A message is as abusive as its worst part, so a long text is not cut to its head or
pooled whole: it is split into overlapping windows of at most `window_tokens` tokens,
each scored like a short text, and a label's message score is the maximum over its
windows (`aggregate`). Each window knows the character span it came from in the
*original* text, so a result can point a moderator at the part that drove a flag.

Rules (`WindowPlanner.plan`), in order:

1. **Budget.** A text of at most `max_chars` characters is read whole. A longer one is
   read in regions: the head (a quarter of the budget), the tail (a quarter) and
   `MIDDLE_SLICES` slices sharing the other half, one placed in each equal stratum of
   the middle at an offset drawn from a generator seeded with the text's CRC-32. The
   choice is deterministic (the same text always gets the same windows) yet a writer
   cannot know which middle characters will be read. Region edges move to the nearest
   whitespace within `SNAP_CHARS`, so words are not cut. Cost: one CRC over the text
   and tokenising at most `max_chars` characters, whatever the text's length.
2. **Pieces.** Each region is split at whitespace into pieces (`\\S+`, a piece longer
   than `MAX_PIECE_CHARS`, 2,048, cut into chunks), and each piece is tokenised on its
   own (normalised on the tokenizer's bounded path).
   No tokenizer rule but the last (spelled-out words) spans whitespace and
   normalisation is per character, so the pieces' tokens, in order, are the text's
   tokens before that rule (checked on all 11,456 corpus texts, and by a unit test);
   the spelled-out rule is then applied to the region's tokens, a joined word
   spanning the pieces of its letters. Tokenising the original text piece by piece is
   what ties every token to the original characters it came from, even where NFKC or
   lower-casing changes lengths (`ﬁ` → `fi`, `İ` → `i̇`). A cache bounded in bytes
   keeps the tokens of recent pieces: most pieces are common words.
3. **Windows.** A region of at most `window_tokens` tokens is one window. A longer
   one gets windows of exactly `window_tokens` tokens every `stride` tokens, the last
   one ending at the region's last token, so any run of `window_tokens - stride`
   consecutive tokens lies whole inside some window. A window's span runs from the
   start of its first token's piece to the end of its last token's piece.
4. **Window cap.** Beyond `max_windows` windows (token-dense text: punctuation, one
   letter per token), the first, the last and evenly spread windows between them are
   kept, so the scoring cost per message is at most `max_windows * window_tokens`
   tokens.
5. **Coverage.** `chars_scored` counts every character of the text except those in
   gaps between scored windows that hold some non-whitespace character (text that was
   not read); whitespace-only gaps count as read. A text scored whole has
   `chars_scored == chars_total`.

Evidence (`evidence`): for a flagged label, the spans of the best windows that reach
the threshold, so a moderator's tool can highlight them.

A text whose tokens fit one window (97 % of the corpus texts; the median has 18
tokens) is exactly one window holding exactly the tokens `model.tokenizer.tokenize`
gives for the whole text, so it scores as it did before windows existed.

Why 128 tokens every 64, and the maximum (measured on validation, README "Reading
long messages"): with the same training, windows of 128 every 64 gave insult ROC AUC
0.9229 on the plain validation comments and 0.8125 on them placed among clean ones,
against 0.9212 and 0.8020 for 64 every 32 (and 0.913 / 0.785 for 32 every 16 in an
earlier run), and cost less: 1.07 rows and 1.25 tokens per corpus text against 1.26
and 1.39. A 64-token overlap holds any insult sentence whole (most are 5-20 tokens).
The maximum over windows is what lets one part decide; a noisy-or (1 - product of
1 - p) scored 0.731 on long messages against 0.759 for the maximum with the model
trained before windows, and also lowered its plain AUC (0.914 against 0.924), since
every clean window adds to it.
"""

from __future__ import annotations

import random
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.bounded import ENTRY_OVERHEAD, BoundedDict
from model.reading import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_WINDOWS,
    DEFAULT_STRIDE,
    DEFAULT_WINDOW_TOKENS,
)
from model.tokenizer import MIN_SPELLED, scan, spelled_runs, spelled_word

MIDDLE_SLICES = 4
SNAP_CHARS = 32
# A longer piece (no whitespace in 2,048 characters) is machine text, cut into chunks;
# URLs and words stay far below, so they are never cut.
MAX_PIECE_CHARS = 2_048
# Normalisation slice of a piece: NFKC expands a character at most 18-fold, so this
# never cuts a piece, and it sends even short pieces down the tokenizer's bounded
# normalisation (rule 1), whose cost does not grow with runs of combining marks.
PIECE_NORMALIZED_CHARS = 18 * MAX_PIECE_CHARS
# Longer pieces are not cached: they rarely repeat and would crowd out common words.
MAX_CACHED_PIECE_CHARS = 256
# The piece → tokens cache, bounded in bytes (`model.bounded`): the 47,974 distinct
# pieces of the corpora's 11,456 texts take 22 MiB there.
PIECE_CACHE_BYTES = 32 << 20

Strategy = Literal["whole", "head+tail+sampled"]
STRATEGY_WHOLE: Strategy = "whole"
STRATEGY_SAMPLED: Strategy = "head+tail+sampled"

_PIECE = re.compile(r"\S+")
_SPACE = re.compile(r"\s")

Scan = Callable[[str], tuple[list[str], list[int]]]  # `model.tokenizer.scan`
# A piece's tokens, the whitespace before each, and how many are single letters.
PieceTokens = tuple[tuple[str, ...], tuple[int, ...], int]
Span = tuple[int, int]


class WindowError(ValueError):
    """Window settings that cannot work (e.g. a stride longer than the window)."""


@dataclass(frozen=True, slots=True)
class Window:
    """Tokens the model reads as one row; `start`/`end` index the original text."""

    start: int
    end: int
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """One text's windows (never empty: a blank text gets one window of no tokens)."""

    windows: tuple[Window, ...]
    chars_scored: int
    chars_total: int
    strategy: Strategy

    @property
    def complete(self) -> bool:
        return self.chars_scored == self.chars_total


@dataclass(frozen=True)
class WindowSettings:
    window_tokens: int = DEFAULT_WINDOW_TOKENS
    stride: int = DEFAULT_STRIDE
    max_chars: int = DEFAULT_MAX_CHARS
    max_windows: int = DEFAULT_MAX_WINDOWS
    spelled_words: bool = True  # tokenizer rule 6 (off for models trained before it)

    def __post_init__(self) -> None:
        for name in ("window_tokens", "stride", "max_chars", "max_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WindowError(f"{name} must be a positive integer, got {value!r}")
        if self.stride > self.window_tokens:
            raise WindowError(
                f"stride {self.stride} exceeds window_tokens {self.window_tokens}: "
                "tokens between windows would never be read"
            )
        if self.max_windows < 2:
            raise WindowError("max_windows must be >= 2 (the head and the tail)")

    @property
    def max_tokens_per_text(self) -> int:
        """The most tokens one message can cost to score (rule 4)."""
        return self.max_windows * self.window_tokens


class WindowPlanner:
    """Text → `WindowPlan` under fixed settings; keeps a bounded cache of piece tokens."""

    def __init__(
        self,
        settings: WindowSettings | None = None,
        scan_piece: Scan | None = None,
        cache_bytes: int = PIECE_CACHE_BYTES,
    ) -> None:
        self.settings = settings or WindowSettings()
        self._scan = scan_piece or _scan_piece
        self._cache: BoundedDict[str, PieceTokens] = BoundedDict(cache_bytes, _piece_size)

    def plan(self, text: str) -> WindowPlan:
        settings = self.settings
        total = len(text)
        if total <= settings.max_chars:
            regions = [(0, total)]
            strategy = STRATEGY_WHOLE
        else:
            regions = budget_regions(text, settings.max_chars)
            strategy = STRATEGY_SAMPLED
        windows: list[Window] = []
        for start, end in regions:
            windows.extend(self._region_windows(text, start, end))
        if not windows:
            return WindowPlan((Window(0, total, ()),), total, total, strategy)
        if len(windows) > settings.max_windows:
            keep = np.unique(np.linspace(0, len(windows) - 1, settings.max_windows).round())
            windows = [windows[int(i)] for i in keep]
        spans = [(w.start, w.end) for w in windows]
        return WindowPlan(tuple(windows), chars_scored(text, spans), total, strategy)

    def _region_windows(self, text: str, start: int, end: int) -> list[Window]:
        tokens: list[str] = []
        gaps: list[int] = []  # whitespace before each token (tokenizer rule 6)
        starts: list[int] = []  # per token: its piece's span in `text`
        ends: list[int] = []
        previous_end = start
        letters = 0  # single-letter tokens: rule 6 needs at least MIN_SPELLED
        for piece_start, piece_end in pieces(text, start, end):
            piece_tokens, piece_gaps, piece_letters = self._piece_tokens(
                text[piece_start:piece_end]
            )
            letters += piece_letters
            if piece_tokens:
                tokens.extend(piece_tokens)
                gaps.append(piece_start - previous_end)
                gaps.extend(piece_gaps[1:])
                starts.extend([piece_start] * len(piece_tokens))
                ends.extend([piece_end] * len(piece_tokens))
            previous_end = piece_end
        rule_6 = self.settings.spelled_words and letters >= MIN_SPELLED
        runs = spelled_runs(tokens, gaps) if rule_6 else []
        for a, b in reversed(runs):  # rule 6 works across pieces
            tokens[a:b] = [spelled_word(tokens[a:b])]
            starts[a:b] = [starts[a]]
            ends[a:b] = [ends[b - 1]]
        return [
            Window(starts[a], ends[b - 1], tuple(tokens[a:b]))
            for a, b in window_bounds(
                len(tokens), self.settings.window_tokens, self.settings.stride
            )
        ]

    def _piece_tokens(self, piece: str) -> PieceTokens:
        known = self._cache.get(piece)
        if known is None:
            tokens, gaps = self._scan(piece)
            letters = sum(1 for token in tokens if len(token) == 1 and token.isalpha())
            known = (tuple(tokens), tuple(gaps), letters)
            if len(piece) <= MAX_CACHED_PIECE_CHARS:
                self._cache[piece] = known
        return known


def _scan_piece(piece: str) -> tuple[list[str], list[int]]:
    return scan(piece, None, gaps=True, max_chars=PIECE_NORMALIZED_CHARS)


def _piece_size(piece: str, value: PieceTokens) -> int:
    """An upper estimate of a cache entry's bytes: the piece, its tokens and gaps."""
    tokens, gaps, _ = value
    return (
        ENTRY_OVERHEAD
        + sys.getsizeof(piece)
        + sys.getsizeof(value)
        + sys.getsizeof(tokens)
        + sum(map(sys.getsizeof, tokens))
        + sys.getsizeof(gaps)
        + 36 * len(gaps)
    )


def window_bounds(count: int, size: int, stride: int) -> list[Span]:
    """Token index ranges [a, b) of the windows over `count` tokens (rule 3)."""
    if count == 0:
        return []
    if count <= size:
        return [(0, count)]
    bounds = [(a, a + size) for a in range(0, count - size, stride)]
    bounds.append((count - size, count))
    return bounds


def pieces(text: str, start: int, end: int) -> list[Span]:
    """Whitespace-separated pieces of text[start:end]; long pieces cut into chunks."""
    found: list[Span] = []
    for match in _PIECE.finditer(text, start, end):
        a, b = match.span()
        while b - a > MAX_PIECE_CHARS:
            found.append((a, a + MAX_PIECE_CHARS))
            a += MAX_PIECE_CHARS
        found.append((a, b))
    return found


def budget_regions(text: str, max_chars: int) -> list[Span]:
    """Rule 1: head, tail and seeded slices of the middle, snapped to whitespace,
    sorted and merged. Together at most `max_chars` characters plus the snapping."""
    total = len(text)
    head = tail = max_chars // 4
    middle_start, middle_end = head, total - tail
    slice_chars = (max_chars - head - tail) // MIDDLE_SLICES
    rng = random.Random(zlib.crc32(text.encode("utf-8", "surrogatepass")))
    regions = [(0, head), (middle_end, total)]
    stratum = (middle_end - middle_start) / MIDDLE_SLICES
    for i in range(MIDDLE_SLICES):
        low = middle_start + int(i * stratum)
        high = max(low, middle_start + int((i + 1) * stratum) - slice_chars)
        a = rng.randint(low, high)
        regions.append((a, min(a + slice_chars, middle_end)))
    snapped = sorted((snap_start(text, a), snap_end(text, b)) for a, b in regions if b > a)
    merged: list[Span] = []
    for a, b in snapped:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def snap_start(text: str, position: int) -> int:
    """`position`, or the start of the next piece if it would cut a word (within
    `SNAP_CHARS`; beyond that the word is cut)."""
    if position <= 0 or position >= len(text):
        return position
    if text[position - 1].isspace() or text[position].isspace():
        return position
    found = _SPACE.search(text, position, min(len(text), position + SNAP_CHARS))
    return found.end() if found else position


def snap_end(text: str, position: int) -> int:
    """`position`, or the end of the last whole piece before it (within `SNAP_CHARS`)."""
    if position <= 0 or position >= len(text):
        return position
    if text[position].isspace() or text[position - 1].isspace():
        return position
    spaces = [m.start() for m in _SPACE.finditer(text, max(0, position - SNAP_CHARS), position)]
    return spaces[-1] if spaces else position


def chars_scored(text: str, spans: Sequence[Span]) -> int:
    """Rule 5: the text's length minus the gaps between `spans` (sorted by start)
    that hold something other than whitespace."""
    unread = 0
    position = 0
    for a, b in [*spans, (len(text), len(text))]:
        if a > position and _PIECE.search(text, position, a) is not None:
            unread += a - position
        position = max(position, b)
    return len(text) - unread


def aggregate(window_scores: np.ndarray, owners: np.ndarray, count: int) -> np.ndarray:
    """Per text and label, the maximum over its windows: [windows, labels] → [count,
    labels]. `owners[i]` is the text window i belongs to; every text owns ≥ 1 window."""
    result = np.full((count, window_scores.shape[1]), -np.inf, dtype=window_scores.dtype)
    np.maximum.at(result, owners, window_scores)
    return result


MAX_EVIDENCE_SPANS = 3


@dataclass(frozen=True, slots=True)
class Evidence:
    """A span of the original text that drove a label's score, and its window's score."""

    start: int
    end: int
    score: float


def evidence(
    windows: Sequence[Window],
    scores: np.ndarray,
    threshold: float,
    limit: int = MAX_EVIDENCE_SPANS,
) -> list[Evidence]:
    """The windows that reach `threshold` for one label (`scores[i]` is window i's),
    best first, skipping any that overlaps one already taken (neighbouring windows
    share half their tokens, so the best one stands for them); at most `limit`, in
    text order. Empty when no window reaches the threshold."""
    taken: list[Evidence] = []
    for i in np.argsort(-scores, kind="stable"):
        score = float(scores[i])
        if score < threshold or len(taken) == limit:
            break
        window = windows[int(i)]
        if any(window.start < other.end and other.start < window.end for other in taken):
            continue
        taken.append(Evidence(window.start, window.end, score))
    return sorted(taken, key=lambda item: item.start)


@dataclass(frozen=True)
class ScoredText:
    """One text's scores: per label the maximum over its windows, and each window's."""

    probabilities: np.ndarray  # float32 [labels]
    plan: WindowPlan
    window_scores: np.ndarray  # float32 [windows, labels], in text order

    def evidence(
        self, label: int, threshold: float, limit: int = MAX_EVIDENCE_SPANS
    ) -> list[Evidence]:
        """The spans that reach `threshold` for label index `label` (`evidence`)."""
        return evidence(self.plan.windows, self.window_scores[:, label], threshold, limit)
