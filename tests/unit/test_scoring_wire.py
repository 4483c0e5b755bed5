"""worker/scoring_wire.py: tokens and scores through shared memory, exactly, however large."""

from __future__ import annotations

import mmap
import os

import numpy as np

from worker.scoring_wire import (
    SharedBuffer,
    read_probabilities,
    read_rows,
    write_probabilities,
    write_rows,
)


def test_rows_come_back_token_for_token_whatever_their_text() -> None:
    rows = [
        ("hello", "world"),
        ("<unk>",),
        ("naïve", "café", "🙂", "ünïcödé"),
        ("lone\ud800surrogate", "a b", "tab\tand\nnewline", "\x00"),  # whatever they hold
        ("x" * 64,),
    ]
    buffer = SharedBuffer.create("test-rows", size=mmap.PAGESIZE)
    try:
        tokens, size, separated = write_rows(buffer, rows)
        assert tokens == sum(len(row) for row in rows)
        assert not separated, "a token holds a newline: sent with its end offsets"
        flat, lengths = read_rows(buffer, len(rows), tokens, size, separated)
    finally:
        buffer.close()
    assert flat == [token for row in rows for token in row]
    assert lengths.tolist() == [len(row) for row in rows]


def test_a_request_larger_than_the_buffer_grows_it_and_the_reader_follows() -> None:
    writer = SharedBuffer.create("test-grow", size=mmap.PAGESIZE)
    reader = SharedBuffer(os.dup(writer.fd), writer.size)  # the other process's mapping
    rows = [tuple(f"token{i}-{j}" for j in range(100)) for i in range(200)]
    try:
        tokens, size, separated = write_rows(writer, rows)
        assert separated and size > mmap.PAGESIZE and writer.size >= size
        assert writer.size % mmap.PAGESIZE == 0
        reader.follow(writer.size)
        flat, lengths = read_rows(reader, len(rows), tokens, size, separated)
    finally:
        writer.close()
        reader.close()
    assert flat == [token for row in rows for token in row] and lengths.tolist() == [100] * 200


def test_probabilities_come_back_exactly_and_are_copies() -> None:
    probabilities = np.random.default_rng(1).random((3000, 2), dtype=np.float32)
    buffer = SharedBuffer.create("test-scores", size=mmap.PAGESIZE)
    try:
        write_probabilities(buffer, probabilities)
        read = read_probabilities(buffer, 3000, 2)
        write_probabilities(buffer, np.zeros((3000, 2), dtype=np.float32))  # the next batch
    finally:
        buffer.close()
    assert read.dtype == np.float32 and np.array_equal(read, probabilities)
