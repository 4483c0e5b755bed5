#!/usr/bin/env python3
"""The benchmark suite: ceilings, the worker between them, the naive floor, latency.

Everything runs in one go on the real local broker (or $MODSTREAM_KAFKA_BOOTSTRAP) so
the figures can be compared as ratios within one run on a shared, noisy machine:

1. passthrough ceiling: kafka-python consuming the input and producing it back, no model;
2. model-only: tokenise → bucket → packed LSTM on pre-loaded texts, batch 1 … 1024;
3. end-to-end worker msg/s on a pre-filled 6-partition topic of real texts;
4. the naive per-message worker (poll 1, score 1, send, wait, commit);
5. end-to-end latency p50/p95/p99 at 25/50/75 % of the measured maximum;
6. padding efficiency with and without length bucketing; peak worker RSS.

`python bench/run.py` prints a table and writes bench/results/latest.json.

`python bench/run.py --scoring-rounds 3 [--depths 2,4]` compares where the model runs
instead of 3-5: after the ceilings, the pipelined worker with `MODSTREAM_SCORING=in_process`
and `=process` (at each `MODSTREAM_PIPELINE_DEPTH` given), alternating, three of each,
then the latency of each at 50 % of the scoring process's median maximum (first depth),
alternating too; medians and ratios within the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import common  # noqa: E402


def log(line: str) -> None:
    sys.stderr.write(f"[bench] {line}\n")
    sys.stderr.flush()


def checkpoint_dir() -> Path:
    from model.checkpoint import CheckpointError, default_checkpoint_dir, load_checkpoint

    path = default_checkpoint_dir()
    try:
        load_checkpoint(path)
    except CheckpointError:
        log(f"no checkpoint at {path}; training the default model first")
        subprocess.run(
            [sys.executable, "-m", "worker.cli", "retrain", "--output", str(path)],
            cwd=REPO_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def topics(bootstrap: str, name: str, partitions: int) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    names = {
        "input": f"bench-{name}-{suffix}-in",
        "output": f"bench-{name}-{suffix}-out",
        "dead_letter": f"bench-{name}-{suffix}-dlq",
    }
    common.create_topics(bootstrap, list(names.values()), partitions)
    return names


# -- 1. passthrough ---------------------------------------------------------------


def passthrough(bootstrap: str, source: str, count: int, batch: int) -> float:
    """Consume → produce → flush → commit per poll, as the worker does, minus the model."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    out = topics(bootstrap, "passthrough", 6)["output"]
    consumer = KafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"bench-pt-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    done = 0
    start: float | None = None
    while done < count:
        polled = consumer.poll(timeout_ms=1000, max_records=batch)
        if not polled:
            continue
        if start is None:
            start = time.perf_counter()
        offsets = {}
        for tp, records in polled.items():
            for r in records:
                producer.send(out, key=r.key, value=r.value)
            offsets[TopicPartition(tp.topic, tp.partition)] = OffsetAndMetadata(
                records[-1].offset + 1, "", -1
            )
            done += len(records)
        producer.flush()
        consumer.commit(offsets)
    assert start is not None
    elapsed = time.perf_counter() - start
    consumer.close()
    producer.close()
    return done / elapsed


# -- 2. model only -----------------------------------------------------------------


def model_only(
    checkpoint: Path, texts: list[str], sizes: list[int], seconds: float
) -> list[dict[str, Any]]:
    from model.engine import Engine

    engine = Engine.load(checkpoint, device="cpu", cpu_threads=1)
    engine.score(texts[:256])  # warm-up
    rows = []
    for size in sizes:
        scored = tokens = windows = 0
        start = time.perf_counter()
        cpu_start = time.process_time()
        offset = 0
        while time.perf_counter() - start < seconds or scored == 0:
            chunk = texts[offset : offset + size]
            if len(chunk) < size:
                offset, chunk = 0, texts[:size]
            offset += size
            result = engine.score(chunk)
            scored += len(chunk)
            tokens += result.real_tokens
            windows += result.num_windows
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        rows.append(
            {
                "batch": size,
                "msg_per_s": scored / elapsed,
                "windows_per_s": windows / elapsed,
                "tokens_per_s": tokens / elapsed,
                # Per second of this process's CPU: steadier than wall time on a shared host.
                "msg_per_cpu_s": scored / cpu,
            }
        )
        log(
            f"model-only batch {size}: {scored / elapsed:,.0f} msg/s, "
            f"{windows / elapsed:,.0f} windows/s"
        )
    return rows


