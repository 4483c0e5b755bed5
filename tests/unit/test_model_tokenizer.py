from __future__ import annotations

import time

import pytest

from model.tokenizer import (
    EMAIL_TOKEN,
    MAX_CHARS_PER_TOKEN,
    NUM_TOKEN,
    URL_TOKEN,
    USER_TOKEN,
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
