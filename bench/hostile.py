#!/usr/bin/env python3
"""Cost per message of hostile input against typical input, no Kafka needed.

1. Tokenise, encode (`Engine.encode_batch`: tokens, ids, token vectors) and score
   (`Engine.score`: encode + LSTM) one message at a time, per adversarial class of
   10,000 characters (the default `MODSTREAM_MAX_TEXT_CHARS`), each message unique so
   no cache helps (the best of `--variants` messages: they cost the same but for the
   machine's noise); against a typical corpus message (the median over 500 of them,
   their tokens cached as in a running worker) and 10,000 characters of corpus text.
2. Decode (`worker.decode.Decoder`) records of absurd shape against a typical record.
3. Memory: a stream of messages, each one unique 9,000-letter word, through
   `Engine.score` in batches of 64; resident memory before, after and at its peak.
4. Ordinary throughput: corpus texts through `Engine.score` in batches of 512.

The engine has the default model's shape (embeddings 100 + sub-words 32, BiLSTM 64,
20,000 sub-word buckets) with untrained weights and the corpora's vocabulary: cost
does not depend on the weights. One torch thread.

`--baseline REF` runs the same measurements on the code of a git revision as well
(its `model/`, `schemas/` and `worker/` in a temporary directory), in alternating
child processes, and prints medians and new/baseline ratios:

    python bench/hostile.py                        # this checkout
    python bench/hostile.py --baseline d775319     # against the code before the bounds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import string
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_TEXT = 10_000


def letters(seed: int, count: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_lowercase, k=count))


def unique(pattern: str) -> Callable[[int], str]:
    """Variant n: a word of its own, then the pattern, cut to MAX_TEXT characters."""
    return lambda n: (f"v{letters(n, 6)} " + pattern * MAX_TEXT)[:MAX_TEXT]


# Each class makes its n-th message; every message differs, so no cache helps.
CLASSES: dict[str, Callable[[int], str]] = {
    "combining marks, one class (a + 9,999 U+0301)": unique("a" + "\u0301" * MAX_TEXT),
    "combining marks, two classes out of order": unique("a" + "\u0301\u0316" * MAX_TEXT),
    "CJK compatibility U+3316 (6 letters each)": unique("\u3316"),
    "Arabic ligature U+FDFA (18 characters each)": unique("\ufdfa"),
    "one unique 10,000-letter word": lambda n: letters(n, MAX_TEXT),
    "one letter 10,000 times": lambda n: string.ascii_lowercase[n % 26] * MAX_TEXT,
    "runs of three letters: aaabbbccc…": unique("aaabbbccc"),
    "e-mail look-ahead: a.a.a.…": unique("a."),
    "e-mail look-ahead: a.a.…a@": lambda n: (f"v{n}." + "a." * MAX_TEXT)[: MAX_TEXT - 1] + "@",
    "many @: a@a@…": unique("a@"),
    "letter + 9,999 digits": lambda n: letters(n, 1) + "1" * (MAX_TEXT - 1),
    "letters and digits alternating": unique("1a"),
    "zero-width spaces between letters": unique("a\u200b"),
    "all punctuation": unique("!?"),
    "RTL words with direction marks": unique("\u202e\u05e9\u05dc\u05d5\u05dd\u202c "),
    "emoji (astral, surrogate pairs in JSON)": unique("\U0001f600"),
    "failing URL: http:// + dots": lambda n: f"v{n} http://" + "." * MAX_TEXT,
    "starred: a*a*…": unique("a*"),
}


def log(line: str) -> None:
    sys.stderr.write(f"[hostile] {line}\n")
    sys.stderr.flush()


# -- child: measures one code tree ------------------------------------------------------


def rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def per_message(function: Callable[[str], object], texts: Sequence[str]) -> list[float]:
    seconds = []
    for text in texts:
        started = time.perf_counter()
        function(text)
        seconds.append(time.perf_counter() - started)
    return seconds


def corpus_texts() -> list[str]:
    from model.data import load_splits

    splits = load_splits()
    return [e.text for part in (splits.train, splits.validation, splits.test) for e in part]


def build_engine(texts: Sequence[str]) -> Any:
    import torch

    from model.engine import Engine
    from model.network import Classifier, ModelConfig
    from model.tokenizer import tokenize
    from model.vocab import Vocab

    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab = Vocab.build((tokenize(t) for t in texts), min_freq=2, max_size=40_000)
    config = ModelConfig(
        vocab_size=len(vocab),
        num_labels=2,
        embed_dim=100,
        hidden_dim=64,
        pooling="meanmax",
        subword_buckets=20_000,
        subword_dim=32,
    )
    engine = Engine.from_model(Classifier(config), vocab, ("insult", "spam"), device="cpu")
    engine.warm_up()
    return engine


def measure_costs(variants: int, stream: int) -> dict[str, Any]:
    from model.tokenizer import tokenize
    from worker.decode import Decoder, SourceRecord

    texts = corpus_texts()
    rng = random.Random(7)
    sample = rng.sample(texts, 500)
    engine = build_engine(texts)
    for text in sample:  # the typical path is warm: its tokens are cached, as in serving
        engine.score([text])
    joined = " ".join(texts)
    ordinary = [joined[i * 50_000 : i * 50_000 + MAX_TEXT] for i in range(variants)]
    out: dict[str, Any] = {"classes": {}}

    def costs(
        texts_: Sequence[str], pick: Callable[[list[float]], float] = min
    ) -> dict[str, float]:
        tok = per_message(tokenize, texts_)
        enc = per_message(lambda t: engine.encode_batch([t]), texts_)
        score = per_message(lambda t: engine.score([t]), [f"w{t}" for t in texts_])
        return {
            "tokenize_us": pick(tok) * 1e6,
            "encode_us": pick(enc) * 1e6,
            "score_us": pick(score) * 1e6,
            "tokens": max(len(tokenize(t)) for t in texts_),
            "longest_token": max((len(x) for t in texts_ for x in tokenize(t)), default=0),
        }

    out["typical"] = costs(sample, statistics.median)
    out["ordinary_10k"] = costs(ordinary)
    for name, make in CLASSES.items():
        log(f"  {name}")
        out["classes"][name] = costs([make(n) for n in range(variants)])

    decoder = Decoder()

    def record(value: bytes) -> SourceRecord:
        return SourceRecord("t", 0, 1, None, b"k", value)

    fields = {f"f{i}": 0 for i in range(100_000)}
    records = {
        "typical record": [
            json.dumps({"id": f"r{i}", "text": t}).encode() for i, t in enumerate(sample)
        ],
        "100,000 extra fields (1.3 MB)": [json.dumps({"id": "a", "text": "t", **fields}).encode()],
        "100,000 extra fields, no id": [json.dumps(fields).encode()],
        "100,000 metadata entries, wrong type": [
            json.dumps(
                {"id": "a", "text": "t", "metadata": {f"k{i}": i for i in range(100_000)}}
            ).encode()
        ],
        "metadata: array of 100,000 numbers": [
            json.dumps({"id": "a", "text": "t", "metadata": list(range(100_000))}).encode()
        ],
        "nesting 5,000 deep": [
            b'{"id":"a","text":"t","metadata":' + b"[" * 5000 + b"]" * 5000 + b"}"
        ],
        "valid request in 1 MB of whitespace": [
            b'{"id": "a",' + b" " * 1_000_000 + b'"text": "hello"}'
        ],
    }
    out["decode"] = {}
    for name, values in records.items():
        times = [min(per_message(lambda v: decoder.decode(record(v)), [v] * 3)) for v in values]
        out["decode"][name] = {"us": statistics.median(times) * 1e6, "bytes": len(values[0])}

    if stream:
        gc_collect()
        before = rss_bytes()
        reset_peak_rss()
        started = time.perf_counter()
        for start in range(0, stream, 64):
            engine.score(
                [letters(10_000_000 + n, 9000) for n in range(start, min(start + 64, stream))]
            )
        elapsed = time.perf_counter() - started
        gc_collect()
        out["stream"] = {
            "messages": stream,
            "rss_before_mib": before / 2**20,
            "rss_after_mib": rss_bytes() / 2**20,
            "rss_peak_mib": rss_bytes("VmHWM") / 2**20,
            "msg_per_s": stream / elapsed,
        }
    return out


def gc_collect() -> None:
    import gc

    gc.collect()


def measure_throughput(count: int) -> dict[str, Any]:
    texts = corpus_texts()
    engine = build_engine(texts)
    rng = random.Random(11)
    stream = [rng.choice(texts) for _ in range(count)]
    engine.score(stream[:2048])  # the cache holds what a running worker's would
    started = time.perf_counter()
    for start in range(0, count, 512):
        engine.score(stream[start : start + 512])
    return {"msg_per_s": count / (time.perf_counter() - started)}


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.tree)
    os.chdir(args.tree)
    if args.child == "costs":
        result = measure_costs(args.variants, args.stream)
    else:
        result = measure_throughput(args.messages)
    print(json.dumps(result))


# -- parent: runs children, prints tables -------------------------------------------------


def extract(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "model", "schemas", "worker", "pyproject.toml"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_child(tree: Path, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--tree",
        str(tree),
        "--variants",
        str(args.variants),
        "--stream",
        str(args.stream),
        "--messages",
        str(args.messages),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cost_rows(result: dict[str, Any], base: dict[str, Any] | None) -> list[list[str]]:
    typical = result["typical"]
    rows = []
    entries = [
        ("typical corpus message", typical),
        ("10,000 characters of corpus text", result["ordinary_10k"]),
    ]
    entries += list(result["classes"].items())
    for name, cost in entries:
        row = [name]
        for key in ("tokenize_us", "encode_us", "score_us"):
            ratio = cost[key] / typical[key]
            cell = f"{cost[key]:,.0f} µs ({ratio:.1f}x)"
            if base is not None:
                old = lookup(base, name)
                if old is not None:
                    cell = f"{old[key]:,.0f} → {cell}"
            row.append(cell)
        row.append(
            str(cost["longest_token"])
            if base is None
            else f"{(lookup(base, name) or {}).get('longest_token', '?')} → {cost['longest_token']}"
        )
        rows.append(row)
    return rows


def lookup(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    if name == "typical corpus message":
        return result["typical"]  # type: ignore[no-any-return]
    if name == "10,000 characters of corpus text":
        return result["ordinary_10k"]  # type: ignore[no-any-return]
    found: dict[str, Any] | None = result["classes"].get(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git revision to measure as well, alternating")
    parser.add_argument("--variants", type=int, default=10, help="messages per class")
    parser.add_argument("--stream", type=int, default=3000, help="unique-word messages (0: skip)")
    parser.add_argument("--messages", type=int, default=20_000, help="throughput messages")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per side")
    parser.add_argument("--throughput-only", action="store_true", help="skip per-class costs")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--tables-from", metavar="PATH", help="print tables from --json output")
    parser.add_argument("--child", choices=["costs", "throughput"], help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=str(REPO_ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    if args.tables_from:
        results = json.loads(Path(args.tables_from).read_text())
    else:
        results = measure(args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    print_tables(results)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hostile-baseline-") as tmp:
        trees = {"new": REPO_ROOT}
        if args.baseline:
            trees["baseline"] = extract(args.baseline, Path(tmp))
        results: dict[str, Any] = {"args": vars(args)}
        for side, tree in trees.items():
            log(f"costs: {side}")
            costs = {} if args.throughput_only else run_child(tree, "costs", args)
            results[side] = {"costs": costs, "throughput": []}
        for round_ in range(args.rounds):
            for side, tree in trees.items():
                log(f"throughput round {round_ + 1}: {side}")
                results[side]["throughput"].append(run_child(tree, "throughput", args)["msg_per_s"])
    return results


def print_tables(results: dict[str, Any]) -> None:
    settings = results.get("args", {})
    sides = {side: results[side] for side in ("new", "baseline") if side in results}
    new, base = results["new"], results.get("baseline")
    base_costs = base["costs"] if base else None
    if new["costs"]:
        print_costs(new, base_costs, sides, settings)
    print_throughput(sides, settings)


def print_costs(
    new: dict[str, Any],
    base_costs: dict[str, Any] | None,
    sides: dict[str, Any],
    settings: dict[str, Any],
) -> None:
    print("Per message (best of the unique messages; (Nx) = against the typical message)\n")
    header = ["class (10,000 characters)", "tokenise", "encode", "score", "longest token"]
    print(table(cost_rows(new["costs"], base_costs), header))
    print("\nDecode, per record\n")
    rows = []
    for name, cost in new["costs"]["decode"].items():
        cell = f"{cost['us']:,.0f} µs"
        if base_costs:
            cell = f"{base_costs['decode'][name]['us']:,.0f} → {cell}"
        rows.append([name, f"{cost['bytes']:,}", cell])
    print(table(rows, ["record", "bytes", "decode"]))
    if "stream" in new["costs"]:
        words = f"{settings.get('stream', 3000):,} messages, each one unique 9,000-letter word"
        print(f"\nStream of {words}, batches of 64\n")
        rows = []
        for side, result in sides.items():
            s = result["costs"]["stream"]
            rows.append(
                [
                    side,
                    f"{s['rss_before_mib']:,.0f}",
                    f"{s['rss_after_mib']:,.0f}",
                    f"{s['rss_peak_mib']:,.0f}",
                    f"{s['rss_peak_mib'] - s['rss_before_mib']:,.0f}",
                    f"{s['msg_per_s']:,.0f}",
                ]
            )
        print(table(rows, ["code", "RSS before MiB", "after", "peak", "peak growth", "msg/s"]))


def print_throughput(sides: dict[str, Any], settings: dict[str, Any]) -> None:
    texts = f"{settings.get('messages', 20_000):,} corpus texts"
    print(f"\nOrdinary throughput, Engine.score, {texts} in batches of 512\n")
    rows = [
        [
            side,
            ", ".join(f"{v:,.0f}" for v in r["throughput"]),
            f"{statistics.median(r['throughput']):,.0f}",
        ]
        for side, r in sides.items()
    ]
    if "baseline" in sides:
        new, base = sides["new"]["throughput"], sides["baseline"]["throughput"]
        ratio = statistics.median(new) / statistics.median(base)
        rows.append(["new / baseline", "", f"{ratio:.2f}"])
    print(table(rows, ["code", "msg/s per round", "median"]))


if __name__ == "__main__":
    main()