def padding(checkpoint: Path, texts: list[str], batch: int) -> dict[str, float]:
    import numpy as np

    from model.engine import Engine

    engine = Engine.load(checkpoint, device="cpu")
    real = bucketed = unbucketed = 0
    for start in range(0, len(texts) - batch + 1, batch):
        lengths = np.asarray(
            [
                max(1, len(window.tokens))
                for text in texts[start : start + batch]
                for window in engine.plan(text).windows
            ]
        )
        real += int(lengths.sum())
        unbucketed += len(lengths) * int(lengths.max())
        bucketed += sum(len(b) * int(lengths[b].max()) for b in engine.buckets(lengths))
    return {"bucketed": real / bucketed, "unbucketed": real / unbucketed, "batch": batch}


def tokenizer_speed(texts: list[str]) -> dict[str, float | None]:
    """µs per text: the project's tokenizer against HF `tokenizers` doing the nearest
    equivalent it can express (NFKC, lower-case, one regex split), called per text as
    the worker would. Median of 3 passes."""
    import statistics

    from model.tokenizer import tokenize

    def per_text_us(fn: Any) -> float:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            for text in texts:
                fn(text)
            runs.append((time.perf_counter() - start) / len(texts) * 1e6)
        return statistics.median(runs)

    result: dict[str, float | None] = {"modstream_us": per_text_us(tokenize), "hf_us": None}
    try:
        from tokenizers import Regex, normalizers, pre_tokenizers
    except ImportError:
        return result
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    splitter = pre_tokenizers.Split(
        Regex(
            r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|@\w+|\d+(?:[.,]\d+)*"
            r"|[^\W\d_]+(?:'[^\W\d_]+)*|[^\w\s]"
        ),
        behavior="isolated",
    )

    def hf(text: str) -> list[str]:
        pieces = splitter.pre_tokenize_str(normalizer.normalize_str(text))
        return [piece for piece, _ in pieces if not piece.isspace()]

    result["hf_us"] = per_text_us(hf)
    return result


# -- 3. end to end -------------------------------------------------------------------


def end_to_end(
    bootstrap: str, names: dict[str, str], count: int, settings: dict[str, str]
) -> dict[str, float]:
    group = f"bench-e2e-{uuid.uuid4().hex[:6]}"
    worker = common.Worker(bootstrap, names, group, **settings)
    worker.wait_ready()
    ends = common.end_offsets(bootstrap, names["input"])
    common.wait_until(
        lambda: (worker.sample_rss() or True) and common.committed(bootstrap, group) == ends,
        1800,
        "end-to-end run",
        step_s=0.5,
    )
    code = worker.stop()
    outputs = common.read_all(bootstrap, names["output"])
    stamps = sorted(r.timestamp for r in outputs)
    elapsed = (stamps[-1] - stamps[0]) / 1000.0
    return {
        "msg_per_s": (len(outputs) - 1) / elapsed,
        "outputs": len(outputs),
        "peak_rss_bytes": worker.peak_rss_bytes,
        "peak_rss_bytes_by_process": sorted(worker.peak_rss_by_pid.values(), reverse=True),
        "exit_code": code,
        "expected": count,
    }


# -- 4. naive -----------------------------------------------------------------------------


