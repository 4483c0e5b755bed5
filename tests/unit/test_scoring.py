"""worker/scoring.py, worker/score_input.py, worker/score_output.py: `modstream score`
writes what the worker would publish, from JSON lines, plain text or CSV, batch by batch."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from model.engine import Engine
from tests.unit.test_model_engine import make_engine
from tests.unit.test_model_engine_windows import keyword_engine
from worker.command_errors import UsageError
from worker.decode import Decoder, SourceRecord
from worker.metrics import WorkerMetrics
from worker.processing import BatchProcessor
from worker.score_input import ScoreLine, StallBatcher, open_lines
from worker.score_output import make_writer
from worker.scoring import ScoreTally, score_stream

LINES = [
    '{"id": "a", "text": "you idiot"}',
    "{not json",
    "",
    '{"id": "b", "text": "free prize call now"}',
    '{"id": "c"}',
]


def without_clock(line: dict[str, Any]) -> dict[str, Any]:
    line.pop("dead_lettered_at", None)
    line.get("timings", {}).pop("inference_ms", None)
    return line


def score_text(
    engine: Any,
    data: bytes,
    input_format: str = "jsonl",
    output_format: str = "jsonl",
    batch_size: int = 2,
) -> tuple[ScoreTally, str]:
    out = io.StringIO()
    lines = open_lines(io.BytesIO(data), input_format, "in")  # type: ignore[arg-type]
    batches = StallBatcher(lines, batch_size, wait_s=5.0)
    with structlog.testing.capture_logs():
        tally = score_stream(engine, batches, make_writer(output_format, out), "in")  # type: ignore[arg-type]
    return tally, out.getvalue()


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_one_line_per_input_line_as_the_worker_builds_it() -> None:
    engine = make_engine()
    tally, text = score_text(engine, ("\n".join(LINES) + "\n").encode())
    written = [without_clock(line) for line in jsonl(text)]
    assert tally.dead_lettered == 2 and tally.messages == 4
    assert tally.dead_letters == {"invalid_json": 1, "missing_field": 1}
    assert [line.get("error_kind", line["id"]) for line in written] == [
        "a",
        "invalid_json",
        "b",
        "missing_field",
    ]
    assert [line["offset"] for line in written] == [0, 1, 3, 4], "line indexes, blanks skipped"

    processor = BatchProcessor(Decoder(), WorkerMetrics(), "results", "dead-letters")
    records = [
        SourceRecord("in", 0, n, None, None, line.encode()) for n, line in enumerate(LINES) if line
    ]
    with structlog.testing.capture_logs():
        prepared = [processor.process(records[:2], engine), processor.process(records[2:], engine)]
    expected = [without_clock(json.loads(o.value)) for p in prepared for o in p.outputs]
    # Results are the worker's bytes; dead letters add the 1-based line and the id.
    for line, worker_line in zip(written, expected, strict=True):
        if "error_kind" in line:
            assert line.pop("line") in (2, 5)
            assert line.pop("id") == (None if line["error_kind"] == "invalid_json" else "c")
        assert line == worker_line


def test_plain_text_lines_get_generated_ids_and_a_byte_order_mark_is_ignored() -> None:
    data = "\ufeffyou idiot\r\n\nsee you at five\n".encode()
    tally, text = score_text(make_engine(), data, "text")
    written = jsonl(text)
    assert tally.dead_lettered == 0
    assert [line["id"] for line in written] == ["line-1", "line-3"]
    assert [line["offset"] for line in written] == [0, 2]


def test_a_jsonl_byte_order_mark_no_longer_makes_the_first_line_invalid() -> None:
    tally, text = score_text(make_engine(), b'\xef\xbb\xbf{"id": "a", "text": "hi"}\n')
    assert tally.dead_lettered == 0 and jsonl(text)[0]["id"] == "a"


def test_a_text_line_that_is_not_utf8_is_dead_lettered_with_its_bytes() -> None:
    raw = b"caf\xe9 au lait"
    _, text = score_text(make_engine(), b"fine\n" + raw + b"\n", "text")
    fine, bad = jsonl(text)
    assert fine["id"] == "line-1"
    assert bad["error_kind"] == "invalid_utf8" and bad["line"] == 2 and bad["id"] == "line-2"
    assert bad["value_encoding"] == "base64" and base64.b64decode(bad["value"]) == raw


def test_csv_reads_the_named_columns_in_any_order_with_quoted_line_breaks() -> None:
    data = b'Text,score,ID\n"you\nidiot",9,x1\n\nhello,1,\n,2,x3\n'
    tally, text = score_text(make_engine(), data, "csv")
    written = jsonl(text)
    assert [line["id"] for line in written] == ["x1", "line-5", "x3"]
    assert written[2]["error_kind"] == "empty_text" and written[2]["line"] == 6
    assert tally.dead_letters == {"empty_text": 1}


def test_csv_without_a_text_column_is_refused_before_scoring() -> None:
    with pytest.raises(UsageError, match=r"'text' column.*'id', 'message'"):
        open_lines(io.BytesIO(b"id,message\n1,hello\n"), "csv", "in.csv")
    with pytest.raises(UsageError, match="none"):
        open_lines(io.BytesIO(b""), "csv", "in.csv")


def test_table_shows_id_flagged_categories_and_scores_per_row() -> None:
    engine = make_engine()
    engine.thresholds = {label: 0.0 for label in engine.labels}  # everything flagged
    data = b'{"id": "a", "text": "you idiot"}\n{broken\n'
    _, text = score_text(engine, data, output_format="table")
    header, row, dead = text.splitlines()
    assert header.split() == ["LINE", "ID", "FLAGGED", *[label.upper() for label in engine.labels]]
    cells = row.split()
    assert cells[:3] == ["1", "a", ",".join(engine.labels)]
    assert all(0.0 <= float(cell) <= 1.0 for cell in cells[3:]) and len(cells) == 3 + len(
        engine.labels
    )
    assert dead.split()[:4] == ["2", "-", "error", "invalid_json:"]


def test_csv_output_has_one_column_per_label_and_the_error_columns() -> None:
    engine = make_engine()
    engine.thresholds = {label: 1.1 for label in engine.labels}  # nothing flagged
    data = b'{"id": "a", "text": "you idiot"}\n{"id": "b"}\n'
    _, text = score_text(engine, data, output_format="csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["line", "id", "flagged", *engine.labels, "error_kind", "error_message"]
    assert rows[0]["id"] == "a" and rows[0]["flagged"] == "" and rows[0]["error_kind"] == ""
    assert all(0.0 <= float(rows[0][label]) <= 1.0 for label in engine.labels)
    assert rows[1]["line"] == "2" and rows[1]["id"] == "b"
    assert rows[1]["error_kind"] == "missing_field" and "text" in rows[1]["error_message"]


class RecordingSink(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_each_batch_is_written_and_flushed_before_the_next_is_read() -> None:
    sink = RecordingSink()
    seen_before_second_batch: list[str] = []

    def batches() -> Iterator[list[ScoreLine]]:
        yield [ScoreLine(1, b'{"id": "a", "text": "hello"}', None)]
        seen_before_second_batch.append(sink.flushed[-1])
        yield [ScoreLine(2, b'{"id": "b", "text": "hello"}', None)]

    with structlog.testing.capture_logs():
        score_stream(make_engine(), batches(), make_writer("jsonl", sink), "in")
    assert json.loads(seen_before_second_batch[0])["id"] == "a"
    assert len(sink.flushed) == 2


def test_a_batch_closes_when_the_input_stalls() -> None:
    """A slow pipe: three lines, then nothing for as long as the reader waits. The
    batch (room for 256) must close with the three instead of waiting for more."""
    release = threading.Event()

    def lines() -> Iterator[ScoreLine]:
        for n in range(1, 4):
            yield ScoreLine(n, b"{}", None)
        release.wait(timeout=60)  # the input stalls until the test has its batch
        yield ScoreLine(4, b"{}", None)

    batches = iter(StallBatcher(lines(), 256, wait_s=0.05))
    got: list[list[ScoreLine]] = []
    taker = threading.Thread(target=lambda: got.append(next(batches)), daemon=True)
    taker.start()
    taker.join(timeout=30)
    release.set()
    assert got, "no batch while the input stalled"
    assert [line.line for line in got[0]] == [1, 2, 3]
    assert [line.line for batch in batches for line in batch] == [4]


def test_a_read_error_is_raised_after_the_lines_before_it() -> None:
    def lines() -> Iterator[ScoreLine]:
        yield ScoreLine(1, b"{}", None)
        raise OSError("disk gone")

    batches = iter(StallBatcher(lines(), 8, wait_s=5.0))
    assert [line.line for line in next(batches)] == [1]
    with pytest.raises(OSError, match="disk gone"):
        next(batches)


class BrokenEngine:
    """An engine whose model fails on one text."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.version, self.labels, self.thresholds = (
            engine.version,
            engine.labels,
            engine.thresholds,
        )

    def encode_batch(self, texts: list[str]) -> Any:
        raise RuntimeError("tokeniser broke")

    def score(self, texts: list[str]) -> Any:
        if "prize" in texts[0]:
            raise RuntimeError("model broke")
        return self._engine.score(texts)


