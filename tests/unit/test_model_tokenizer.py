from __future__ import annotations

import re
import time
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from model.tokenizer import (
    _COMPOSING_STARTERS,
    _TOKEN_RE,
    EMAIL_TOKEN,
    MAX_CHARS_PER_TOKEN,
    MAX_JOINED,
    MAX_SPELLED,
    MAX_TOKEN_CHARS,
    NORMALIZE_PIECE,
    NUM_TOKEN,
    URL_TOKEN,
    USER_TOKEN,
    _collapsed_head,
    join_spelled,
    normalize,
    scan,
    tokenize,
)


def test_lowercases_and_nfkc_normalises() -> None:
    # Full-width letters and the "fi" ligature fold to plain ASCII under NFKC.
    full_width_hello = "\uff28\uff25\uff2c\uff2c\uff2f"
    assert tokenize(f"{full_width_hello} W\u00f6rld \ufb01ne") == ["hello", "w\u00f6rld", "fine"]


def test_placeholders_replace_urls_emails_mentions_and_numbers() -> None:
    text = "see https://x.example/a?b=1, mail me.you+x@mail.co.uk or @some_body: 1,000.50 now"
    assert tokenize(text) == [
        "see",
        URL_TOKEN,
        ",",
        "mail",
        EMAIL_TOKEN,
        "or",
        USER_TOKEN,
        ":",
        NUM_TOKEN,
        "now",
    ]
    assert tokenize("visit www.spam.co.uk.") == ["visit", URL_TOKEN, "."]


def test_apostrophes_stay_inside_words_only() -> None:
    assert tokenize("Don't 'quote' it\u2019s") == ["don't", "'", "quote", "'", "it's"]


def test_punctuation_is_split_and_runs_capped_at_two() -> None:
    assert tokenize("what?!!!!! ok...") == ["what", "?", "!", "!", "ok", ".", "."]
    assert tokenize("a-b") == ["a", "-", "b"]


def test_elongated_words_collapse_to_two_repeats() -> None:
    assert tokenize("Soooooo cooool") == ["soo", "cool"]
    assert tokenize("soooo") == tokenize("sooooooooo")