def naive(bootstrap: str, source: str, checkpoint: Path, count: int) -> float:
    """The textbook loop: one message at a time, unbatched, synchronous send and commit."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from model.engine import Engine
    from schemas.result import Timings
    from worker.decode import Decoded, Decoder, SourceRecord
    from worker.results import build_result

    engine = Engine.load(checkpoint, device="cpu", cpu_threads=1)
    decoder = Decoder()
    out = topics(bootstrap, "naive", 6)["output"]
    consumer = KafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=f"bench-naive-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    done = 0
    start: float | None = None
    while done < count:
        for tp, records in consumer.poll(timeout_ms=1000, max_records=1).items():
            if start is None:
                start = time.perf_counter()
            r = records[0]
            item = decoder.decode(
                SourceRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value)
            )
            if isinstance(item, Decoded):
                row = engine.score([item.request.text]).text(0)  # a batch of one
                timings = Timings(queued_ms=0.0, inference_ms=0.0, batch_size=1)
                value = build_result(engine, item, row, timings).model_dump_json().encode()
                producer.send(out, key=r.key, value=value).get(timeout=30)
            consumer.commit(
                {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(r.offset + 1, "", -1)}
            )
            done += 1
    assert start is not None
    elapsed = time.perf_counter() - start
    consumer.close()
    producer.close()
    return done / elapsed


# -- 5. latency under load ------------------------------------------------------------------


def latency(
    bootstrap: str, texts: list[str], rate: float, seconds: float, settings: dict[str, str]
) -> dict[str, float]:
    from kafka import KafkaProducer

    names = topics(bootstrap, f"lat{int(rate)}", 6)
    group = f"bench-lat-{uuid.uuid4().hex[:6]}"
    worker = common.Worker(bootstrap, names, group, **settings)
    worker.wait_ready()
    # 5 ms linger, as the worker's own producer and Kafka 4's Java client default: one
    # request per message would load the shared CPUs with broker request handling.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    total = int(rate * seconds)
    offered = common.send_paced(producer, names["input"], texts, rate, total, "l")
    producer.close()
    ends = common.end_offsets(bootstrap, names["input"])
    common.wait_until(
        lambda: common.committed(bootstrap, group) == ends, 300, "latency run drained"
    )
    worker.stop()
    inputs = {r.value: r.timestamp for r in common.read_all(bootstrap, names["input"])}
    by_id = {json.loads(v)["id"]: ts for v, ts in inputs.items()}
    outputs = common.read_all(bootstrap, names["output"])
    lat = [(r.timestamp - by_id[json.loads(r.value)["id"]]) / 1000.0 for r in outputs]
    return {
        "offered_msg_per_s": offered,
        "p50_ms": common.percentile(lat, 50) * 1000,
        "p95_ms": common.percentile(lat, 95) * 1000,
        "p99_ms": common.percentile(lat, 99) * 1000,
        "messages": len(lat),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="modstream benchmark suite")
    parser.add_argument("--messages", type=int, default=100_000, help="pre-filled topic size")
    parser.add_argument("--naive-messages", type=int, default=2_000)
    parser.add_argument("--model-seconds", type=float, default=3.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--batch-sizes", default="1,8,32,128,256,512,1024")
    parser.add_argument("--output", type=Path, default=common.RESULTS_DIR / "latest.json")
    parser.add_argument(
        "--scoring-rounds",
        type=int,
        default=0,
        help="compare MODSTREAM_SCORING=in_process and =process, alternating, N of each",
    )
    parser.add_argument(
        "--depths", default="2", help="with --scoring-rounds: pipeline depths to compare, e.g. 2,4"
    )
    parser.add_argument(
        "--model-only",
        action="store_true",
        help="only the Kafka-free parts: padding, tokeniser and the model-only table",
    )
    args = parser.parse_args()
    if args.messages < 1000 or args.naive_messages < 10:
        parser.error("--messages must be ≥ 1000 and --naive-messages ≥ 10")
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    checkpoint = checkpoint_dir()
    texts = common.sample_texts(args.messages)
    worker_settings = {"torch_threads": "1"}
    results: dict[str, Any] = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "messages": args.messages,
    }
    results["padding"] = padding(checkpoint, texts[:20_000], 256)
    results["tokenizer"] = tokenizer_speed(common.real_texts())
    results["model_only"] = model_only(checkpoint, texts, sizes, args.model_seconds)
    if args.model_only:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print_model_only(results)
        return 0
    with common.broker() as bootstrap:
        names = topics(bootstrap, "e2e", 6)
        log(f"pre-filling {args.messages:,} messages")
        results["producer_msg_per_s"] = common.prefill(bootstrap, names["input"], texts)
        log("passthrough ceiling")
        results["passthrough_msg_per_s"] = passthrough(
            bootstrap, names["input"], args.messages, 500
        )
        if args.scoring_rounds:
            results["scoring"] = compare_scoring(
                bootstrap, names, texts, args, worker_settings, args.scoring_rounds
            )
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2) + "\n")
            print_scoring(results)
            return 0
        log("end-to-end worker, one batch at a time")
        results["end_to_end_synchronous"] = end_to_end(
            bootstrap, names, args.messages, {**worker_settings, "pipeline_depth": "0"}
        )
        log("end-to-end worker, pipelined")
        results["end_to_end"] = end_to_end(bootstrap, names, args.messages, worker_settings)
        log("naive worker")
        results["naive_msg_per_s"] = naive(
            bootstrap, names["input"], checkpoint, args.naive_messages
        )
        best = results["end_to_end"]["msg_per_s"]
        results["latency"] = []
        for share in (0.25, 0.5, 0.75):
            log(f"latency at {share:.0%} load")
            row = latency(bootstrap, texts, best * share, args.latency_seconds, worker_settings)
            results["latency"].append({"load": share, **row})
    model_best = max(r["msg_per_s"] for r in results["model_only"])
    ceiling = min(results["passthrough_msg_per_s"], model_best)
    results["ratios"] = {
        "end_to_end_over_ceiling": results["end_to_end"]["msg_per_s"] / ceiling,
        "end_to_end_over_naive": results["end_to_end"]["msg_per_s"] / results["naive_msg_per_s"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


MODES = ("in_process", "process")


def variants(depths: str) -> list[tuple[str, str]]:
    """(scoring mode, pipeline depth) pairs to compare, in the order they alternate."""
    return [(mode, depth) for depth in depths.split(",") for mode in MODES]


def compare_scoring(
    bootstrap: str,
    names: dict[str, str],
    texts: list[str],
    args: argparse.Namespace,
    settings: dict[str, str],
    rounds: int,
) -> dict[str, Any]:
    """End to end and latency per (scoring mode, depth), alternating (module docstring);
    the latency of each at half the median maximum of the scoring process at the first
    depth."""
    chosen = variants(args.depths)
    key = [f"{mode}/{depth}" for mode, depth in chosen]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in key}
    for n in range(rounds):
        for name, (mode, depth) in zip(key, chosen, strict=True):
            log(f"end-to-end worker, scoring {mode}, depth {depth}, round {n + 1}")
            variant = {**settings, "scoring": mode, "pipeline_depth": depth}
            runs[name].append(end_to_end(bootstrap, names, args.messages, variant))
    reference = f"process/{chosen[0][1]}"
    best = common.median([run["msg_per_s"] for run in runs[reference]])
    latencies: dict[str, list[dict[str, Any]]] = {k: [] for k in key}
    for n in range(rounds):
        for name, (mode, depth) in zip(key, chosen, strict=True):
            log(f"latency at {best * 0.5:,.0f} msg/s, scoring {mode}, depth {depth}, round {n + 1}")
            variant = {**settings, "scoring": mode, "pipeline_depth": depth}
            latencies[name].append(
                latency(bootstrap, texts, best * 0.5, args.latency_seconds, variant)
            )
    return {"end_to_end": runs, "latency_50": latencies, "latency_rate": best * 0.5}


def print_scoring(r: dict[str, Any]) -> None:
    out = sys.stdout.write
    model_best = max(row["msg_per_s"] for row in r["model_only"])
    passthrough_rate = r["passthrough_msg_per_s"]
    ceiling = min(passthrough_rate, model_best)
    s = r["scoring"]
    out(f"\npassthrough {passthrough_rate:,.0f} msg/s, model-only {model_best:,.0f} msg/s\n")
    out(
        "\n| round | scoring / depth | end-to-end msg/s | / min(ceilings) | peak RSS MiB "
        f"(per process) | p50 / p99 ms at {s['latency_rate']:,.0f} msg/s |\n"
        "|---:|---|---:|---:|---|---:|\n"
    )
    names = list(s["end_to_end"])
    for n in range(len(s["end_to_end"][names[0]])):
        for name in names:
            run, lat = s["end_to_end"][name][n], s["latency_50"][name][n]
            per = " + ".join(f"{b / 2**20:,.0f}" for b in run["peak_rss_bytes_by_process"])
            out(
                f"| {n + 1} | {name} | {run['msg_per_s']:,.0f} | {run['msg_per_s'] / ceiling:.2f} "
                f"| {run['peak_rss_bytes'] / 2**20:,.0f} ({per}) "
                f"| {lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} |\n"
            )
    for name in names:
        rate = common.median([run["msg_per_s"] for run in s["end_to_end"][name]])
        p50 = common.median([lat["p50_ms"] for lat in s["latency_50"][name]])
        p99 = common.median([lat["p99_ms"] for lat in s["latency_50"][name]])
        out(f"| median | {name} | {rate:,.0f} | {rate / ceiling:.2f} | | {p50:.0f} / {p99:.0f} |\n")


def print_table(r: dict[str, Any]) -> None:
    out = sys.stdout.write
    out(f"\n## Throughput ({r['messages']:,} messages, 6 partitions)\n\n")
    out("| measurement | msg/s |\n|---|---:|\n")
    out(f"| passthrough ceiling (Kafka client only) | {r['passthrough_msg_per_s']:,.0f} |\n")
    best = max(r["model_only"], key=lambda row: row["msg_per_s"])
    out(f"| model-only ceiling (best batch, {best['batch']}) | {best['msg_per_s']:,.0f} |\n")
    sync = r["end_to_end_synchronous"]["msg_per_s"]
    out(f"| end-to-end worker, one batch at a time (pipeline depth 0) | {sync:,.0f} |\n")
    out(f"| end-to-end worker, pipelined (default) | {r['end_to_end']['msg_per_s']:,.0f} |\n")
    out(f"| naive per-message worker | {r['naive_msg_per_s']:,.0f} |\n")
    ratios = r["ratios"]
    out(f"\nend-to-end / min(ceilings) = {ratios['end_to_end_over_ceiling']:.2f}; ")
    out(f"end-to-end / naive = {ratios['end_to_end_over_naive']:.1f}x; ")
    out(f"worker peak RSS = {r['end_to_end']['peak_rss_bytes'] / 2**20:,.0f} MiB\n")
    print_model_only(r, padding_and_tokenizer=False)
    out("\n## End-to-end latency (record timestamp → output record timestamp)\n\n")
    out("| load | offered msg/s | p50 ms | p95 ms | p99 ms |\n|---:|---:|---:|---:|---:|\n")
    for row in r["latency"]:
        out(
            f"| {row['load']:.0%} | {row['offered_msg_per_s']:,.0f} | {row['p50_ms']:.1f} "
            f"| {row['p95_ms']:.1f} | {row['p99_ms']:.1f} |\n"
        )
    print_model_only(r, table=False)


def print_model_only(
    r: dict[str, Any], table: bool = True, padding_and_tokenizer: bool = True
) -> None:
    """The model-only table (per message and per window: a long text is several
    windows), then padding and tokeniser speed."""
    out = sys.stdout.write
    if table:
        out("\n## Model only (tokenise → windows → bucket → packed LSTM, 1 thread)\n\n")
        out(
            "| batch | msg/s | windows/s | tokens/s | msg per CPU-s |\n|---:|---:|---:|---:|---:|\n"
        )
        for row in r["model_only"]:
            out(
                f"| {row['batch']} | {row['msg_per_s']:,.0f} | {row['windows_per_s']:,.0f} | "
                f"{row['tokens_per_s']:,.0f} | {row['msg_per_cpu_s']:,.0f} |\n"
            )
    if not padding_and_tokenizer:
        return
    p = r["padding"]
    out(f"\nPadding efficiency (real/padded tokens, batches of {p['batch']}): ")
    out(f"bucketed {p['bucketed']:.2f}, unbucketed {p['unbucketed']:.2f}\n")
    t = r["tokenizer"]
    hf = "not installed" if t["hf_us"] is None else f"{t['hf_us']:.0f} µs/text"
    out(f"\nTokenizer: modstream {t['modstream_us']:.0f} µs/text; HF tokenizers {hf}\n")


if __name__ == "__main__":
    sys.exit(main())
