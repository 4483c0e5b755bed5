"""`modstream score`: the worker's decode → score → result path over a file, no Kafka.

It runs the worker's own `BatchProcessor` (worker/processing.py), so an input message
gets the same Result or DeadLetter JSON the worker would publish for the same record.
Input formats and batching: worker/score_input.py; output formats: worker/score_output.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from model.engine import Engine
from worker.decode import Decoder, SourceRecord
from worker.metrics import WorkerMetrics
from worker.processing import BatchProcessor
from worker.score_input import ScoreLine
from worker.score_output import ScoreWriter

RESULTS = "results"
DEAD_LETTERS = "dead-letters"


def request_id(line: ScoreLine) -> str | None:
    """The id of a message: the one its input format gave it, else its JSON's `id` when
    the line parses as an object with a string id (a dead letter names it)."""
    if line.id is not None:
        return line.id
    try:
        document = json.loads(line.value)
    except ValueError:
        return None
    message_id = document.get("id") if isinstance(document, dict) else None
    return message_id if isinstance(message_id, str) else None


@dataclass
class ScoreTally:
    """What a run scored: messages in, and dead letters by `error_kind`."""

    messages: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())


def score_stream(
    engine: Engine,
    batches: Iterable[list[ScoreLine]],
    writer: ScoreWriter,
    name: str,
) -> ScoreTally:
    """Writes one row per input message, in input order, flushing after every batch;
    returns how many messages there were and which became dead letters (invalid, or
    inference failed for that text).

    A message is a record of topic `name`, partition 0, its 0-based line index as
    `offset`. The processor logs through structlog (a `dead_lettered` warning per
    invalid line): configure it (worker/logs.py) so that nothing reaches the writer's sink.
    """
    processor = BatchProcessor(Decoder(), WorkerMetrics(), RESULTS, DEAD_LETTERS)
    writer.start(engine.labels)
    tally = ScoreTally()
    for batch in batches:
        records = [SourceRecord(name, 0, line.line - 1, None, None, line.value) for line in batch]
        prepared = processor.process(records, engine)
        for line, output in zip(batch, prepared.outputs, strict=True):
            if output.topic == RESULTS:
                writer.result(line, output.value)
            else:
                writer.dead_letter(line, output.value, request_id(line))
                tally.dead_letters[json.loads(output.value)["error_kind"]] += 1
        tally.messages += len(batch)
        writer.flush()
    return tally
