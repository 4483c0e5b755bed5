"""`modstream score`'s input: a file or stdin in one of three formats, as request bytes,
in batches that close early when the input stalls.

Formats (`--input-format`):
- `jsonl`: one request JSON object per line, exactly what producers put on the topic.
- `text`: one message per line; the id is `line-N` (N the 1-based line number).
- `csv`: a header row naming a `text` column and optionally an `id` column (any
  order, any other columns ignored); rows without an id get `line-N`.

Every format becomes the same thing: a `ScoreLine` holding the request JSON the worker
would decode, so `modstream score` and the worker dead-letter exactly the same inputs.
A line that is not UTF-8 keeps its raw bytes as the value, and becomes an
`invalid_utf8` dead letter holding them. A UTF-8 byte order mark before the first line
is dropped (editors on Windows write one). Blank lines are skipped.

Why a reader thread: reading stdin blocks until a line arrives. The scorer takes what
has arrived when the input stalls for `wait_s` after a batch's first line, so the
results of a slow pipe appear within that wait instead of after 256 lines (6 s for
the first result on a slow pipe before). A file never stalls and fills whole batches.
"""

from __future__ import annotations

import csv
import io
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

from worker.command_errors import UsageError

InputFormat = Literal["jsonl", "text", "csv"]
INPUT_FORMATS: tuple[InputFormat, ...] = ("jsonl", "text", "csv")
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ScoreLine:
    """One input message: its 1-based line number, its request bytes, and its id when
    the input names one (text and csv always do; jsonl once it parses)."""

    line: int
    value: bytes
    id: str | None


def generated_id(line: int) -> str:
    return f"line-{line}"


def _request_bytes(message_id: str, text: str, raw: bytes) -> bytes:
    """The request JSON for a text; the raw bytes when the text is not UTF-8."""
    try:
        return json.dumps({"id": message_id, "text": text}, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from undecodable bytes
        return raw


def _numbered(source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its line break), BOM dropped, blanks kept."""
    for number, raw in enumerate(source, start=1):
        if number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        yield number, raw.rstrip(b"\r\n")


def read_jsonl(source: BinaryIO) -> Iterator[ScoreLine]:
    for number, raw in _numbered(source):
        if raw.strip():
            yield ScoreLine(number, raw, None)


def read_text(source: BinaryIO) -> Iterator[ScoreLine]:
    for number, raw in _numbered(source):
        if raw.strip():
            text = raw.decode("utf-8", errors="surrogateescape")
            message_id = generated_id(number)
            yield ScoreLine(number, _request_bytes(message_id, text, raw), message_id)


class CsvReader:
    """Rows of a CSV file with a header naming `text` (and optionally `id`).

    The header is read when the reader is made, so a file without a `text` column is
    refused (exit 2) before the model loads. A quoted field may span lines; a row's line
    number is the line it starts on.
    """

    def __init__(self, source: BinaryIO, name: str) -> None:
        self._lines = _LineCounter(_numbered(source))
        self._rows = csv.reader(self._lines)
        header = next(self._rows, None)
        columns = [column.strip().lower() for column in header or []]
        if "text" not in columns:
            shown = ", ".join(repr(c) for c in header or []) or "none (empty input)"
            raise UsageError(
                f"--input-format csv: {name} needs a header row naming a 'text' column "
                f"(and optionally 'id'); its columns: {shown}"
            )
        self._text = columns.index("text")
        self._id = columns.index("id") if "id" in columns else None

    def __iter__(self) -> Iterator[ScoreLine]:
        for row in self._rows:
            number = self._lines.row_start
            if not any(cell.strip() for cell in row):
                continue
            cell_id = row[self._id].strip() if self._id is not None and self._id < len(row) else ""
            message_id = cell_id or generated_id(number)
            text = row[self._text] if self._text < len(row) else None
            raw = "\n".join(self._lines.row_lines).encode("utf-8", errors="surrogateescape")
            if text is None:  # a short row: the request says what is missing
                value = json.dumps({"id": message_id}, ensure_ascii=False).encode(
                    "utf-8", errors="surrogateescape"
                )
            else:
                value = _request_bytes(message_id, text, raw)
            yield ScoreLine(number, value, message_id)


class _LineCounter:
    """Feeds decoded lines to `csv.reader`, remembering where the current row started."""

    def __init__(self, lines: Iterator[tuple[int, bytes]]) -> None:
        self._lines = lines
        self.row_start = 0
        self.row_lines: list[str] = []
        self._in_row = False
        self._quotes = 0

    def __iter__(self) -> _LineCounter:
        return self

    def __next__(self) -> str:
        number, raw = next(self._lines)
        text = raw.decode("utf-8", errors="surrogateescape")
        if self._quotes % 2 == 0:  # not inside a quoted field: a new row starts here
            self.row_start = number
            self.row_lines = []
            self._quotes = 0
        self.row_lines.append(text)
        self._quotes += text.count('"')
        return text + "\n"  # the reader keeps line breaks inside quoted fields


def open_lines(source: BinaryIO, input_format: InputFormat, name: str) -> Iterator[ScoreLine]:
    """The messages of `source`; a CSV header is checked here, before anything is scored."""
    if input_format == "jsonl":
        return read_jsonl(source)
    if input_format == "text":
        return read_text(source)
    return iter(CsvReader(source, name))


_END = object()


class StallBatcher:
    """Batches of at most `size` lines; a batch closes `wait_s` after its first line
    even when fewer have arrived, so a slow pipe's results are not held back.

    A daemon thread reads ahead (at most `2 * size` lines, so memory stays bounded);
    an error it meets is raised by the iterator, in order, after the lines before it.
    """

    def __init__(self, lines: Iterator[ScoreLine], size: int, wait_s: float) -> None:
        self.size = size
        self.wait_s = wait_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=2 * size)
        self._thread = threading.Thread(
            target=self._read, args=(lines,), name="score-input", daemon=True
        )
        self._thread.start()

    def _read(self, lines: Iterator[ScoreLine]) -> None:
        try:
            for line in lines:
                self._queue.put(line)
        except BaseException as exc:  # handed to the scoring loop, which raises it
            self._queue.put(exc)
        self._queue.put(_END)

    def __iter__(self) -> Iterator[list[ScoreLine]]:
        import time

        batch: list[ScoreLine] = []
        deadline = 0.0
        while True:
            try:
                if batch:
                    item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                else:
                    item = self._queue.get()
            except queue.Empty:  # the input stalled: score what has arrived
                yield batch
                batch = []
                continue
            if isinstance(item, ScoreLine):
                if not batch:
                    deadline = time.monotonic() + self.wait_s
                batch.append(item)
                if len(batch) >= self.size:
                    yield batch
                    batch = []
                continue
            if batch:
                yield batch
                batch = []
            if isinstance(item, BaseException):
                raise item
            return


def stdin_binary() -> BinaryIO:
    """stdin as bytes (what the worker gets from Kafka), whatever its text encoding."""
    import sys

    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return io.BytesIO(sys.stdin.read().encode("utf-8", errors="surrogateescape"))
