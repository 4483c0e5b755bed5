"""Text → tokens, the one tokenizer shared by training and serving.

Training and serving must agree byte for byte, so every rule lives here and is
versioned by `TOKENIZER_VERSION`, which the checkpoint records: change a rule, bump the
version, and old checkpoints refuse to load instead of silently scoring garbage.

Rules, applied in order:

1. The input is cut to `max_tokens * MAX_CHARS_PER_TOKEN` characters first, so one huge
   message costs bounded time (a stream worker must not stall on a 10 MB payload).
2. Unicode NFKC normalisation (full-width letters, ligatures, superscripts fold to
   their plain forms), then lower-casing. Curly apostrophes become `'`.
3. One left-to-right scan with a single compiled regex; at each position the first
   matching rule wins:
   - URLs (`http://`, `https://`, `www.`) → `<url>`
   - e-mail addresses → `<email>`
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
4. Inside words, a character repeated 3+ times is collapsed to 2 (`soooo` → `soo`,
   `nooooo` → `noo`): elongation is emphasis, and keeping two preserves that signal
   while folding all the variants onto one vocabulary entry.
5. At most `max_tokens` tokens are kept (the head of the message).

How a token is then looked up (vocabulary fallback, hashed sub-words) lives in
`model.subword` and is covered by the same version: v2 added the obfuscated and starred
word rules and that lookup.
"""

from __future__ import annotations

import re
import unicodedata

TOKENIZER_VERSION = "modstream-tok-v2"
DEFAULT_MAX_TOKENS = 256
MAX_CHARS_PER_TOKEN = 64

URL_TOKEN = "<url>"
EMAIL_TOKEN = "<email>"
USER_TOKEN = "<user>"
NUM_TOKEN = "<num>"

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

# Letters only: \w minus digits and underscore.
_LETTERS = r"[^\W\d_]"
_ALNUM = r"[^\W_]"

# The lookaheads opening `email` and `mixed` are necessary conditions of the patterns
# after them (an `@` ahead; a digit and a letter in the run): they change nothing that
# matches, but let an ordinary word fail those alternatives without backtracking.
_TOKEN_RE = re.compile(
    rf"""
    (?P<url>(?:https?://|www\.)[^\s<>"]*[^\s<>".,!?;:)\]'}}])
  | (?P<email>(?=[\w.+-]*@)[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
  | (?P<user>@\w+)
  | (?P<mixed>(?={_ALNUM}*\d)(?={_ALNUM}*{_LETTERS})
               {_ALNUM}*(?:\d{_ALNUM}*?{_LETTERS}|{_LETTERS}{_ALNUM}*?\d){_ALNUM}*)
  | (?P<starred>{_LETTERS}+(?:\*+{_LETTERS}+)+)
  | (?P<num>\d+(?:[.,]\d+)*)
  | (?P<word>{_LETTERS}+(?:'{_LETTERS}+)*)
  | (?P<punct>(?P<p>[^\w\s]|_)(?P=p)*)
    """,
    re.VERBOSE,
)

_REPEAT_RE = re.compile(r"(.)\1{2,}")
# How a mixed run that is mostly digits splits: the v1 rule, digits cut words.
_SPLIT_RE = re.compile(rf"(?P<num>\d+)|(?P<word>{_LETTERS}+)")

_PLACEHOLDERS = {"url": URL_TOKEN, "email": EMAIL_TOKEN, "user": USER_TOKEN, "num": NUM_TOKEN}


def normalize(text: str, max_chars: int | None = None) -> str:
    """NFKC + lower-case; exposed so data splitting can hash the same canonical form."""
    if max_chars is not None:
        text = text[:max_chars]
    return unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)


def tokenize(text: str, max_tokens: int | None = DEFAULT_MAX_TOKENS) -> list[str]:
    """Deterministic, allocation-light tokenization; see the module docstring for rules."""
    max_chars = None if max_tokens is None else max_tokens * MAX_CHARS_PER_TOKEN
    text = normalize(text, max_chars)
    # Rule 4 only where some character repeats 3+ times: most texts skip it entirely.
    collapse = _REPEAT_RE.search(text) is not None
    tokens: list[str] = []
    append = tokens.append
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup
        if kind == "word" or kind == "starred":
            append(_collapse(match.group()) if collapse else match.group())
        elif kind == "punct":
            run = match.group()
            append(run[0])
            if len(run) > 1:
                append(run[0])
        elif kind == "mixed":
            run = match.group()
            digits = sum(c.isdigit() for c in run)
            if len(run) - digits > digits:
                append(_collapse(run) if collapse else run)
            else:
                for part in _SPLIT_RE.finditer(run):
                    if part.lastgroup == "word":
                        append(_collapse(part.group()) if collapse else part.group())
                    else:
                        append(NUM_TOKEN)
        else:
            assert kind is not None
            append(_PLACEHOLDERS[kind])
        if max_tokens is not None and len(tokens) >= max_tokens:
            return tokens[:max_tokens]
    return tokens


def _collapse(word: str) -> str:
    return _REPEAT_RE.sub(r"\1\1", word)
