"""Moderator feedback: record validation (worker/feedback.py) and the merge (model/data.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from model.data import LABELS, SOURCE_FEEDBACK, DataSplits, Example, merge_feedback, text_key
from schemas.feedback import ModeratorFeedback
from worker.feedback import FeedbackRecord, order_records, parse_feedback


def feedback_bytes(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "id": "f1",
        "text": "you absolute walnut",
        "labels": {"insult": True},
        "reviewer": "mod-7",
        "decided_at": "2024-05-01T12:00:00Z",
    }
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_valid_feedback_parses() -> None:
    parsed = parse_feedback(feedback_bytes(), LABELS)
    assert isinstance(parsed, ModeratorFeedback)
    assert parsed.labels == {"insult": True}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null_value"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"{nope", "invalid_json"),
        (b"[1]", "not_an_object"),
        (feedback_bytes(reviewer=None), "missing_field"),
        (feedback_bytes(extra="x"), "extra_field"),
        (feedback_bytes(labels={"insult": "yes"}), "wrong_type"),
        (feedback_bytes(labels={}), "invalid_field"),
        (feedback_bytes(text="   "), "empty_text"),
        (feedback_bytes(labels={"insult": True, "threat": True}), "unknown_label"),
        (feedback_bytes(decided_at="yesterday"), "invalid_field"),
    ],
)
def test_invalid_feedback_gives_a_reason(value: bytes | None, reason: str) -> None:
    assert parse_feedback(value, LABELS) == reason


def test_records_are_ordered_by_decision_time_with_naive_times_as_utc() -> None:
    def record(decided: datetime, partition: int, offset: int) -> FeedbackRecord:
        feedback = ModeratorFeedback(
            id="x", text="t", labels={"spam": True}, reviewer="r", decided_at=decided
        )
        return FeedbackRecord(feedback, partition, offset)

    late = record(datetime(2024, 1, 2, tzinfo=UTC), 0, 0)
    early_naive = record(datetime(2024, 1, 1), 1, 5)
    tie_a = record(datetime(2024, 1, 3, tzinfo=UTC), 0, 9)
    tie_b = record(datetime(2024, 1, 3, tzinfo=UTC), 1, 1)
    assert order_records([tie_b, late, tie_a, early_naive]) == [early_naive, late, tie_a, tie_b]


def example(text: str, insult: float | None = None, spam: float | None = None) -> Example:
    values = {"insult": insult, "spam": spam}
    return Example(
        text,
        tuple(values[label] or 0.0 for label in LABELS),
        tuple(0.0 if values[label] is None else 1.0 for label in LABELS),
        "base",
    )


def base_splits() -> DataSplits:
    return DataSplits(
        train=[example("You IDIOT", insult=1.0), example("hello there", insult=0.0)],
        validation=[example("win a   prize now", spam=1.0), example("see you soon", spam=0.0)],
        test=[example("nice work", insult=0.0)],
        fingerprint="base",
    )


def test_feedback_wins_per_label_and_unknown_labels_stay_masked() -> None:
    merged = merge_feedback(
        base_splits(),
        [
            ("you idiot", {"insult": False}),  # overrides the base insult label
            ("WIN A PRIZE NOW", {"insult": False}),  # base knows spam; feedback adds insult
            ("brand new text", {"spam": True}),
        ],
    )
    by_key = {text_key(ex.text): ex for ex in merged.extra_train}
    idiot = by_key[text_key("you idiot")]
    assert (idiot.targets, idiot.mask, idiot.source) == ((0.0, 0.0), (1.0, 0.0), SOURCE_FEEDBACK)
    prize = by_key[text_key("win a prize now")]
    assert prize.targets == (0.0, 1.0) and prize.mask == (1.0, 1.0)
    new = by_key[text_key("brand new text")]
    assert new.targets == (0.0, 1.0) and new.mask == (0.0, 1.0)
    # Superseded base examples are gone from every split, the rest untouched.
    assert [ex.text for ex in merged.splits.train] == ["hello there"]
    assert [ex.text for ex in merged.splits.validation] == ["see you soon"]
    assert [ex.text for ex in merged.splits.test] == ["nice work"]
    assert merged.superseded == {"train": 1, "validation": 1, "test": 0}
    assert merged.texts == 3 and merged.duplicates == 0


def test_later_feedback_wins_and_duplicates_fold_into_one_example() -> None:
    merged = merge_feedback(
        base_splits(),
        [
            ("Spam or not", {"spam": True, "insult": True}),
            ("spam  OR not", {"spam": False}),
        ],
        weight=4,
    )
    assert merged.texts == 1 and merged.duplicates == 1
    assert len(merged.extra_train) == 4, "weight repeats each merged example"
    assert all(ex.targets == (1.0, 0.0) and ex.mask == (1.0, 1.0) for ex in merged.extra_train)


def test_fingerprint_follows_the_feedback() -> None:
    base = base_splits()
    assert merge_feedback(base, []).splits.fingerprint == "base"
    one = merge_feedback(base, [("x y", {"spam": True})]).splits.fingerprint
    other = merge_feedback(base, [("x y", {"spam": False})]).splits.fingerprint
    heavier = merge_feedback(base, [("x y", {"spam": True})], weight=2).splits.fingerprint
    assert len({"base", one, other, heavier}) == 4


def test_merge_rejects_unknown_labels_and_bad_weight() -> None:
    with pytest.raises(ValueError, match="threat"):
        merge_feedback(base_splits(), [("x", {"threat": True})])
    with pytest.raises(ValueError):
        merge_feedback(base_splits(), [], weight=0)
