"""Text → tokens, the one tokenizer shared by training and serving.

Training and serving must agree byte for byte, so every rule lives here and is
versioned by `TOKENIZER_VERSION`, which the checkpoint records: change a rule, bump the
version, and old checkpoints refuse to load instead of silently scoring garbage.

Rules, applied in order:

1. Normalisation on a bounded slice (`normalize` with `max_chars`, which `tokenize`
   passes as `max_tokens * MAX_CHARS_PER_TOKEN`), so one message costs bounded time
   whatever its length or content:
   a. the input is cut to `max_chars` characters (a stream worker must not stall on a
      10 MB payload);
   b. Unicode NFKC (full-width letters, ligatures, superscripts fold to their plain
      forms), then lower-casing; curly apostrophes become `'`. ASCII text, and text
      already in NFKC form, skip the normalisation call (it would return them
      unchanged). Other text is normalised in pieces of `NORMALIZE_PIECE` (64)
      characters, each cut before a character that cannot reorder or compose with
      the one before it, so the pieces give exactly what one call would; and no
      further pieces once `max_chars` characters came out. Both bound a cost that
      one call does not: NFKC sorts a run of combining marks by insertion, so a
      letter carrying 10,000 marks of mixed classes took 78 ms, and it expands a
      character up to 18-fold (U+FDFA), so 10,000 of them made 180,000 characters
      to scan (23 ms to tokenise). A run of more than `MAX_JOINED` (32) joining
      characters, which no writing system stacks (UAX #15's stream-safe limit is
      30), is the one place a piece may cut where a single call would not;
   c. the result is cut to `max_chars` characters again.
2. One left-to-right scan with a single compiled regex; at each position the first
   matching rule wins:
   - URLs (`http://`, `https://`, `www.`) → `<url>`
   - e-mail addresses → `<email>` (a local part of at most 64 characters and domain
     labels of at most 63, the limits of RFC 5321 and of DNS)
   - @mentions → `<user>`
   - numbers (digits with inner `.` or `,`, e.g. `1,000.50`) → `<num>`
   - obfuscated words: a run of letters and digits holding both, kept whole when its
     letters outnumber its digits (`m0r0n`, `1diot`, `2day`); otherwise digits split
     it as below (`b4` → `b`, `<num>`; `150p` → `<num>`, `p`), so number placeholders
     stay meaningful for prices, codes and phone numbers
   - starred words: letters joined by runs of `*` (`f*ck`, `a**hole`) are one word
   - words: runs of letters, keeping `'` between letters (`don't`, `o'neil`)
   - any other non-space character is a punctuation token; a run of one repeated
     punctuation character (`!!!!`) yields at most two tokens (`!`, `!`)
   Every rule scans forward a bounded number of characters before it fails, or
   consumes what it scanned, so the scan is linear in the slice (see `_TOKEN_RE`).
3. Inside words, a character repeated 3+ times is collapsed to 2 (`soooo` → `soo`,
   `nooooo` → `noo`): elongation is emphasis, and keeping two preserves that signal
   while folding all the variants onto one vocabulary entry.
4. A word token is cut to its first `MAX_TOKEN_CHARS` (64) characters, after
   normalisation and collapsing: the longest token in the 11,456 corpus texts has 62
   (`trolololo…`), English words stay far below, and without a cap one message could
   be a single 60,000-character token (10,000 times U+3316 normalise to 60,000 letters),
   which every per-token cost downstream (sub-word n-grams, cache keys) grows with.
   Only as much of a long word is collapsed as the cut keeps (same token, bounded
   cost: collapsing 10,000 letters of `aaabbb…` whole took 9 ms).
5. At most `max_tokens` tokens are kept (the head of the message).
6. Spelled-out words: a run of at least `MIN_SPELLED` (3) single letters, each one
   space or one `.`, `-` or `_` (and no space) from the one before it (`s t u p i d`,
   `s.t.u.p.i.d`, `i-d-i-o-t`, `U S A`), becomes one word of its letters (`stupid`,
   `idiot`, `usa`), collapsed as in rule 3 and at most `MAX_SPELLED` (32) letters
   long (a longer run gives several). Writing a word one letter at a time got abuse past the model
   ("you are a s t u p i d i d i o t" scored 0.26); acronyms join harmlessly
   (`U.S.A.` → `usa`, `.`), while initials and abbreviations with a space after
   each dot do not (`J. R. R.`, `e.g. a`). The run may cross whitespace, so the rule
   works on the token sequence and the whitespace before each token (`scan`,
   `spelled_runs`); windows (`model.windows`) scan whitespace pieces apart and apply
   it to their own token sequence.

How a token is then looked up (vocabulary fallback, hashed sub-words) lives in
`model.subword` and is covered by the same version: v2 added the obfuscated and starred
word rules and that lookup, v3 rule 6. The bounds of rules 1, 2 (e-mail) and 4 kept
the version: they change no token of the training corpora (checked on all 11,456 texts
against the tokenizer before them), only texts no corpus holds (a 65-character word, a
10,000-mark letter).
"""

