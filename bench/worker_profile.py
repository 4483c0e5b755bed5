#!/usr/bin/env python3
"""Where the worker's time goes: py-spy samples every thread of a worker draining a
pre-filled topic, and this prints, per thread, the share of samples per function.

Used to name the bottleneck behind the throughput figures of `bench/run.py`; the
scoring process (`--scoring process`) is sampled too, its threads named `scorer: …`:

    python bench/worker_profile.py                  # 30,000 messages, default settings
    python bench/worker_profile.py --pipeline-depth 0 --messages 10000
    python bench/worker_profile.py --scoring process

Needs `py-spy` (a dev dependency) and permission to ptrace the worker (root, or
kernel.yama.ptrace_scope=0). Sampling slows the worker down; read shares, not rates.

Named `worker_profile.py`, not `profile.py`: scripts run from bench/ put it first on
sys.path, where a `profile.py` shadows the standard library module that torch's
`cProfile` import needs (bench/soak.py failed on it).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import common  # noqa: E402


def record(messages: int, settings: dict[str, str], output: Path, rate_hz: int) -> float:
    """Drain `messages` real texts with a sampled worker; returns its msg/s."""
    texts = common.sample_texts(messages)
    with common.broker() as bootstrap:
        names = {k: f"profile-{uuid.uuid4().hex[:6]}-{k}" for k in ("input", "output", "dlq")}
        names["dead_letter"] = names.pop("dlq")
        common.create_topics(bootstrap, list(names.values()), 6)
        common.prefill(bootstrap, names["input"], texts)
        group = f"profile-{uuid.uuid4().hex[:6]}"
        worker = common.Worker(bootstrap, names, group, **settings)
        worker.wait_ready()
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(worker.proc.pid),
                "--output",
                str(output),
                "--format",
                "raw",
                "--rate",
                str(rate_hz),
                "--threads",
                "--idle",
                "--subprocesses",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ends = common.end_offsets(bootstrap, names["input"])
        common.wait_until(lambda: common.committed(bootstrap, group) == ends, 1800, "drain", 0.5)
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        worker.stop()
        stamps = sorted(r.timestamp for r in common.read_all(bootstrap, names["output"]))
    return float((len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000.0))


def summarise(raw: Path, top: int) -> str:
    """Per thread: samples, then the functions holding most of them (self time)."""
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        process = ""
        while frames[0].startswith("process ") and len(frames) > 1:
            # --subprocesses: the worker's frame, then its scoring process's (nested)
            process = "scorer: " if "scoring_child" in frames[0] else "worker: "
            frames = frames[1:]
        thread = process + (frames[0].split(":")[-1].strip() or frames[0])
        per_thread[thread][frames[-1]] += int(count)
    out = []
    for thread, functions in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(functions.values())
        out.append(f"\n### {thread} ({total} samples)\n\n| share | function |\n|---:|---|")
        for function, samples in functions.most_common(top):
            out.append(f"| {samples / total:.1%} | `{function}` |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--pipeline-depth", type=int, default=None)
    parser.add_argument("--scoring", choices=("in_process", "process"), default=None)
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--top", type=int, default=8, help="functions shown per thread")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        parser.error("py-spy is not installed (pip install py-spy)")
    settings = {"torch_threads": "1"}
    if args.pipeline_depth is not None:
        settings["pipeline_depth"] = str(args.pipeline_depth)
    if args.scoring is not None:
        settings["scoring"] = args.scoring
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        rate = record(args.messages, settings, raw, args.rate)
        sys.stdout.write(f"worker msg/s while sampled: {rate:,.0f}\n")
        sys.stdout.write(summarise(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