def test_digits_split_words_into_number_placeholders() -> None:
    # Mostly-digit runs split as before: prices, codes and phone numbers stay <num>.
    assert tokenize("b4 150p txt82228 2,000p") == [
        "b",
        NUM_TOKEN,
        NUM_TOKEN,
        "p",
        "txt",
        NUM_TOKEN,
        NUM_TOKEN,
        "p",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("m0r0n", ["m0r0n"]),
        ("1diot", ["1diot"]),
        ("2day", ["2day"]),
        ("stuuuupid", ["stuupid"]),
        ("f*ck a**hole sh*t", ["f*ck", "a**hole", "sh*t"]),
        ("*wink* 5*", ["*", "wink", "*", NUM_TOKEN, "*"]),
    ],
)
def test_obfuscated_words_stay_whole(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_empty_and_whitespace_give_no_tokens() -> None:
    assert tokenize("") == []
    assert tokenize(" \n\t ") == []


def test_max_tokens_caps_the_output() -> None:
    text = " ".join(f"w{i}x" for i in range(500))
    assert len(tokenize(text, max_tokens=10)) == 10
    assert tokenize(text, max_tokens=10) == tokenize(text, max_tokens=None)[:10]
    assert len(tokenize(text, max_tokens=None)) > 500


def test_huge_input_costs_bounded_time() -> None:
    text = "word " * 2_000_000  # 10 MB
    started = time.perf_counter()
    tokens = tokenize(text, max_tokens=32)
    assert len(tokens) == 32
    assert time.perf_counter() - started < 1.0
    assert len(text) > MAX_CHARS_PER_TOKEN * 32  # so only the head was looked at


@pytest.mark.parametrize(
    "text", ["You IDIOT!!! go to http://a.b", "Các bạn xuống đường", "😀 ok 😀😀😀", "x" * 3000]
)
def test_deterministic(text: str) -> None:
    assert tokenize(text) == tokenize(text)
    assert all(token and not token.isspace() for token in tokenize(text))


# -- bounds: token length, normalised slice, linear rules --------------------------------


def test_word_tokens_are_cut_to_the_cap_after_normalising() -> None:
    word = "".join(chr(97 + (i * 7) % 26) for i in range(100))  # no 3-repeat to collapse
    assert tokenize(f"hi {word} there") == ["hi", word[:MAX_TOKEN_CHARS], "there"]
    # 10 characters that NFKC expands to 60 letters: one token, cut after expanding.
    (token,) = tokenize("\u3316" * 20)
    assert len(token) == MAX_TOKEN_CHARS and token.startswith("キロメートル")
    assert tokenize("m0r0n" * 30) == [("m0r0n" * 30)[:MAX_TOKEN_CHARS]]
    assert tokenize("f*ck" * 30) == [("f*ck" * 30)[:MAX_TOKEN_CHARS]]


def test_email_parts_past_the_rfc_limits_are_no_email() -> None:
    assert tokenize("x@mail.com " + "a.b" * 21 + "@mail.com")[:1] == [EMAIL_TOKEN]
    local = "ab" * 33  # 66 characters: longer than RFC 5321 allows
    tokens = tokenize(f"{local}@mail.com")
    assert EMAIL_TOKEN not in tokens and tokens[0] == local[:MAX_TOKEN_CHARS]
    assert EMAIL_TOKEN not in tokenize("a@" + "bc" * 35 + ".com")  # a 70-character label


@pytest.mark.parametrize(
    "text",
    [
        "\ufdfa" * 5000,  # 18-fold expansion
        "\u3316" * 5000,
        "a" + "\u0301\u0316" * 5000,  # marks of two classes, out of order
        "\uff46\uff55\uff4c\uff4c \uff57\uff49\uff44\uff54\uff48 " * 2000,
    ],
)
def test_normalisation_output_is_bounded(text: str) -> None:
    assert len(normalize(text, 1000)) <= 1000 < len(normalize(text))
    assert len(tokenize(text, max_tokens=16)) <= 16


def test_ascii_and_normalised_text_skip_nfkc_and_match_it() -> None:
    for text in ["Hello THERE", "ça va? 日本語 😀", "ﬁne \uff21\uff22\uff23 e\u0301", "İstanbul"]:
        expected = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
        assert normalize(text, 10_000) == expected == normalize(text)


# Characters that NFKC reorders or composes across a would-be cut, and ones it expands.
_JOINING = [
    "e\u0301",
    "a\u0316\u0301\u0323",
    "\u0301",
    "\u1100\u1161",
    "\uac00\u11a8",
    "\u3131\u314f",  # compatibility jamo: NFKC composes them to a syllable
    "\u0b47\u0b3e",  # Oriya two-part vowel
    "\uff76\uff9e",  # halfwidth ka + voiced mark
    "\u0f73",
    "\ufdfa",
    "\u3316",
    "\uff46",
    "A",
    " ",
    "\u2019",
]


def longest_joining_run(text: str) -> int:
    longest = run = 0
    for character in text:
        joins = unicodedata.combining(character) or character in _COMPOSING_STARTERS
        run = run + 1 if joins else 0
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("joining", _JOINING)
def test_pieces_are_never_cut_inside_what_nfkc_joins(joining: str) -> None:
    """Every offset of each sequence at every piece boundary: the result is the
    single call's."""
    for offset in range(NORMALIZE_PIECE - 12, NORMALIZE_PIECE + 2):
        for tail in (joining, joining * 4):
            text = "\uff46" + "x" * offset + tail + "\u0301" * 3 + "y" * 100
            assert longest_joining_run(text) <= MAX_JOINED
            assert normalize(text, 1 << 20) == normalize(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_JOINING), min_size=30, max_size=300))
def test_normalising_in_pieces_equals_one_call(parts: list[str]) -> None:
    """Pieces are cut only where NFKC cannot join the two sides, so texts of every
    length give exactly the single call's result, unless a run of joining characters
    is longer than MAX_JOINED (then the cost bound wins)."""
    text = "".join(parts)
    assume(longest_joining_run(text) <= MAX_JOINED)
    assert normalize(text, 1 << 20) == normalize(text)


def test_a_run_longer_than_max_joined_is_normalised_in_bounded_pieces() -> None:
    text = "a" + "\u0301\u0316" * 5000  # NFKC sorts a run by insertion: quadratic
    normalised = normalize(text, 1 << 20)
    assert sorted(normalised) == sorted(normalize(text))  # the same marks, sorted per piece
    assert normalised != normalize(text)


