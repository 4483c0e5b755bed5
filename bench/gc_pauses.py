#!/usr/bin/env python3
"""Garbage-collection pauses of a running worker, and the latency they cost.

Runs `modstream worker` against the local broker (or $MODSTREAM_KAFKA_BOOTSTRAP) with a
probe: a thin wrapper that registers a `gc.callbacks` hook before the worker starts and
writes, at exit, every collection's generation, start and duration. A rate-limited
producer offers `--rate` messages per second of real texts for `--seconds`; the worker's
first `--settle-s` seconds (start-up, warm-up, the first batches) are left out of the
tables. Then the end-to-end latency (record timestamp → output record timestamp) of the
same run.

A hot reload lands in the measured window (`--reload-at`, seconds into it; negative:
none): the worker serves a checkpoint store holding the default checkpoint and a copy
saved under another version, and the bench promotes the copy and sends SIGHUP. Loading
a model builds a vocabulary's worth of objects, which is what starts full collections
while the stream flows.

`--baseline` runs the same worker with the collector as Python leaves it: the probe
makes `gc.freeze`, `gc.unfreeze` and `gc.set_threshold` do nothing, so whatever the
worker does to the collector is undone, and nothing else differs. `--rounds N` runs
baseline and tuned alternately N times each (the machine is shared: compare within a
run). Usage:

    python bench/gc_pauses.py                      # tuned and baseline, 2 rounds each
    python bench/gc_pauses.py --rate 300 --seconds 30 --rounds 3
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import common  # noqa: E402

PROBE_OUT_ENV = "BENCH_GC_PROBE_OUT"  # not MODSTREAM_: the worker warns of unknown ones
PROBE_BASELINE_ENV = "BENCH_GC_PROBE_BASELINE"


# -- the probe, in the worker's process ------------------------------------------------


def run_probed_worker() -> int:
    """`modstream worker` with every collection recorded (the `--probe` entry point)."""
    out = Path(os.environ[PROBE_OUT_ENV])
    if os.environ.get(PROBE_BASELINE_ENV) == "1":
        gc.freeze = gc.unfreeze = lambda: None
        gc.set_threshold = lambda *args: None
    pauses: list[tuple[int, float, float]] = []
    started: list[float] = [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            started[0] = now
        else:
            pauses.append((info["generation"], time.time() - (now - started[0]), now - started[0]))

    gc.callbacks.append(on_collection)

    def write() -> None:
        out.write_text(json.dumps({"pauses": pauses, "frozen": gc.get_freeze_count()}))

    atexit.register(write)
    from worker.cli import main

    return main(["worker"])


# -- the benchmark --------------------------------------------------------------------


def checkpoint_store(root: Path) -> tuple[Any, str]:
    """A store serving the default checkpoint, with a copy under another version beside
    it; returns the store and the copy's version."""
    from model.checkpoint import default_checkpoint_dir, load_checkpoint, save_checkpoint
    from model.store import CheckpointStore

    store = CheckpointStore(root)
    served = load_checkpoint(default_checkpoint_dir())
    store.promote(store.add(served.path))
    copy = root.parent / "copy"
    save_checkpoint(
        copy,
        served.model,
        served.vocab,
        served.labels,
        served.thresholds,
        metrics=served.metrics,
        created_at="2000-01-01T00:00:00+00:00",
    )
    return store, store.add(copy)


