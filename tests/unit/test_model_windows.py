from __future__ import annotations

import numpy as np
import pytest

from model.tokenizer import tokenize
from model.windows import (
    STRATEGY_SAMPLED,
    STRATEGY_WHOLE,
    Window,
    WindowError,
    WindowPlanner,
    WindowSettings,
    aggregate,
    budget_regions,
    chars_scored,
    pieces,
    window_bounds,
)

NEUTRAL = (
    "The city council met on Tuesday to discuss the new budget for the public library. "
    "Officials said the repairs to the bridge will be finished before the end of summer. "
    "Rain is expected across the region tomorrow, with sunshine returning on Friday. "
)
INSULT = "you are a stupid worthless idiot"


def planner(**overrides: int) -> WindowPlanner:
    return WindowPlanner(WindowSettings(**{"window_tokens": 16, "stride": 8, **overrides}))


def window_holding(windows: tuple[Window, ...], word: str) -> list[Window]:
    return [w for w in windows if word in w.tokens]


def contains_run(tokens: list[str], run: tuple[str, ...]) -> bool:
    return any(tuple(tokens[i : i + len(run)]) == run for i in range(len(tokens) - len(run) + 1))


@pytest.mark.parametrize(
    "text",
    [
        "hello world",
        "  leading and trailing  \n",
        "WHY?!!!! you m0r0n... see https://x.example/a?b=1, mail a.b@c.co or @you",
        "\uff28\uff25\uff2c\uff2c\uff2f \ufb01ne \u0130stanbul \u00bd caf\u0065\u0301",
        "ΟΔΟΣ ΚΑΛΟΣ. soooo cooool",
        "a\u00a0b\u3000c\u2028d",
    ],
)
def test_pieces_tokenise_to_the_whole_texts_tokens(text: str) -> None:
    # The rule windows rely on: no token spans whitespace, normalisation is local.
    (window,) = planner(window_tokens=256).plan(text).windows
    assert list(window.tokens) == tokenize(text, None)


def test_spelled_out_words_join_across_pieces_with_the_span_of_their_letters() -> None:
    text = NEUTRAL + "you are a s t u p i d i d i o t, " + NEUTRAL
    plan = planner(window_tokens=256).plan(text)
    (window,) = plan.windows
    assert list(window.tokens) == tokenize(text, None)
    assert "astupididiot" in window.tokens
    # In a long text the joined word spans the letters' pieces in the original.
    spelled = "s t u.p.i d"
    long_text = NEUTRAL * 3 + spelled + " " + NEUTRAL * 3
    holding = window_holding(planner().plan(long_text).windows, "stupid")
    assert holding
    start = long_text.index(spelled)
    for window in holding:
        assert window.start <= start and start + len(spelled) <= window.end


def test_a_short_text_is_one_window_over_the_whole_text() -> None:
    text = "you are a stupid idiot"
    plan = planner().plan(text)
    assert len(plan.windows) == 1
    assert plan.windows[0].tokens == tuple(tokenize(text))
    assert (plan.windows[0].start, plan.windows[0].end) == (0, len(text))
    assert plan.chars_scored == plan.chars_total == len(text)
    assert plan.strategy == STRATEGY_WHOLE and plan.complete


def test_a_blank_text_is_one_empty_window() -> None:
    plan = planner().plan("   ")
    assert [w.tokens for w in plan.windows] == [()]
    assert plan.chars_scored == plan.chars_total == 3


def test_window_bounds_overlap_and_end_on_the_last_token() -> None:
    assert window_bounds(0, 4, 2) == []
    assert window_bounds(4, 4, 2) == [(0, 4)]
    assert window_bounds(9, 4, 2) == [(0, 4), (2, 6), (4, 8), (5, 9)]
    # Every run of size - stride tokens lies whole inside some window.
    size, stride, count = 16, 8, 101
    bounds = window_bounds(count, size, stride)
    for start in range(count - (size - stride) + 1):
        assert any(a <= start and start + size - stride <= b for a, b in bounds)
    assert all(b - a == size for a, b in bounds)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_abuse_anywhere_in_a_long_text_lies_whole_in_a_window(where: str) -> None:
    context = NEUTRAL * 4
    text = {
        "start": f"{INSULT}. {context}",
        "middle": f"{context}{INSULT}. {context}",
        "end": f"{context}{INSULT}",
    }[where]
    plan = planner().plan(text)
    assert len(plan.windows) > 3
    words = tuple(tokenize(INSULT))
    holding = [
        w
        for w in plan.windows
        if any(w.tokens[i : i + len(words)] == words for i in range(len(w.tokens)))
    ]
    assert holding, "no window holds the whole insult"
    start = text.index(INSULT)
    for window in holding:
        assert window.start <= start and start + len(INSULT) <= window.end
    assert plan.complete


def test_spans_point_at_the_original_characters_after_normalisation() -> None:
    # Full-width letters keep their length under NFKC but ligatures and the
    # one-character fraction do not: "ﬁ" → "fi", "½" → one, fraction slash, two (three tokens).
    prefix = "\ufb01ne \ufb02ow \u00bd \uff28\uff25\uff2c\uff2c\uff2f " * 6
    text = prefix + "\uff29\uff24\uff29\uff2f\uff34 " + prefix
    plan = planner().plan(text)
    holding = window_holding(plan.windows, "idiot")
    assert holding
    original = "\uff29\uff24\uff29\uff2f\uff34"
    for window in holding:
        span = text[window.start : window.end]
        assert original in span
        # A window may start or end inside a piece that gives several tokens ("½"):
        # its span then covers the whole piece, so its tokens are a run of the span's.
        assert contains_run(tokenize(span, None), window.tokens)