def test_composing_starters_match_unicodedata() -> None:
    """The hard-coded set is what `unicodedata` derives for this Python's Unicode."""
    seconds = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V, T
    decomposable = []
    for point in range(0x110000):
        decomposition = unicodedata.decomposition(chr(point))
        if decomposition:
            decomposable.append(point)
            parts = decomposition.split()
            if not decomposition.startswith("<") and len(parts) == 2:
                seconds.add(int(parts[1], 16))

    def joins(point: int) -> bool:
        return bool(unicodedata.combining(chr(point))) or point in seconds

    derived = {p for p in seconds if not unicodedata.combining(chr(p))}
    derived |= {
        p
        for p in decomposable
        if not unicodedata.combining(chr(p))
        and joins(ord(unicodedata.normalize("NFKD", chr(p))[0]))
    }
    assert {ord(c) for c in _COMPOSING_STARTERS} == derived
    assert min(derived) >= 0x300 and all(not unicodedata.combining(chr(p)) for p in range(0x300))


# The token regex before the linear-time rewrite: the reference the new one must match on
# every text whose runs stay within the e-mail limits.
_L, _A = r"[^\W\d_]", r"[^\W_]"
_REFERENCE_RE = re.compile(
    rf"""
    (?P<url>(?:https?://|www\.)[^\s<>"]*[^\s<>".,!?;:)\]'}}])
  | (?P<email>(?=[\w.+-]*@)[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
  | (?P<user>@\w+)
  | (?P<mixed>(?={_A}*\d)(?={_A}*{_L}){_A}*(?:\d{_A}*?{_L}|{_L}{_A}*?\d){_A}*)
  | (?P<starred>{_L}+(?:\*+{_L}+)+)
  | (?P<num>\d+(?:[.,]\d+)*)
  | (?P<word>{_L}+(?:'{_L}+)*)
  | (?P<punct>(?P<p>[^\w\s]|_)(?P=p)*)
    """,
    re.VERBOSE,
)


@settings(max_examples=2000, deadline=None)
@given(st.text(st.sampled_from("ab1é٣_ .,@+-*'/:!wh\u0301"), max_size=60))
def test_linear_rules_match_the_reference(text: str) -> None:
    for prefix in ("", "http://", "www.", "x@y."):
        ours = [(m.lastgroup, m.span()) for m in _TOKEN_RE.finditer(prefix + text)]
        reference = [(m.lastgroup, m.span()) for m in _REFERENCE_RE.finditer(prefix + text)]
        assert ours == reference


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("ab1"), st.sampled_from([1, 2, 3, 7, 100])),
        min_size=20,
        max_size=400,
    )
)
def test_long_words_collapse_exactly_then_get_cut(runs: list[tuple[str, int]]) -> None:
    """Only the head of a long word is collapsed; the token is the same as collapsing
    it whole and cutting."""
    word = "".join(character * count for character, count in runs)
    assume(len(word) > MAX_TOKEN_CHARS)
    expected = re.sub(r"(.)\1{2,}", r"\1\1", word)[:MAX_TOKEN_CHARS]
    assert _collapsed_head(word) == expected
    if word.isalpha():
        assert tokenize(f"x {word}") == ["x", expected]


# -- rule 6: spelled-out words -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("you are a s t u p i d", ["you", "are", "astupid"]),
        ("you s.t.u.p.i.d i.d.i.o.t", ["you", "stupididiot"]),
        ("i-d-i-o-t!", ["idiot", "!"]),
        ("s t u u u u p i d", ["stuupid"]),
        ("I grew up in the U S A", ["i", "grew", "up", "in", "the", "usa"]),
        ("the U.S.A. team", ["the", "usa", ".", "team"]),
        ("J. R. R. Tolkien", ["j", ".", "r", ".", "r", ".", "tolkien"]),  # a space each
        ("e.g. a b", ["e", ".", "g", ".", "a", "b"]),
        ("code A B C 1 2 3", ["code", "abc", NUM_TOKEN, NUM_TOKEN, NUM_TOKEN]),
        ("a b", ["a", "b"]),  # two letters are no word
        ("a  b  c", ["a", "b", "c"]),  # one space apart at most
        ("a..b..c", ["a", ".", ".", "b", ".", ".", "c"]),  # one separator at most
    ],
)
def test_spelled_out_words_join(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_spelled_out_runs_are_cut_at_the_cap_and_can_be_left_alone() -> None:
    text = " ".join("abcdefghij" * 4)  # 40 single letters
    joined = tokenize(text)
    assert [len(token) for token in joined] == [MAX_SPELLED, 40 - MAX_SPELLED]
    assert tokenize(text, spelled=False) == list("abcdefghij" * 4)
    assert join_spelled(*scan(text)) == joined
    assert scan("hi  you a.b !!", None) == (
        ["hi", "you", "a", ".", "b", "!", "!"],
        [0, 2, 1, 0, 0, 1, 0],
    )