from __future__ import annotations

import re
import unicodedata

TOKENIZER_VERSION = "modstream-tok-v3"
TOKENIZER_V2 = "modstream-tok-v2"
SUPPORTED_TOKENIZER_VERSIONS = (TOKENIZER_V2, TOKENIZER_VERSION)
"""What a checkpoint may have been trained with. v2 differs from v3 by rule 6 alone, so a
v2 checkpoint is served with rule 6 left out (`spelled_words`) and scores as before:
upgrading the code never strands a running model."""


def spelled_words(tokenizer_version: str) -> bool:
    """Whether a model trained with `tokenizer_version` reads rule 6's joined words."""
    return tokenizer_version != TOKENIZER_V2


DEFAULT_MAX_TOKENS = 256
MAX_CHARS_PER_TOKEN = 64
MAX_TOKEN_CHARS = 64
NORMALIZE_PIECE = 64
MAX_JOINED = 32

URL_TOKEN = "<url>"
EMAIL_TOKEN = "<email>"
USER_TOKEN = "<user>"
NUM_TOKEN = "<num>"
MIN_SPELLED = 3
MAX_SPELLED = 32
SPELL_SEPARATORS = frozenset(".-_")

# Letters only: \w minus digits and underscore. Alphanumerics are letters plus \d.
_LETTERS = r"[^\W\d_]"
_ALNUM = r"[^\W_]"

# Why each rule is linear (possessive `++`/`*+` never give characters back):
# - url: a literal prefix, then one run; it fails at most once per run.
# - email: the lookahead scans at most 64 characters (the local part), the labels at
#   most 63 each, so a failing try costs O(64) at each token start. Unbounded, it
#   rescanned the rest of a run at every start: 10,000 characters of `a.a.a…` took
#   13 ms, `a.a.a…a@` 25 ms.
# - mixed: the lookaheads stop at the first digit (a letter), and, given them, the old
#   body `A*(?:\dA*?L|LA*?\d)A*` matched exactly the whole alphanumeric run, which is
#   what `A++` matches; the old body backtracked quadratically (`a` + 9,999 digits:
#   1.5 s).
# - starred, word: possessive runs; giving a letter or a star back could never let the
#   next part match, so the matches are the same.
_TOKEN_RE = re.compile(
    rf"""
    (?P<url>(?:https?://|www\.)[^\s<>"]*[^\s<>".,!?;:)\]'}}])
  | (?P<email>(?=[\w.+-]{{1,64}}+@)[\w.+-]++@[\w-]{{1,63}}+(?:\.[\w-]{{1,63}}+)+)
  | (?P<user>@\w+)
  | (?P<mixed>(?={_LETTERS}*+\d)(?=\d*+{_LETTERS}){_ALNUM}++)
  | (?P<starred>{_LETTERS}++(?:\*++{_LETTERS}++)+)
  | (?P<num>\d+(?:[.,]\d+)*)
  | (?P<word>{_LETTERS}++(?:'{_LETTERS}++)*)
  | (?P<punct>(?P<p>[^\w\s]|_)(?P=p)*)
    """,
    re.VERBOSE,
)

_REPEAT_RE = re.compile(r"(.)\1{2,}")
# Two single letters one whitespace character or one separator apart: rule 6 cannot
# apply to a text without this (a spelled-out run holds such a pair).
_SPELLED_HINT_RE = re.compile(rf"(?<!{_ALNUM}){_LETTERS}[\s.\-_]{_LETTERS}(?!{_ALNUM})")
# How a mixed run that is mostly digits splits: the v1 rule, digits cut words.
_SPLIT_RE = re.compile(rf"(?P<num>\d+)|(?P<word>{_LETTERS}+)")

_PLACEHOLDERS = {"url": URL_TOKEN, "email": EMAIL_TOKEN, "user": USER_TOKEN, "num": NUM_TOKEN}