def test_every_window_is_a_run_of_its_spans_tokens() -> None:
    text = (NEUTRAL * 3) + "Don't   tell\tme\n\nwhat to do!!!!"
    windows = planner().plan(text).windows
    for window in windows:
        span = text[window.start : window.end]
        assert span == span.strip()
        assert contains_run(tokenize(span, None), window.tokens)
    # Together, in order, they hold every token of the text.
    tokens = tokenize(text, None)
    assert windows[0].tokens == tuple(tokens[:16]) and windows[-1].tokens == tuple(tokens[-16:])


def test_a_piece_longer_than_the_limit_is_cut_into_chunks() -> None:
    text = "x" * 4_500 + " tail"
    assert pieces(text, 0, len(text)) == [(0, 2048), (2048, 4096), (4096, 4500), (4501, 4505)]


def test_a_long_url_stays_one_token_as_in_the_whole_texts_tokens() -> None:
    url = "https://tracker.example/r?" + "&".join(f"k{i}=v{i}" for i in range(120))
    text = f"see {url} now"
    assert len(url) > 1_000
    (window,) = planner(window_tokens=256).plan(text).windows
    assert list(window.tokens) == tokenize(text, None) == ["see", "<url>", "now"]


def test_within_the_budget_everything_is_read() -> None:
    text = NEUTRAL * 10
    plan = planner(max_chars=len(text)).plan(text)
    assert plan.strategy == STRATEGY_WHOLE and plan.complete


def test_over_the_budget_head_tail_and_sampled_middle_are_read() -> None:
    text = "".join(f"sentence number {i} is here. " for i in range(2000))
    settings = {"max_chars": 2000, "max_windows": 1000}
    plan = planner(**settings).plan(text)
    assert plan.strategy == STRATEGY_SAMPLED and not plan.complete
    assert plan.chars_total == len(text)
    # A quarter of the budget at each end, the middle half in four slices: the
    # regions hold about max_chars characters (a few more from word snapping).
    assert 1800 <= plan.chars_scored <= 2000 + 10 * 32
    assert plan.windows[0].start == 0
    assert plan.windows[-1].end == len(text.rstrip())
    regions = budget_regions(text, 2000)
    assert len(regions) == 6
    assert all(text[a - 1].isspace() or a == 0 for a, _ in regions)
    middle = [a for a, _ in regions[1:-1]]
    assert len({a * 4 // len(text) for a in middle}) >= 3  # spread over the middle
    # Deterministic: the same text always gets the same windows.
    assert planner(**settings).plan(text) == plan
    # A different text of the same length samples elsewhere in the middle.
    other = text.replace("sentence", "sentencf")
    assert budget_regions(other, 2000)[1:-1] != regions[1:-1]


def test_the_window_cap_keeps_head_tail_and_spread() -> None:
    text = "! ? " * 500  # one token per two characters
    plan = planner(max_windows=5).plan(text)
    assert len(plan.windows) == 5
    assert plan.windows[0].start == 0 and plan.windows[-1].end == len(text) - 1
    assert not plan.complete
    assert plan.chars_scored < plan.chars_total


def test_chars_scored_counts_whitespace_gaps_as_read() -> None:
    text = "aa  bb  cc"
    assert chars_scored(text, [(0, 2), (4, 6), (8, 10)]) == len(text)
    assert chars_scored(text, [(0, 2), (8, 10)]) == len(text) - 6
    assert chars_scored("  aa  ", [(2, 4)]) == 6


def test_aggregate_takes_each_texts_maximum_per_label() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.3], [0.5, 0.4]], dtype=np.float32)
    owners = np.array([0, 0, 1, 2])
    expected = np.array([[0.8, 0.9], [0.3, 0.3], [0.5, 0.4]], dtype=np.float32)
    assert np.array_equal(aggregate(scores, owners, 3), expected)


@pytest.mark.parametrize(
    "settings",
    [
        {"window_tokens": 0},
        {"stride": 0},
        {"window_tokens": 8, "stride": 9},
        {"max_chars": -1},
        {"max_windows": 1},
    ],
)
def test_settings_that_cannot_work_are_refused(settings: dict[str, int]) -> None:
    with pytest.raises(WindowError):
        WindowSettings(**settings)


def test_the_piece_cache_stays_within_its_bytes() -> None:
    bounded = WindowPlanner(WindowSettings(), cache_bytes=200_000)
    words = [f"w{i:05d}" * 40 for i in range(3_000)]  # 240-character unique pieces
    for start in range(0, len(words), 100):
        bounded.plan(" ".join(words[start : start + 100]))
    cache = bounded._cache
    assert 0 < cache.bytes <= 200_000 and cache.evictions > 0
    # What it forgot it computes again, to the same tokens.
    text = " ".join(words[:5])
    assert bounded.plan(text) == WindowPlanner(WindowSettings()).plan(text)
