"""`modstream score`: score a file (or stdin) with a checkpoint, no Kafka.

Steps, in the order a newcomer's mistakes are cheapest to report:
1. Check the arguments and the input path, and read a CSV header: exit 2 naming what
   is wrong, before torch is imported or the model loaded (2-3 s).
2. Check that the checkpoint exists (exit 3 saying how to make one), then load it.
3. Score in batches (worker/score_input.py: a batch closes early when the input
   stalls), writing and flushing each batch's rows as soon as it is scored.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from model.errors import ExitCode
from model.reading import DEFAULT_MAX_WINDOWS
from schemas.request import DEFAULT_MAX_TEXT_CHARS
from worker.command_errors import CheckpointUnusableError, InvalidInputError, UsageError
from worker.score_input import INPUT_FORMATS, open_lines, stdin_binary
from worker.score_output import OUTPUT_FORMATS

DEFAULT_BATCH_SIZE = 256
DEFAULT_BATCH_WAIT_MS = 50

DESCRIPTION = """\
Score messages from a file or stdin with a checkpoint, without Kafka: the worker's own
decode → score → result path, one output row per input message, in input order.
Rows appear as each batch is scored (a batch closes at --batch-size messages, or
--batch-wait-ms after its first when the input stalls).

input formats (--input-format):
  jsonl  one request per line: {"id": "m1", "text": "…"} (what producers send the worker)
  text   one message per line; ids are line-N (N = line number)
  csv    a header row naming a 'text' column and optionally an 'id' column
A UTF-8 byte order mark is ignored; blank lines are skipped.

output formats (--format):
  jsonl  the worker's result JSON; an invalid line gives its dead-letter JSON
         plus "line" and "id" (when readable)
  table  line, id, flagged categories and one score per label, for a terminal
  csv    line,id,flagged,<one column per label>,error_kind,error_message"""

EPILOG = """\
examples:
  modstream score messages.jsonl
  printf 'you idiot\\nsee you at 5\\n' | modstream score --input-format text --format table
  modstream score comments.csv --input-format csv --format csv > scores.csv

exit codes: 0 every message scored; 1 some messages were invalid (their dead letters
are in the output); 2 bad arguments, or an input file that does not exist or a CSV
without a 'text' column; 3 the checkpoint is missing or does not load."""


def add_parser(sub: Any) -> None:
    score = sub.add_parser(
        "score",
        help="score messages from a file or stdin (no Kafka)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument(
        "input", nargs="?", default="-", metavar="FILE", help="input file (default: stdin)"
    )
    score.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default="jsonl",
        help="how the input is written (default: jsonl)",
    )
    score.add_argument(
        "--format",
        dest="output_format",
        choices=OUTPUT_FORMATS,
        default="jsonl",
        help="how results are written to stdout (default: jsonl)",
    )
    score.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="DIR",
        help="checkpoint directory, store root or its current link "
        "(default: $MODSTREAM_CHECKPOINT_DIR, else checkpoints/current)",
    )
    score.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="inference device (default: auto, a GPU when there is one)",
    )
    score.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        metavar="N",
        help="torch intra-op threads; 0 = torch's default, one per core (default: 1, "
        "like the worker: more threads were 4x slower under load in one run)",
    )
    score.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"most messages scored together (default: {DEFAULT_BATCH_SIZE})",
    )
    score.add_argument(
        "--batch-wait-ms",
        type=int,
        default=DEFAULT_BATCH_WAIT_MS,
        metavar="MS",
        help="score what has arrived this long after a batch's first message "
        f"(default: {DEFAULT_BATCH_WAIT_MS})",
    )
    score.add_argument(
        "--max-text-chars",
        type=int,
        default=DEFAULT_MAX_TEXT_CHARS,
        metavar="N",
        help="characters read per text, as by the worker: a longer text is still scored, "
        "on its head, tail and sampled middle, and its coverage says how much "
        f"(default: {DEFAULT_MAX_TEXT_CHARS})",
    )
    score.add_argument(
        "--max-windows",
        type=int,
        default=DEFAULT_MAX_WINDOWS,
        metavar="N",
        help=f"windows scored per text at most (default: {DEFAULT_MAX_WINDOWS})",
    )
    score.set_defaults(handler=run_score)


def _check_arguments(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--batch-wait-ms", args.batch_wait_ms, 0),
        ("--max-text-chars", args.max_text_chars, 1),
        ("--max-windows", args.max_windows, 2),
        ("--torch-threads", args.torch_threads, 0),
    ):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")


def _open_input(args: argparse.Namespace, stack: ExitStack) -> tuple[BinaryIO, str]:
    if args.input == "-":
        return stdin_binary(), "stdin"
    path = Path(args.input)
    if path.is_dir():
        raise UsageError(f"input {path} is a directory, not a file")
    if not path.exists():
        raise UsageError(f"input file {path} does not exist")
    try:
        return stack.enter_context(path.open("rb")), path.name
    except OSError as exc:
        raise UsageError(f"input file {path} cannot be read: {exc.strerror}") from exc


def _checkpoint_path(args: argparse.Namespace) -> Path:
    """The checkpoint to load; a missing one is reported before torch is imported."""
    from model.paths import default_checkpoint_dir

    checkpoint: Path = args.checkpoint or default_checkpoint_dir()
    if not checkpoint.exists():
        raise CheckpointUnusableError(
            f"checkpoint {checkpoint} does not exist: pass --checkpoint DIR, set "
            "MODSTREAM_CHECKPOINT_DIR, or train one with `modstream retrain` (or `make demo`)"
        )
    return checkpoint


def run_score(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging

    # The output is the rows on stdout: log lines (errors only) go to stderr.
    configure_logging("error")
    _check_arguments(args)
    with ExitStack() as stack:
        source, name = _open_input(args, stack)
        lines = open_lines(source, args.input_format, name)
        checkpoint = _checkpoint_path(args)
        engine = _load_engine(
            checkpoint,
            args.device,
            args.torch_threads,
            {"max_chars": args.max_text_chars, "max_windows": args.max_windows},
        )

        from worker.score_input import StallBatcher
        from worker.score_output import make_writer
        from worker.scoring import score_stream

        batches = StallBatcher(lines, args.batch_size, args.batch_wait_ms / 1000.0)
        writer = make_writer(args.output_format, sys.stdout)
        tally = score_stream(engine, batches, writer, name)
    if tally.dead_lettered:
        raise InvalidInputError(_not_scored(tally, args.input_format))
    return ExitCode.OK


def _not_scored(tally: Any, input_format: str) -> str:
    """Which messages were not scored, and the likely cause when nothing parsed."""
    kinds = ", ".join(f"{kind} {count}" for kind, count in tally.dead_letters.most_common())
    message = (
        f"{tally.dead_lettered} of {tally.messages} message(s) not scored ({kinds}): "
        "see error_kind in the output"
    )
    if input_format == "jsonl" and tally.dead_letters["invalid_json"]:
        message += (
            "; the input is read as JSON lines (--input-format jsonl): for plain text "
            "or CSV, pass --input-format text or csv"
        )
    return message


def _load_engine(
    checkpoint: Path, device: str, torch_threads: int, reading: dict[str, int] | None = None
) -> Any:
    """`reading`: how texts are read (`Engine.load`'s `max_chars`, `max_windows`;
    the defaults without)."""
    import torch

    from model.checkpoint import CheckpointError
    from model.engine import Engine, EngineError

    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        return Engine.load(checkpoint, device=device, **(reading or {}))
    except (CheckpointError, EngineError) as exc:
        raise CheckpointUnusableError(f"checkpoint {checkpoint}: {exc}") from exc