# Starters (combining class 0) that NFKC may compose with the character before them: the
# second characters of canonical pairs (Indic two-part vowels, Hangul vowels and final
# consonants), and the characters whose NFKD starts with one or with a combining
# character (halfwidth and compatibility jamo, halfwidth kana voicing marks). Unicode
# 14.0 (Python 3.11); a unit test derives the set from `unicodedata` and compares.
_COMPOSING_STARTER_RANGES = (
    "09BE 09D7 0B3E 0B56-0B57 0BBE 0BD7 0CC2 0CD5-0CD6 0D3E 0D57 0DCF 0DDF 0F73 0F75 "
    "0F81 0FB5 0FB7 102E 1161-1175 11A8-11C2 1B35 3133 3135-3136 313A-313F 314F-3163 "
    "FF9E-FF9F FFA3 FFA5-FFA6 FFAA-FFAF FFC2-FFC7 FFCA-FFCF FFD2-FFD7 FFDA-FFDC 11127 "
    "1133E 11357 114B0 114BA 114BD 115AF 11930"
)


def _parse_ranges(ranges: str) -> frozenset[str]:
    characters: set[str] = set()
    for item in ranges.split():
        first, _, last = item.partition("-")
        characters.update(map(chr, range(int(first, 16), int(last or first, 16) + 1)))
    return frozenset(characters)


_COMPOSING_STARTERS = _parse_ranges(_COMPOSING_STARTER_RANGES)


def normalize(text: str, max_chars: int | None = None) -> str:
    """NFKC + lower-case, on at most `max_chars` characters in and out (see rule 1).

    Without `max_chars`, the whole text is normalised in one call: data splitting
    hashes this canonical form, so it must stay as it was.
    """
    if max_chars is None:
        return _fold(unicodedata.normalize("NFKC", text))
    head = text[:max_chars]
    if head.isascii():
        return head.lower()
    if unicodedata.is_normalized("NFKC", head):
        return _fold(head)[:max_chars]  # lower-casing can lengthen (İ → i̇)
    pieces: list[str] = []
    produced = start = 0
    while start < len(head) and produced < max_chars:
        end = _piece_end(head, start + NORMALIZE_PIECE)
        piece = _nfkc(head[start:end])
        pieces.append(piece)
        produced += len(piece)
        start = end
    return _fold("".join(pieces))[:max_chars]


def _nfkc(text: str) -> str:
    """NFKC, which is NFC of NFKD, without the composition pass where NFKD left
    nothing to compose: that pass looks every character up in a table, and cost 50 µs
    for 64 characters of U+3316 (NFKD: 3 µs) or of kana and kanji (9 µs; 0.6)."""
    decomposed = unicodedata.normalize("NFKD", text)
    if unicodedata.is_normalized("NFC", decomposed):
        return decomposed
    return unicodedata.normalize("NFC", decomposed)


def _fold(text: str) -> str:
    """Lower-case, curly apostrophes straight. (`str.translate` with a mapping cost
    50-200 ns a character on Hebrew text; three `replace` that find nothing, 0.05.)"""
    return text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'")


def _piece_end(text: str, end: int) -> int:
    """The first position at or after `end` before which NFKC can cut `text`: one
    whose character neither reorders (a combining character) nor composes (a
    composing starter) with the one before it, so normalising the two sides apart
    gives what normalising them together does. Looks at most `MAX_JOINED + 1`
    characters ahead, then cuts at `end` anyway: only a run of more joining
    characters than any writing system stacks (UAX #15 allows 30) gets there."""
    if end >= len(text):
        return len(text)
    if text[end] < "\u0300":  # below the first combining character: the common case
        return end
    combining = unicodedata.combining
    last = end + MAX_JOINED + 1
    for position in range(end, min(last, len(text))):
        character = text[position]
        if not combining(character) and character not in _COMPOSING_STARTERS:
            return position
    return end if last < len(text) else len(text)


def tokenize(
    text: str, max_tokens: int | None = DEFAULT_MAX_TOKENS, spelled: bool = True
) -> list[str]:
    """Deterministic, allocation-light tokenization; see the module docstring for rules.
    `spelled=False` leaves out rule 6 (for callers that apply it across pieces)."""
    tokens, gaps = scan(text, max_tokens, gaps=None if spelled else False)
    return join_spelled(tokens, gaps) if gaps else tokens


