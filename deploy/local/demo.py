#!/usr/bin/env python3
"""The README's demo: a local broker, a real model, the worker, a few dozen messages.

Steps:
1. Start a local Kafka broker (or use $MODSTREAM_KAFKA_BOOTSTRAP) and create the topics.
2. Reuse the checkpoint at the default location, or train one with `modstream retrain`.
3. Start `modstream worker` as a child process and wait until /readyz says ready.
4. Send sample messages: insults, spam, clean text and a few malformed records.
5. Read one output per input from the results and dead-letter topics; print a summary.
6. SIGTERM the worker (it drains and commits), stop the broker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kafka_local  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.structs import TopicPartition  # noqa: E402

from model.checkpoint import CheckpointError, default_checkpoint_dir, load_checkpoint  # noqa: E402

TOPICS = {
    "input": "moderation.requests",
    "output": "moderation.results",
    "dead_letter": "moderation.dead-letter",
}

SAMPLES: list[tuple[str, str]] = [
    ("insult-1", "You are a complete idiot and everybody knows it."),
    ("insult-2", "shut up you pathetic little moron"),
    ("insult-3", "What a stupid, ignorant loser you are."),
    ("insult-4", "you're an absolute m0r0n, go away"),
    ("insult-5", "Nobody cares about your worthless opinion, dumbass."),
    ("insult-6", "you sound like a fucking retard"),
    ("insult-7", "Are you really this dumb or just pretending, you clown?"),
    ("insult-8", "Go back under your bridge, troll. You are disgusting."),
    (
        "spam-1",
        "WINNER!! You have been selected to receive a £900 prize. Call 09061701461 to claim now",
    ),
    ("spam-2", "FREE entry into our weekly comp to win FA Cup tickets. Text WIN to 87121 now!"),
    (
        "spam-3",
        "URGENT! Your mobile number has won £2000. To claim call 09050000327 before midnight",
    ),
    (
        "spam-4",
        "Congratulations, you won a free holiday! Reply YES to 80062 for your voucher. T&C apply",
    ),
    (
        "spam-5",
        "Had your mobile 11 months or more? You are entitled to a new colour camera phone "
        "for FREE! Call 08002986030",
    ),
    ("spam-6", "You have 1 new voicemail. Please call 09063440451 now. 150p/min"),
    ("clean-1", "Thanks for the detailed answer, that fixed my problem."),
    ("clean-2", "I think the council should fund more bike lanes downtown."),
    ("clean-3", "Are we still meeting for lunch tomorrow at noon?"),
    ("clean-4", "Great game last night, the defence finally showed up."),
    ("clean-5", "I disagree with the article, but it makes some fair points."),
    ("clean-6", "Ok see you later, I'll bring the charger."),
    ("clean-7", "The new library opening hours are 9 to 5 on weekdays."),
    ("clean-8", "Happy birthday! Hope you have a wonderful day."),
    ("clean-9", "Could you send me the slides from today's talk?"),
    ("clean-10", "Interesting point about interest rates, I hadn't considered that."),
]

MALFORMED: list[tuple[str, bytes | None]] = [
    ("not json", b"{this is not json"),
    ("missing text", b'{"id": "bad-1"}'),
    ("empty text", b'{"id": "bad-2", "text": "   "}'),
    ("wrong type", b'{"id": 42, "text": "hello"}'),
    ("not UTF-8", b'{"id": "bad-3", "text": "\xff\xfe"}'),
    ("tombstone", None),
]


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def ensure_checkpoint() -> Path:
    checkpoint = default_checkpoint_dir()
    try:
        loaded = load_checkpoint(checkpoint)
        say(f"• using the checkpoint at {checkpoint} (version {loaded.version})")
        return checkpoint
    except CheckpointError as exc:
        say(f"• no usable checkpoint at {checkpoint} ({exc}); training one (a few minutes)…")
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "worker.cli", "retrain", "--output", str(checkpoint)],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    say(f"• trained in {time.monotonic() - started:.0f}s → {checkpoint}")
    return checkpoint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


def wait_ready(worker: subprocess.Popen[bytes], port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while http_get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
        if worker.poll() is not None:
            raise SystemExit(f"worker exited early with code {worker.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("worker did not become ready in time")
        time.sleep(0.2)


def read_outputs(bootstrap: str, expected: int, timeout_s: float = 60) -> dict[str, list[Any]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(TOPICS[name], 0) for name in ("output", "dead_letter")]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    found: dict[str, list[Any]] = {TOPICS["output"]: [], TOPICS["dead_letter"]: []}
    deadline = time.monotonic() + timeout_s
    while sum(len(v) for v in found.values()) < expected and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500).items():
            found[tp.topic].extend(json.loads(r.value) for r in records)
    consumer.close()
    return found


def print_summary(found: dict[str, list[Any]], port: int) -> None:
    results = found[TOPICS["output"]]
    say()
    say(f"Results on {TOPICS['output']} ({len(results)}):")
    say(f"  {'id':<10} {'flagged':<8} {'insult':>7} {'spam':>7}  model")
    for result in sorted(results, key=lambda r: r["id"]):
        scores = result["category_scores"]
        flags = ",".join(k for k, v in result["categories"].items() if v) or "-"
        say(
            f"  {result['id']:<10} {flags:<8} {scores.get('insult', 0):>7.3f} "
            f"{scores.get('spam', 0):>7.3f}  {result['model_version']}"
        )
    letters = found[TOPICS["dead_letter"]]
    say()
    say(f"Dead letters on {TOPICS['dead_letter']} ({len(letters)}):")
    for letter in letters:
        kind, message = letter["error_kind"], letter["error_message"][:70]
        say(f"  offset {letter['offset']:<3} {kind:<14} {message}")
    _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
    say()
    say(f"Metrics: http://127.0.0.1:{port}/metrics  (health: /livez, /readyz)")
    for line in metrics.splitlines():
        if line.startswith(("modstream_messages_total", "modstream_dead_letters_total")):
            say(f"  {line}")


def main() -> int:
    started = time.monotonic()
    say("modstream demo")
    with kafka_local.broker_from_env() as bootstrap:
        say(f"• Kafka at {bootstrap}")
        kafka_local.create_topics(bootstrap, list(TOPICS.values()), partitions=1)
        checkpoint = ensure_checkpoint()
        port = free_port()
        env = {
            **os.environ,
            "MODSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "MODSTREAM_CHECKPOINT_DIR": str(checkpoint),
            "MODSTREAM_METRICS_HOST": "127.0.0.1",
            "MODSTREAM_METRICS_PORT": str(port),
            "MODSTREAM_LOG_LEVEL": "warning",
            "MODSTREAM_GROUP_ID": f"modstream-demo-{os.getpid()}",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"], cwd=REPO_ROOT, env=env
        )
        try:
            wait_ready(worker, port)
            say("• worker ready; sending messages")
            producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
            for message_id, text in SAMPLES:
                body = json.dumps({"id": message_id, "text": text}).encode()
                producer.send(TOPICS["input"], key=message_id.encode(), value=body)
            for label, raw in MALFORMED:
                producer.send(TOPICS["input"], key=label.encode(), value=raw)
            producer.flush()
            producer.close()
            found = read_outputs(bootstrap, len(SAMPLES) + len(MALFORMED))
            print_summary(found, port)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
        total = sum(len(v) for v in found.values())
        say()
        say(f"• worker drained and exited with code {code}")
    expected = len(SAMPLES) + len(MALFORMED)
    say(
        f"• {total}/{expected} messages answered; broker stopped; {time.monotonic() - started:.0f}s"
    )
    return 0 if code == 0 and total == expected else 1


if __name__ == "__main__":
    sys.exit(main())
