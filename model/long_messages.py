"""The long-message evaluation: each comment of a split embedded among clean ones.

Short-comment test sets cannot show whether one abusive sentence survives a long
message around it, and real long abusive messages with labels are rare. So each
comment that knows a label is placed, at a random position, among `min_fillers` to
`max_fillers` other comments of the same split that are negative for that label, joined
by blank lines. The long message keeps the embedded comment's label: positives are
"one insult among clean comments", negatives "only clean comments", with the same
length distribution (PrivateTest: about 900 characters on average). A message is as
abusive as its worst part, so a model that reads the whole message should rank the
first above the second about as well as it ranks the comments alone; the gap between
the two AUCs is the price of context.

Everything is drawn from one `random.Random(seed)`, so the construction is fixed for a
given split and seed; fillers come from the same split, so test text never mixes with
validation text. Each message records where the embedded comment lies, so the
evidence a model returns can be checked against it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from model.data import Example

DEFAULT_SEED = 2012
MIN_FILLERS = 2
MAX_FILLERS = 5
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class LongMessage:
    example: Example  # the long text, with the embedded comment's targets and mask
    embedded_start: int  # where the embedded comment lies in `example.text`
    embedded_end: int
    parts: tuple[int, ...]  # indices into the input examples, in order of appearance


def long_messages(
    examples: Sequence[Example],
    label_index: int,
    seed: int = DEFAULT_SEED,
    min_fillers: int = MIN_FILLERS,
    max_fillers: int = MAX_FILLERS,
) -> list[LongMessage]:
    """One long message per example that knows label `label_index`, in input order.

    Fillers are the examples negative for that label, never the embedded one itself.
    """
    if not 1 <= min_fillers <= max_fillers:
        raise ValueError(f"need 1 <= min_fillers <= max_fillers, got {min_fillers}, {max_fillers}")
    known = [i for i, ex in enumerate(examples) if ex.mask[label_index] > 0]
    clean = [i for i in known if examples[i].targets[label_index] <= 0.5]
    if len(clean) <= max_fillers:
        raise ValueError(f"{len(clean)} negative examples; need more than {max_fillers} fillers")
    rng = random.Random(seed)
    return [assemble(examples, i, place(i, clean, rng, min_fillers, max_fillers)) for i in known]


def place(
    i: int, clean: Sequence[int], rng: random.Random, min_fillers: int, max_fillers: int
) -> tuple[int, ...]:
    """The parts of one long message, as indices: `i` at a random position among
    `min_fillers` to `max_fillers` fillers drawn from `clean`, never `i` itself
    (`clean` must hold more than `max_fillers` indices)."""
    count = rng.randint(min_fillers, max_fillers)
    fillers = [j for j in rng.sample(clean, count + 1) if j != i][:count]
    position = rng.randint(0, count)
    return (*fillers[:position], i, *fillers[position:])


def assemble(examples: Sequence[Example], i: int, parts: tuple[int, ...]) -> LongMessage:
    """The long message of `parts` (indices into `examples`) with example `i`'s labels."""
    texts = [examples[j].text for j in parts]
    before = parts.index(i)
    start = sum(len(text) + len(SEPARATOR) for text in texts[:before])
    embedded = examples[i]
    return LongMessage(
        Example(SEPARATOR.join(texts), embedded.targets, embedded.mask, embedded.source),
        start,
        start + len(embedded.text),
        parts,
    )
