#!/usr/bin/env python3
"""Reliability soak: the fault sequence on a real broker, lost and duplicated ids per mode.

For each delivery mode it starts a broker of its own (log kept on disk), produces
`--messages` numbered requests at `--rate` per second to a 6-partition topic (so the
faults land while messages flow), runs `modstream worker`
processes and, as the committed input offsets pass given fractions of the stream,
injects:

    10%  kill -9 worker a, restart it
    25%  start workers b and c             (rebalance 1 -> 3)
    40%  kill -9 worker b, restart it
    55%  restart the broker                (SIGTERM, start again on the same data)
    70%  stop workers b and c              (rebalance 3 -> 1)
    85%  kill -9 worker a, restart it

With `--scoring process` each worker's model runs in its scoring process, and two
faults are added: at 32% the scoring process of worker c is killed (kill -9; the
worker starts another and scores the batch in hand again), and every kill -9 of a
worker checks that its scoring process exits with it (no orphan).

then waits until every input offset is committed and reads the whole output topic
(`read_committed` for exactly-once) to count, by request id, what was lost and what was
duplicated. Every wait is bounded by `--phase-timeout`. Usage:

    python bench/soak.py --messages 100000            # both modes
    python bench/soak.py --messages 20000 --mode exactly_once
    python bench/soak.py --messages 20000 --scoring process
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from kafka import KafkaProducer  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402

from bench.common import children, wait_until  # noqa: E402
from tests.conftest import load_kafka_local  # noqa: E402
from tests.helpers import (  # noqa: E402
    TopicReader,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    request_bytes,
    worker_env,
)

TEXTS = [
    "you are a complete idiot",
    "Free entry! Text WIN to 87121 to claim your prize now",
    "see you at lunch tomorrow",
    "what a pathetic loser",
    "Thanks, that was really helpful.",
]
PARTITIONS = 6


@dataclass
class Outcome:
    mode: str
    inputs: int
    lost: int
    duplicates: int
    outputs: int
    seconds: float
    unacknowledged_sends: int
    faults: list[str] = field(default_factory=list)


def say(message: str) -> None:
    sys.stderr.write(f"[soak {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


class PacedProducer:
    """Sends `count` numbered requests at about `rate` per second from a thread.

    Only requests the broker acknowledged are expected in the output; the idempotent
    producer rides out the broker restart by itself.
    """

    def __init__(self, bootstrap: str, topic: str, count: int, rate: float) -> None:
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self._topic = topic
        self._count = count
        self._rate = rate
        self._stop = threading.Event()
        self.acknowledged: set[str] = set()
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="paced-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        tick = max(1, int(self._rate / 10))
        next_at = time.monotonic()
        for first in range(0, self._count, tick):
            if self._stop.is_set():
                return
            sent = []
            for n in range(first, min(first + tick, self._count)):
                value = request_bytes(f"m-{n}", f"{TEXTS[n % 5]} #{n}")
                future = self._producer.send(self._topic, key=f"k{n}".encode(), value=value)
                sent.append((f"m-{n}", future))
            for message_id, future in sent:
                try:
                    future.get(timeout=180)
                    self.acknowledged.add(message_id)
                except KafkaError:
                    self.failed += 1
            next_at += len(sent) / self._rate
            self._stop.wait(max(0.0, next_at - time.monotonic()))  # pacing, bounded

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise SystemExit(f"soak: the producer did not finish within {timeout_s:g}s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=200)
        self._producer.close(timeout=10)


class Soak:
    def __init__(self, args: argparse.Namespace, checkpoint: Path, workdir: Path) -> None:
        self.args = args
        self.checkpoint = checkpoint
        self.workdir = workdir
        self.kafka_local = load_kafka_local()

    def run(self, mode: str) -> Outcome:
        broker = self.kafka_local.LocalKafka(
            log_dir=self.workdir / f"broker-{mode}", startup_timeout=180
        )
        broker.start()
        try:
            return self._run(mode, broker)
        finally:
            broker.stop()

    def _run(self, mode: str, broker: Any) -> Outcome:
        args = self.args
        bootstrap = broker.bootstrap
        tag = uuid.uuid4().hex[:6]
        topics = {
            r: f"soak-{tag}-{r.replace('_', '-')}" for r in ("input", "output", "dead_letter")
        }
        broker.create_topics(list(topics.values()), PARTITIONS)
        group = f"soak-{tag}"
        count = args.messages
        say(f"{mode}: producing {count} requests at {args.rate}/s to {PARTITIONS} partitions")
        producer = PacedProducer(bootstrap, topics["input"], count, args.rate)
        isolation = "read_committed" if mode == "exactly_once" else "read_uncommitted"
        reader = TopicReader(bootstrap, topics["output"], isolation)
        workers: dict[str, WorkerProcess] = {}
        faults: list[str] = []

        def start(*names: str) -> None:
            for name in names:
                launch(name)
            for name in names:
                workers[name].wait_ready(args.phase_timeout)

        def launch(name: str) -> None:
            env = worker_env(
                bootstrap,
                topics,
                self.checkpoint,
                group,
                delivery=mode,
                group_instance_id=f"soak-{name}",
                transactional_id=f"{group}-{name}",
                # Static members do not leave on shutdown: the group notices a stopped
                # one after the session timeout, so keep it short for the scale-down.
                session_timeout_ms="10000",
                publish_timeout_s="5",
                max_batch_size=str(args.max_batch_size),
                **({"scoring": args.scoring} if args.scoring else {}),
            )
            log = self.workdir / f"{mode}-{name}-{len(faults)}.log"
            workers[name] = WorkerProcess(env, log)

        def committed() -> int:
            try:
                return sum(committed_offsets(bootstrap, group).values())
            except KafkaError:  # e.g. while the broker restarts
                return 0

        def progress_to(fraction: float) -> None:
            """Wait until this fraction of the inputs is committed: the stream's position."""
            target = int(count * fraction)

            def reached() -> bool:
                for name, worker in workers.items():
                    if worker.proc.poll() is not None:
                        raise SystemExit(f"soak: worker {name} exited:\n{worker.logs()}")
                return committed() >= target

            wait_until(reached, args.phase_timeout, f"{target} inputs committed")

        def where() -> str:
            return f"at {committed()} inputs committed"

        def kill(name: str) -> None:
            scorers = children(workers[name].proc.pid)
            workers[name].kill()
            faults.append(f"kill -9 {name} {where()}")
            if scorers:  # its scoring process must not outlive it
                wait_until(lambda: all(gone(pid) for pid in scorers), 30, "no orphan")
                faults[-1] += ", its scoring process gone with it"
            say(f"{mode}: {faults[-1]}")
            start(name)

        def kill_scorer(name: str) -> None:
            (pid,) = children(workers[name].proc.pid)
            os.kill(pid, signal.SIGKILL)
            faults.append(f"kill -9 the scoring process of {name} {where()}")
            say(f"{mode}: {faults[-1]}")

        started = time.monotonic()
        start("a")
        producer.start()
        try:
            progress_to(0.10)
            kill("a")
            progress_to(0.25)
            start("b", "c")
            faults.append(f"scale 1 -> 3 {where()}")
            say(f"{mode}: {faults[-1]}")
            if args.scoring == "process":
                progress_to(0.32)
                kill_scorer("c")
            progress_to(0.40)
            kill("b")
            progress_to(0.55)
            faults.append(f"broker restart {where()}")
            broker.stop(keep_data=True)
            say(f"{mode}: {faults[-1]}")
            down = time.monotonic()
            # The workers must notice the outage (not ready) before the broker returns.
            wait_until(
                lambda: (
                    all(w.get("/readyz")[0] == 503 for w in workers.values())
                    or time.monotonic() - down > 20
                ),
                args.phase_timeout,
                "the outage",
            )
            not_ready = [n for n, w in workers.items() if w.get("/readyz")[0] == 503]
            say(f"{mode}: not ready during the outage: {not_ready}")
            broker.start()
            wait_until(
                lambda: all(w.get("/readyz")[0] == 200 for w in workers.values()),
                args.phase_timeout,
                "every worker ready again after the broker restart",
            )
            say(f"{mode}: all ready again {time.monotonic() - down:.0f}s after the restart began")
            progress_to(0.70)
            for name in ("b", "c"):
                code = workers.pop(name).stop()
                if code != 0:
                    raise SystemExit(f"soak: worker {name} exited {code} on SIGTERM")
            faults.append(f"scale 3 -> 1 {where()}")
            say(f"{mode}: {faults[-1]}")
            progress_to(0.85)
            kill("a")
            producer.join(args.phase_timeout)
            wait_until(
                lambda: (
                    committed_offsets(bootstrap, group) == end_offsets(bootstrap, topics["input"])
                ),
                args.phase_timeout,
                "every input offset committed",
            )
        finally:
            producer.stop()
            codes = {name: worker.stop() for name, worker in workers.items()}
        elapsed = time.monotonic() - started
        if any(codes.values()):
            raise SystemExit(f"soak: workers exited with {codes}")
        ids = [r.value["id"] for r in reader.read_to_end(args.phase_timeout)]
        reader.close()
        counts = Counter(ids)
        expected = producer.acknowledged
        outcome = Outcome(
            mode=mode,
            inputs=len(expected),
            lost=len(expected - set(counts)),
            duplicates=sum(c - 1 for c in counts.values()),
            outputs=len(ids),
            seconds=round(elapsed, 1),
            unacknowledged_sends=producer.failed,
            faults=faults,
        )
        say(f"{mode}: lost {outcome.lost}, duplicates {outcome.duplicates}, {elapsed:.0f}s")
        return outcome


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its new parent counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def checkpoint_dir(given: Path | None, workdir: Path) -> Path:
    if given is not None:
        return given
    default = REPO_ROOT / "checkpoints" / "current"
    if (default / "model.json").is_file():
        return default
    from model.build import retrain
    from model.train_config import TrainConfig

    say("no checkpoint: training the tiny one used by the tests")
    target = workdir / "checkpoint"
    retrain(target, TrainConfig.tiny(), lambda _line: None)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="requests per mode")
    parser.add_argument(
        "--mode",
        choices=["at_least_once", "exactly_once", "both"],
        default="both",
        help="delivery mode(s) to soak",
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint")
    parser.add_argument(
        "--rate", type=float, default=500.0, help="requests produced per second (paced)"
    )
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument(
        "--scoring",
        choices=["in_process", "process"],
        default=None,
        help="MODSTREAM_SCORING of the workers (default: theirs)",
    )
    parser.add_argument("--phase-timeout", type=float, default=900.0, metavar="SECONDS")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    args = parser.parse_args(argv)
    if args.messages < 100:
        parser.error("--messages must be at least 100")
    modes = ["at_least_once", "exactly_once"] if args.mode == "both" else [args.mode]
    workdir = Path(tempfile.mkdtemp(prefix="modstream-soak-"))
    say(f"broker data and worker logs in {workdir} (removed after a clean run)")
    soak = Soak(args, checkpoint_dir(args.checkpoint, workdir), workdir)
    outcomes = [soak.run(mode) for mode in modes]
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes], indent=2))
    else:
        print("| mode | inputs | lost | duplicates | outputs | seconds |")
        print("|---|---|---|---|---|---|")
        for o in outcomes:
            print(
                f"| {o.mode} | {o.inputs} | {o.lost} | {o.duplicates} | {o.outputs} | {o.seconds} |"
            )
    failed = any(o.lost for o in outcomes) or any(
        o.duplicates for o in outcomes if o.mode == "exactly_once"
    )
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
