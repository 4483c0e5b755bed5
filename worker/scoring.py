"""`modstream score`: the worker's decode → score → result path over JSONL, no Kafka.

It runs the worker's own `BatchProcessor` (worker/processing.py), so a line gets the
same Result or DeadLetter JSON the worker would publish for the same record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TextIO

from model.engine import Engine
from schemas.request import DEFAULT_MAX_TEXT_CHARS
from worker.decode import Decoder, SourceRecord
from worker.metrics import WorkerMetrics
from worker.processing import BatchProcessor


def _chunks(lines: Iterable[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    iterator = iter(lines)
    while chunk := list(islice(iterator, size)):
        yield chunk


def score_stream(
    engine: Engine,
    source: TextIO,
    sink: TextIO,
    name: str,
    batch_size: int,
    max_text_chars: int | None = None,
) -> int:
    """Writes one JSON line per non-blank input line, in input order; returns how many
    became dead letters (invalid, or inference failed for that text).

    A line is a record of topic `name`, partition 0, its line number (0-based) as
    `offset`. The processor logs through structlog (a `dead_lettered` warning per
    invalid line): configure it (worker/logs.py) so that nothing reaches `sink`.
    """
    processor = BatchProcessor(
        Decoder(max_text_chars or DEFAULT_MAX_TEXT_CHARS), WorkerMetrics(), name, name
    )
    numbered = ((n, line) for n, line in enumerate(source) if line.strip())
    dead_lettered = 0
    for chunk in _chunks(numbered, batch_size):
        records = [
            SourceRecord(
                name, 0, n, None, None, line.rstrip("\n").encode("utf-8", errors="surrogateescape")
            )
            for n, line in chunk
        ]
        prepared = processor.process(records, engine)
        for output in prepared.outputs:
            sink.write(output.value.decode("utf-8") + "\n")
        dead_lettered += prepared.outcomes["invalid"] + prepared.outcomes["error"]
    sink.flush()
    return dead_lettered
