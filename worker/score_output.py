"""`modstream score`'s output formats (`--format`): one writer per format, one row per
input message, in input order, flushed after every batch.

- `jsonl` (default): a result is the worker's result JSON, byte for byte; a dead
  letter is the worker's dead-letter JSON plus `line` (1-based input line) and `id`
  (the request's, when it can be read).
- `table`: aligned columns for a terminal: line, id, flagged categories, one score
  column per label; a dead letter shows its kind and message instead of scores.
- `csv`: `line,id,flagged,<one column per label>,error_kind,error_message`, with
  `flagged` the flagged categories separated by spaces.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any, Literal, Protocol, TextIO

from worker.score_input import ScoreLine

OutputFormat = Literal["jsonl", "table", "csv"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("jsonl", "table", "csv")
TABLE_ID_WIDTH = 20
TABLE_MESSAGE_CHARS = 100


class ScoreWriter(Protocol):
    def start(self, labels: Sequence[str]) -> None:
        """Called once, before any row, with the model's labels."""

    def result(self, line: ScoreLine, value: bytes) -> None:
        """A result's JSON (the worker's bytes)."""

    def dead_letter(self, line: ScoreLine, value: bytes, message_id: str | None) -> None:
        """A dead letter's JSON, and the request's id when known."""

    def flush(self) -> None:
        """End of a batch: what was written reaches the reader now."""


def make_writer(output_format: OutputFormat, sink: TextIO) -> ScoreWriter:
    if output_format == "table":
        return TableWriter(sink)
    if output_format == "csv":
        return CsvWriter(sink)
    return JsonlWriter(sink)


class JsonlWriter:
    def __init__(self, sink: TextIO) -> None:
        self.sink = sink

    def start(self, labels: Sequence[str]) -> None:
        pass

    def result(self, line: ScoreLine, value: bytes) -> None:
        self.sink.write(value.decode("utf-8") + "\n")

    def dead_letter(self, line: ScoreLine, value: bytes, message_id: str | None) -> None:
        document = json.loads(value)
        document["line"] = line.line
        document["id"] = message_id
        self.sink.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self.sink.flush()


def _fit(text: str, width: int) -> str:
    """`text` in exactly `width` columns: padded, or cut with an ellipsis."""
    text = " ".join(text.split())  # no line breaks or tabs inside a cell
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


class TableWriter:
    def __init__(self, sink: TextIO) -> None:
        self.sink = sink
        self.labels: tuple[str, ...] = ()
        self.flagged_width = len("FLAGGED")
        self.score_widths: list[int] = []

    def start(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self.flagged_width = max(len("FLAGGED"), len(",".join(self.labels)))
        self.score_widths = [max(len(label), 5) for label in self.labels]
        scores = "  ".join(
            label.upper().rjust(width)
            for label, width in zip(self.labels, self.score_widths, strict=True)
        )
        self.sink.write(
            f"{'LINE':>6}  {_fit('ID', TABLE_ID_WIDTH)}  {_fit('FLAGGED', self.flagged_width)}"
            f"  {scores}\n"
        )

    def result(self, line: ScoreLine, value: bytes) -> None:
        document: dict[str, Any] = json.loads(value)
        flagged = ",".join(label for label in self.labels if document["categories"][label])
        scores = "  ".join(
            f"{document['category_scores'][label]:.3f}".rjust(width)
            for label, width in zip(self.labels, self.score_widths, strict=True)
        )
        self.sink.write(
            f"{line.line:>6}  {_fit(document['id'], TABLE_ID_WIDTH)}  "
            f"{_fit(flagged or '-', self.flagged_width)}  {scores}\n"
        )

    def dead_letter(self, line: ScoreLine, value: bytes, message_id: str | None) -> None:
        document: dict[str, Any] = json.loads(value)
        why = f"{document['error_kind']}: {document['error_message']}"
        self.sink.write(
            f"{line.line:>6}  {_fit(message_id or '-', TABLE_ID_WIDTH)}  "
            f"error {_fit(why, TABLE_MESSAGE_CHARS).rstrip()}\n"
        )

    def flush(self) -> None:
        self.sink.flush()


class CsvWriter:
    def __init__(self, sink: TextIO) -> None:
        self.sink = sink
        self.writer = csv.writer(sink, lineterminator="\n")
        self.labels: tuple[str, ...] = ()

    def start(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self.writer.writerow(["line", "id", "flagged", *self.labels, "error_kind", "error_message"])

    def result(self, line: ScoreLine, value: bytes) -> None:
        document: dict[str, Any] = json.loads(value)
        flagged = " ".join(label for label in self.labels if document["categories"][label])
        scores = [document["category_scores"][label] for label in self.labels]
        self.writer.writerow([line.line, document["id"], flagged, *scores, "", ""])

    def dead_letter(self, line: ScoreLine, value: bytes, message_id: str | None) -> None:
        document: dict[str, Any] = json.loads(value)
        blanks = [""] * len(self.labels)
        self.writer.writerow(
            [
                line.line,
                message_id or "",
                "",
                *blanks,
                document["error_kind"],
                document["error_message"],
            ]
        )

    def flush(self) -> None:
        self.sink.flush()