def one_run(
    bootstrap: str,
    texts: list[str],
    rate: float,
    seconds: float,
    settle_s: float,
    baseline: bool,
    reload_at: float,
) -> dict[str, Any]:
    from kafka import KafkaProducer

    suffix = uuid.uuid4().hex[:6]
    names = {
        "input": f"gc-{suffix}-in",
        "output": f"gc-{suffix}-out",
        "dead_letter": f"gc-{suffix}-dlq",
    }
    common.create_topics(bootstrap, list(names.values()), 6)
    with tempfile.TemporaryDirectory() as tmp:
        probe_out = Path(tmp) / "gc.json"
        os.environ[PROBE_OUT_ENV] = str(probe_out)
        os.environ[PROBE_BASELINE_ENV] = "1" if baseline else "0"
        store, copy = checkpoint_store(Path(tmp) / "store")
        worker = common.Worker(
            bootstrap,
            names,
            f"gc-{suffix}",
            command=("-m", "bench.gc_pauses", "--probe"),
            torch_threads="1",
            checkpoint_dir=str(store.root),
            reload_interval_s="0",
        )
        worker.wait_ready()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
        total = int(rate * (settle_s + seconds))
        measured_from = time.time() + settle_s
        reload_n = int(rate * (settle_s + reload_at)) if reload_at >= 0 else -1

        def reload_when_due(n: int) -> None:
            if n == reload_n:
                store.promote(copy)
                worker.proc.send_signal(signal.SIGHUP)

        offered = common.send_paced(
            producer, names["input"], texts, rate, total, "g", reload_when_due
        )
        measured_to = time.time()
        producer.close()
        ends = common.end_offsets(bootstrap, names["input"])
        common.wait_until(lambda: common.committed(bootstrap, f"gc-{suffix}") == ends, 300, "drain")
        code = worker.stop()
        probe = json.loads(probe_out.read_text())
    sent = common.read_all(bootstrap, names["input"])
    inputs = {json.loads(r.value)["id"]: r.timestamp for r in sent}
    latencies = []
    for record in common.read_all(bootstrap, names["output"]):
        sent_ms = inputs[json.loads(record.value)["id"]]
        if sent_ms / 1000.0 >= measured_from:
            latencies.append((record.timestamp - sent_ms) / 1000.0)
    window = [p for p in probe["pauses"] if measured_from <= p[1] <= measured_to]
    full = [p for p in probe["pauses"] if p[0] == 2]
    return {
        "full_collections": [[round(p[1] - measured_from, 3), p[2]] for p in full],
        "baseline": baseline,
        "reload_at_s": reload_at,
        "exit_code": code,
        "offered_msg_per_s": offered,
        "measured_s": measured_to - measured_from,
        "frozen_objects": probe["frozen"],
        "generations": {g: [p[2] for p in window if p[0] == g] for g in (0, 1, 2)},
        "latency_s": latencies,
    }


def summary(run: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "baseline": run["baseline"],
        "frozen_objects": run["frozen_objects"],
        # every full collection of the run, settling included: (seconds after the
        # measured window opened, duration)
        "full_collections": run["full_collections"],
    }
    for generation, pauses in run["generations"].items():
        row[f"gen{generation}"] = {
            "count": len(pauses),
            "per_s": len(pauses) / run["measured_s"],
            "median_ms": common.median(pauses) * 1000 if pauses else 0.0,
            "max_ms": max(pauses) * 1000 if pauses else 0.0,
            "total_ms": sum(pauses) * 1000,
        }
    latencies = run["latency_s"]
    row["latency"] = {
        "messages": len(latencies),
        "p50_ms": common.percentile(latencies, 50) * 1000,
        "p99_ms": common.percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
    }
    row["offered_msg_per_s"] = run["offered_msg_per_s"]
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    out = sys.stdout.write
    out(
        "\n| collector | offered msg/s | gen 2: count | median ms | max ms | gen 1: count "
        "| median ms | max ms | gen 0 per s | GC ms per s | p50 ms | p99 ms | max ms |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for row in rows:
        g0, g1, g2, lat = row["gen0"], row["gen1"], row["gen2"], row["latency"]
        seconds = g0["count"] / g0["per_s"] if g0["per_s"] else 1.0
        total = (g0["total_ms"] + g1["total_ms"] + g2["total_ms"]) / seconds
        out(
            f"| {'as Python leaves it' if row['baseline'] else 'tuned'} "
            f"| {row['offered_msg_per_s']:,.0f} | {g2['count']} | {g2['median_ms']:.1f} "
            f"| {g2['max_ms']:.1f} | {g1['count']} | {g1['median_ms']:.2f} | {g1['max_ms']:.1f} "
            f"| {g0['per_s']:.0f} | {total:.1f} | {lat['p50_ms']:.1f} | {lat['p99_ms']:.1f} "
            f"| {lat['max_ms']:.1f} |\n"
        )


def main() -> int:
    if sys.argv[1:2] == ["--probe"]:
        return run_probed_worker()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="offered msg/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--settle-s", type=float, default=5.0, help="seconds left out first")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/tuned pairs")
    parser.add_argument(
        "--reload-at", type=float, default=15.0, help="hot reload this far in; -1: none"
    )
    parser.add_argument("--only", choices=("tuned", "baseline"), default=None)
    parser.add_argument("--output", type=Path, default=common.RESULTS_DIR / "gc_pauses.json")
    args = parser.parse_args()
    texts = common.sample_texts(20_000)
    kinds = {"tuned": [False], "baseline": [True], None: [True, False]}[args.only]
    rows = []
    with common.broker() as bootstrap:
        for round_number in range(args.rounds):
            for baseline in kinds:
                sys.stderr.write(f"[gc] round {round_number + 1}, baseline={baseline}\n")
                run = one_run(
                    bootstrap,
                    texts,
                    args.rate,
                    args.seconds,
                    args.settle_s,
                    baseline,
                    args.reload_at,
                )
                rows.append(summary(run))
                print_table(rows[-1:])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
