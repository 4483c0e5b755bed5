#!/usr/bin/env python3
"""Model-only throughput of the serving engine on CUDA against CPU, for the device machine.

For batch sizes 64 … 8192 of real texts it prints msg/s and tokens/s on CPU (1 thread)
and on CUDA in fp32, bf16 and fp16 autocast (where scores stay within 1e-2 of fp32),
and the share of CUDA time spent in host→device copies. It needs only torch, numpy,
safetensors and this repo (no Kafka). Designed to finish in under 8 minutes.

    python bench/gpu.py [--checkpoint DIR] [--texts FILE.jsonl] [--seconds 2]

Without the data packages it reads texts from --texts (JSONL with a "text" field, as
written by `python bench/gpu.py --export-texts FILE`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.checkpoint import default_checkpoint_dir  # noqa: E402
from model.engine import Engine  # noqa: E402

SIZES = (64, 256, 1024, 4096, 8192)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_texts(path: Path | None, count: int) -> list[str]:
    if path is not None:
        with path.open(encoding="utf-8") as handle:
            texts = [json.loads(line)["text"] for line in handle if line.strip()]
    else:
        from bench.common import sample_texts

        texts = sample_texts(count)
    while len(texts) < count:
        texts = texts + texts
    return texts[:count]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    engine: Engine, texts: list[str], size: int, dtype: torch.dtype | None, seconds: float
) -> tuple[float, float]:
    chunks = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
    with autocast(engine.device, dtype):
        engine.score(chunks[0])  # warm-up: kernels, allocator
        sync(engine.device)
        scored = tokens = 0
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds or n == 0:
            result = engine.score(chunks[n % len(chunks)])
            scored += size
            tokens += result.real_tokens
            n += 1
        sync(engine.device)
    elapsed = time.perf_counter() - start
    return scored / elapsed, tokens / elapsed


def max_score_error(engine: Engine, texts: list[str], dtype: torch.dtype | None) -> float:
    reference = engine.score(texts).probabilities
    with autocast(engine.device, dtype):
        reduced = engine.score(texts).probabilities
    return float(np.abs(reference - reduced).max())


def copy_share(engine: Engine, texts: list[str]) -> float:
    """Share of CUDA time in host→device memcpy while scoring one large batch."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.score(texts)
        sync(engine.device)
    total = copies = 0.0
    for event in prof.key_averages():
        device_time = float(getattr(event, "device_time_total", 0.0) or 0.0)
        if "Memcpy HtoD" in event.key:
            copies += device_time
        if event.device_type == torch.autograd.DeviceType.CUDA:
            total += device_time
    return copies / total if total else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--texts", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--cpu-max-batch", type=int, default=1024, help="CPU is slow: cap it")
    parser.add_argument("--export-texts", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "gpu.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    texts = load_texts(args.texts, max(max(sizes) * 4, 20_000))
    if args.export_texts:
        with args.export_texts.open("w", encoding="utf-8") as handle:
            for text in texts[:40_000]:
                handle.write(json.dumps({"text": text}) + "\n")
        return 0
    checkpoint = args.checkpoint or default_checkpoint_dir()
    rows: list[dict[str, Any]] = []
    cpu = Engine.load(checkpoint, device="cpu", cpu_threads=1, max_batch_tokens=1 << 30)
    for size in sizes:
        if size <= args.cpu_max_batch:
            msgs, toks = throughput(cpu, texts, size, None, args.seconds)
            rows.append(
                {
                    "device": "cpu",
                    "precision": "fp32",
                    "batch": size,
                    "msg_per_s": msgs,
                    "tokens_per_s": toks,
                }
            )
    info: dict[str, Any] = {"cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        gpu = Engine.load(checkpoint, device="cuda", max_batch_tokens=1 << 30)
        info["card"] = torch.cuda.get_device_name(0)
        info["copy_share"] = copy_share(gpu, texts[: max(sizes)])
        for name, dtype in PRECISIONS.items():
            error = max_score_error(gpu, texts[:2048], dtype)
            info[f"max_error_{name}"] = error
            if error > 1e-2:
                continue
            for size in sizes:
                msgs, toks = throughput(gpu, texts, size, dtype, args.seconds)
                rows.append(
                    {
                        "device": "cuda",
                        "precision": name,
                        "batch": size,
                        "msg_per_s": msgs,
                        "tokens_per_s": toks,
                    }
                )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    out = sys.stdout.write
    out(f"\ncard: {info.get('card', 'none (CPU only)')}\n\n")
    out("| device | precision | batch | msg/s | tokens/s |\n|---|---|---:|---:|---:|\n")
    for row in rows:
        out(
            f"| {row['device']} | {row['precision']} | {row['batch']} "
            f"| {row['msg_per_s']:,.0f} | {row['tokens_per_s']:,.0f} |\n"
        )
    for key, value in info.items():
        if key.startswith(("max_error", "copy_share")):
            out(f"{key}: {value:.4g}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
