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
   - words: runs of letters, keeping `'` between letters (`don't`, `o'neil`); digits
     split words (`b4` → `b`, `<num>`) so number placeholders stay meaningful
   - any other non-space character is a punctuation token; a run of one repeated
     punctuation character (`!!!!`) yields at most two tokens (`!`, `!`)
4. Inside words, a character repeated 3+ times is collapsed to 2 (`soooo` → `soo`,
   `nooooo` → `noo`): elongation is emphasis, and keeping two preserves that signal
   while folding all the variants onto one vocabulary entry.
5. At most `max_tokens` tokens are kept (the head of the message).
"""

from __future__ import annotations

import re
import unicodedata

TOKENIZER_VERSION = "modstream-tok-v1"
DEFAULT_MAX_TOKENS = 256
MAX_CHARS_PER_TOKEN = 64

URL_TOKEN = "<url>"
EMAIL_TOKEN = "<email>"
USER_TOKEN = "<user>"
NUM_TOKEN = "<num>"

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

# Letters only: \w minus digits and underscore.
_LETTERS = r"[^\W\d_]"

_TOKEN_RE = re.compile(
    rf"""
    (?P<url>(?:https?://|www\.)[^\s<>"]*[^\s<>".,!?;:)\]'}}])
  | (?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
  | (?P<user>@\w+)
  | (?P<num>\d+(?:[.,]\d+)*)
  | (?P<word>{_LETTERS}+(?:'{_LETTERS}+)*)
  | (?P<punct>(?P<p>[^\w\s]|_)(?P=p)*)
    """,
    re.VERBOSE,
)

_REPEAT_RE = re.compile(r"(.)\1{2,}")

_PLACEHOLDERS = {"url": URL_TOKEN, "email": EMAIL_TOKEN, "user": USER_TOKEN, "num": NUM_TOKEN}


def normalize(text: str, max_chars: int | None = None) -> str:
    """NFKC + lower-case; exposed so data splitting can hash the same canonical form."""
    if max_chars is not None:
        text = text[:max_chars]
    return unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)


def tokenize(text: str, max_tokens: int | None = DEFAULT_MAX_TOKENS) -> list[str]:
    """Deterministic, allocation-light tokenization; see the module docstring for rules."""
    max_chars = None if max_tokens is None else max_tokens * MAX_CHARS_PER_TOKEN
    tokens: list[str] = []
    for match in _TOKEN_RE.finditer(normalize(text, max_chars)):
        kind = match.lastgroup
        if kind == "word":
            tokens.append(_REPEAT_RE.sub(r"\1\1", match.group()))
        elif kind == "punct":
            run = match.group()
            tokens.append(run[0])
            if len(run) > 1:
                tokens.append(run[0])
        else:
            assert kind is not None
            tokens.append(_PLACEHOLDERS[kind])
        if max_tokens is not None and len(tokens) >= max_tokens:
            return tokens[:max_tokens]
    return tokens
