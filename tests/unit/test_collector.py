"""worker/collector.py: frozen survivors, garbage still collected, pauses counted."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.engine import Engine
from tests.helpers import make_checkpoint
from worker.collector import PauseRecorder, freeze_long_lived
from worker.metrics import WorkerMetrics


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen, so tests do not leak into others."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def pauses(metrics: WorkerMetrics, generation: str) -> float:
    value = metrics.registry.get_sample_value(
        "modstream_gc_pause_seconds_count", {"process": "worker", "generation": generation}
    )
    return value or 0.0


def test_freezing_leaves_the_survivors_to_the_collector_no_more() -> None:
    kept = [Node() for _ in range(1000)]
    frozen = freeze_long_lived()
    assert frozen >= len(kept) and gc.get_freeze_count() == frozen
    walked = {id(o) for generation in (0, 1, 2) for o in gc.get_objects(generation=generation)}
    assert not walked & {id(n) for n in kept}, "a frozen object is in no generation"


def test_garbage_cycles_are_collected_before_freezing_not_kept_forever() -> None:
    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle: reference counts never free it
    gone = weakref.ref(first)
    del first, second
    freeze_long_lived()
    assert gone() is None


def test_a_frozen_engine_is_still_freed_when_dropped(tmp_path: Path) -> None:
    """A swapped-out model must not stay in memory because it was frozen: reference
    counting alone frees it (no full collection walks frozen objects)."""
    make_checkpoint(tmp_path / "a", 1)
    engine = Engine.load(tmp_path / "a", device="cpu")
    engine.warm_up()
    freeze_long_lived()
    model, vectors = weakref.ref(engine.model), weakref.ref(engine._vectors)
    del engine
    assert model() is None and vectors() is None


def test_pauses_are_counted_per_generation_once_flushed() -> None:
    metrics = WorkerMetrics()
    recorder = PauseRecorder(metrics.gc_pauses)
    recorder.install()
    try:
        gc.collect(2)
        gc.collect(0)
        assert pauses(metrics, "2") == 0, "the callback only records; flush observes"
        assert recorder.flush() >= 2
    finally:
        recorder.uninstall()
    assert pauses(metrics, "2") >= 1 and pauses(metrics, "0") >= 1
    before = pauses(metrics, "2")
    gc.collect(2)
    assert recorder.flush() == 0 and pauses(metrics, "2") == before, "uninstalled"
