"""The cost budget per message (README, "Cost bounds per message"): no text of up to
10,000 characters costs more to tokenise, or to tokenise and encode, than
`BUDGET` times 10,000 characters of ordinary text.

Timed as ratios of the thread's CPU time within each test, best of five runs,
interleaved, with a margin for a loaded machine: the bench (`bench/hostile.py`)
measured the worst class at ~2x after the bounds, and 10x-5,000x before them for the
classes below.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from model.engine import Engine
from model.tokenizer import MAX_TOKEN_CHARS, tokenize
from tests.helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUDGET = 8
LENGTH = 10_000  # the default MODSTREAM_MAX_TEXT_CHARS

CHAT = (
    "you are such an idiot and i do not care what they say about the game last night "
    "free entry win a prize call now txt stop to end this is the best day ever lol "
    "please reply soon because we need to know who is coming to dinner on friday"
)
WORDS = CHAT.split()


def ordinary(seed: int) -> str:
    """Chat-like text: words, punctuation, numbers, a URL and some non-ASCII."""
    rng = random.Random(seed)
    parts: list[str] = []
    while sum(map(len, parts)) < LENGTH:
        parts.append(rng.choice(WORDS))
        roll = rng.random()
        if roll < 0.08:
            parts.append(rng.choice(["!!", "?", ",", "...", ":)"]))
        elif roll < 0.10:
            parts.append(rng.choice(["555-0199", "£1,000", "2day", "www.win.com", "café"]))
    return " ".join(parts)[:LENGTH]


def fill(pattern: str) -> str:
    return (pattern * LENGTH)[:LENGTH]


HOSTILE: dict[str, str] = {
    "combining marks, one class": "a" + "\u0301" * (LENGTH - 1),
    "combining marks, two classes": "a" + fill("\u0301\u0316")[1:],
    "CJK compatibility (x6)": fill("\u3316"),
    "Arabic ligature (x18)": fill("\ufdfa"),
    "one 10,000-letter word": "".join(random.Random(1).choices("abcdefghij", k=LENGTH)),
    "runs of three letters": fill("aaabbbccc"),
    "e-mail look-ahead a.a.a": fill("a."),
    "e-mail look-ahead a.a@": fill("a.")[:-1] + "@",
    "many @": fill("a@"),
    "letter and digits": "a" + "1" * (LENGTH - 1),
    "letters and digits alternating": fill("1a"),
    "zero-width spaces": fill("a\u200b"),
    "all punctuation": fill("!?"),
    "RTL with direction marks": fill("\u202e\u05e9\u05dc\u05d5\u05dd\u202c "),
    "emoji": fill("\U0001f600"),
    "failing URL": "http://" + "." * (LENGTH - 7),
    "starred": fill("a*"),
    "apostrophes": fill("a'"),
}


def best_ratio(hostile: Callable[[], object], reference: Callable[[], object]) -> float:
    """CPU cost of `hostile` over that of `reference`, each the best of 5 interleaved runs;
    up to 3 attempts while over the budget, since a noisy neighbour can slow any one
    attempt but a real regression (10x-2,000x before the bounds) every one. CPU time of
    this thread, not wall time: on a busy machine a 14 ms call is preempted where a
    2 ms one is not, which read as ratios of 9-11 for a class that costs 5.6. The cyclic
    collector is off while timing: late in a full suite its collections scan every
    object the earlier tests left, and they land on whichever side allocates more."""
    with collector_paused():
        return _best_ratio(hostile, reference)


@contextmanager
def collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _best_ratio(hostile: Callable[[], object], reference: Callable[[], object]) -> float:
    ratios = []
    for _ in range(3):
        hostile_times, reference_times = [], []
        for _ in range(5):
            for function, times in ((reference, reference_times), (hostile, hostile_times)):
                started = time.thread_time()
                function()
                times.append(time.thread_time() - started)
        ratios.append(min(hostile_times) / min(reference_times))
        if ratios[-1] < BUDGET:
            break
    return min(ratios)


@pytest.mark.parametrize("name", HOSTILE)
def test_tokenizing_any_text_costs_at_most_the_budget(name: str) -> None:
    text, reference = HOSTILE[name], ordinary(0)
    tokens = tokenize(text)
    assert len(tokens) <= 256 and max(map(len, tokens), default=0) <= MAX_TOKEN_CHARS
    assert best_ratio(lambda: tokenize(text), lambda: tokenize(reference)) < BUDGET


@pytest.fixture(scope="module")
def engine() -> Engine:
    model, vocab = tiny_model(WORDS, 3, subword_buckets=20_000, subword_dim=8)
    built = Engine.from_model(model, vocab, ("insult", "spam"), device="cpu")
    built.warm_up()
    return built


@pytest.mark.parametrize(
    "pattern",
    [
        "one unique 10,000-letter word",
        "unique CJK compatibility (x6)",
        "unique e-mail look-ahead",
        "unique letter and digits",
        "unique combining marks, two classes",
    ],
)
def test_encoding_unique_hostile_texts_costs_at_most_the_budget(
    engine: Engine, pattern: str
) -> None:
    """Each hostile text is new to every cache (its tokens need n-grams and vectors);
    the ordinary reference is cached, as most of a running worker's traffic is."""
    rng = random.Random(pattern)

    def make() -> str:
        seed = "".join(rng.choices("abcdefghij", k=12))
        return {
            "one unique 10,000-letter word": "".join(rng.choices("abcdefghij", k=LENGTH)),
            "unique CJK compatibility (x6)": seed + fill("\u3316"),
            "unique e-mail look-ahead": seed + fill("a.")[:-1] + "@",
            "unique letter and digits": seed + "1" * LENGTH,
            "unique combining marks, two classes": seed + fill("\u0301\u0316"),
        }[pattern][:LENGTH]

    texts = iter([make() for _ in range(15)])  # made before timing: each run a new one
    reference = ordinary(1)
    engine.encode_batch([reference])
    ratio = best_ratio(
        lambda: engine.encode_batch([next(texts)]), lambda: engine.encode_batch([reference])
    )
    assert ratio < BUDGET