def test_a_text_the_model_fails_on_becomes_an_inference_error_not_a_crash() -> None:
    with structlog.testing.capture_logs() as logs:
        engine: Any = BrokenEngine(make_engine())
        out = io.StringIO()
        lines = open_lines(io.BytesIO(("\n".join(LINES) + "\n").encode()), "jsonl", "in")
        tally = score_stream(engine, StallBatcher(lines, 8, 5.0), make_writer("jsonl", out), "in")
    written = jsonl(out.getvalue())
    assert tally.dead_lettered == 3
    assert written[0]["id"] == "a"
    assert written[2]["error_kind"] == "inference_error" and written[2]["id"] == "b"
    assert "model broke" in written[2]["error_message"]
    assert {"batch_encoding_failed", "inference_failed"} <= {line["event"] for line in logs}


def test_results_say_what_was_read_and_where_the_abuse_is() -> None:
    engine = keyword_engine(max_chars=5_000)
    neutral = "The council met on Tuesday to discuss the new budget for the library. " * 30
    long_text = f"{neutral}you are an idiot. {neutral}"
    huge_text = neutral * 10 + " you idiot"
    lines = [
        json.dumps({"id": "short", "text": "you idiot"}),
        json.dumps({"id": "long", "text": long_text}),
        json.dumps({"id": "huge", "text": huge_text}),
        json.dumps({"id": "clean", "text": neutral}),
    ]
    out = io.StringIO()
    with structlog.testing.capture_logs():
        source = open_lines(io.BytesIO("\n".join(lines).encode()), "jsonl", "in")
        tally = score_stream(engine, StallBatcher(source, 8, 5.0), make_writer("jsonl", out), "in")
    assert tally.dead_lettered == 0
    results = {r["id"]: r for r in jsonl(out.getvalue())}

    short = results["short"]
    assert short["coverage"] == {
        "chars_scored": 9,
        "chars_total": 9,
        "windows": 1,
        "strategy": "whole",
    }
    (span,) = short["evidence"]["insult"]
    assert (span["start"], span["end"]) == (0, 9)
    assert span["score"] == short["category_scores"]["insult"]

    long = results["long"]
    assert long["categories"]["insult"] and long["coverage"]["windows"] > 1
    assert long["coverage"]["chars_scored"] == long["coverage"]["chars_total"] == len(long_text)
    (span,) = long["evidence"]["insult"]
    start = long_text.index("you are an idiot")
    assert span["start"] <= start < start + 16 <= span["end"] < len(long_text)
    assert "idiot" in long_text[span["start"] : span["end"]]

    huge = results["huge"]  # past the budget: still scored, the tail read
    assert huge["coverage"]["strategy"] == "head+tail+sampled"
    assert huge["coverage"]["chars_scored"] < huge["coverage"]["chars_total"] == len(huge_text)
    assert huge["categories"]["insult"]

    clean = results["clean"]
    assert not clean["flagged"] and clean["evidence"] == {}