def scan(
    text: str,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    gaps: bool | None = True,
    max_chars: int | None = None,
) -> tuple[list[str], list[int]]:
    """Rules 1-5: the tokens, and the number of whitespace characters before each
    (0 inside a run of characters; the first token's count is its offset). `gaps`
    None counts them only where rule 6 could apply at all, False never; where not
    counted the gaps are an empty list. `max_chars`, if given, is rule 1's slice
    instead of `max_tokens * MAX_CHARS_PER_TOKEN`."""
    if max_chars is None and max_tokens is not None:
        max_chars = max_tokens * MAX_CHARS_PER_TOKEN
    text = normalize(text, max_chars)
    # Rule 3 only where some character repeats 3+ times: most texts skip it entirely.
    collapse = _REPEAT_RE.search(text) is not None
    # Rule 6 needs two single letters one character apart; most texts have none.
    track = gaps or (gaps is None and _SPELLED_HINT_RE.search(text) is not None)
    tokens: list[str] = []
    spaces: list[int] = []
    append = tokens.append
    limit = max_tokens if max_tokens is not None else -1
    end = 0  # where the previous match ended (rule 6's gaps)
    for match in _TOKEN_RE.finditer(text):
        before = len(tokens)
        kind = match.lastgroup
        if kind == "word" or kind == "starred":
            word = match.group()  # `_word`, inlined on the hot path
            if collapse:
                word = (
                    _REPEAT_RE.sub(r"\1\1", word)
                    if len(word) <= MAX_TOKEN_CHARS
                    else _collapsed_head(word)
                )
            append(word if len(word) <= MAX_TOKEN_CHARS else word[:MAX_TOKEN_CHARS])
        elif kind == "punct":
            run = match.group()
            append(run[0])
            if len(run) > 1:
                append(run[0])
        elif kind == "mixed":
            run = match.group()
            digits = sum(map(str.isdigit, run))
            if len(run) - digits > digits:
                append(_word(run, collapse))
            else:
                for part in _SPLIT_RE.finditer(run):
                    append(_word(part.group(), collapse) if part.lastgroup == "word" else NUM_TOKEN)
                    if len(tokens) == limit:
                        break
        else:
            assert kind is not None
            append(_PLACEHOLDERS[kind])
        if track:
            spaces.append(match.start() - end)
            spaces.extend([0] * (len(tokens) - before - 1))
            end = match.end()
        if len(tokens) >= limit >= 0:
            del tokens[limit:]
            del spaces[limit:]
            break
    return tokens, spaces


def _word(word: str, collapse: bool) -> str:
    """Rules 3 and 4: repeats collapsed, then cut to `MAX_TOKEN_CHARS`."""
    if collapse:
        if len(word) > MAX_TOKEN_CHARS:
            return _collapsed_head(word)
        word = _REPEAT_RE.sub(r"\1\1", word)
    return word if len(word) <= MAX_TOKEN_CHARS else word[:MAX_TOKEN_CHARS]


def _collapsed_head(word: str) -> str:
    """`collapse(word)[:MAX_TOKEN_CHARS]`, collapsing only as much of `word` as that
    needs: each run costs a Python call in `re.sub`, and 10,000 letters of `aaabbb…`
    took 9 ms whole. Collapsing a prefix changes at most its last run's (up to 2)
    characters, so a collapsed prefix 2 longer than the cap holds the answer."""
    length = 2 * MAX_TOKEN_CHARS
    while True:
        head = _REPEAT_RE.sub(r"\1\1", word[:length])
        if len(head) >= MAX_TOKEN_CHARS + 2 or length >= len(word):
            return head[:MAX_TOKEN_CHARS]
        length *= 4


def _is_letter(token: str) -> bool:
    return len(token) == 1 and token.isalpha()


def spelled_runs(tokens: list[str], gaps: list[int]) -> list[tuple[int, int]]:
    """Rule 6: the index ranges [a, b) of `tokens` that form spelled-out words.
    `gaps[i]` is the number of whitespace characters before token i (`scan`): letters
    continue a run one space apart, or one separator apart with no space at all."""
    runs: list[tuple[int, int]] = []
    count = len(tokens)
    i = 0
    while i < count:
        if not _is_letter(tokens[i]):
            i += 1
            continue
        letters, end = 1, i + 1
        while end < count and letters < MAX_SPELLED:
            if _is_letter(tokens[end]) and gaps[end] == 1:
                end += 1
            elif (
                end + 1 < count
                and tokens[end] in SPELL_SEPARATORS
                and gaps[end] == 0
                and _is_letter(tokens[end + 1])
                and gaps[end + 1] == 0
            ):
                end += 2
            else:
                break
            letters += 1
        if letters >= MIN_SPELLED:
            runs.append((i, end))
        i = end
    return runs


def spelled_word(tokens: list[str]) -> str:
    """The word a spelled-out run (`spelled_runs`) stands for."""
    return _word("".join(token for token in tokens if token not in SPELL_SEPARATORS), True)


def join_spelled(tokens: list[str], gaps: list[int]) -> list[str]:
    """Rule 6 on a token sequence and its gaps (`scan`): each run becomes its word."""
    runs = spelled_runs(tokens, gaps)
    if not runs:
        return tokens
    joined: list[str] = []
    position = 0
    for start, end in runs:
        joined.extend(tokens[position:start])
        joined.append(spelled_word(tokens[start:end]))
        position = end
    joined.extend(tokens[position:])
    return joined
