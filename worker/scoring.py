"""`modstream score`: the worker's decode → score → result path over JSONL, no Kafka."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TextIO

from model.engine import Engine
from schemas.request import DEFAULT_MAX_TEXT_CHARS
from schemas.result import Timings
from worker.decode import Decoded, Decoder, SourceRecord
from worker.results import build_result


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
    """Writes one JSON line per non-blank input line, in input order; returns #invalid.

    Invalid lines produce the same dead-letter JSON the worker would publish, with the
    line number (0-based) as `offset`.
    """
    decoder = Decoder(max_text_chars or DEFAULT_MAX_TEXT_CHARS)
    numbered = ((n, line) for n, line in enumerate(source) if line.strip())
    invalid = 0
    for chunk in _chunks(numbered, batch_size):
        items = [
            decoder.decode(
                SourceRecord(
                    name,
                    0,
                    n,
                    None,
                    None,
                    line.rstrip("\n").encode("utf-8", errors="surrogateescape"),
                )
            )
            for n, line in chunk
        ]
        decoded = [item for item in items if isinstance(item, Decoded)]
        start = time.perf_counter()
        scores = engine.score([d.request.text for d in decoded])
        inference_ms = round((time.perf_counter() - start) * 1000.0, 3)
        rows = iter(scores.probabilities)
        for item in items:
            if isinstance(item, Decoded):
                timings = Timings(queued_ms=0.0, inference_ms=inference_ms, batch_size=len(decoded))
                line = build_result(engine, item, next(rows), timings).model_dump_json()
            else:
                invalid += 1
                line = item.dead_letter.model_dump_json()
            sink.write(line + "\n")
    sink.flush()
    return invalid
