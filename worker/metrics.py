"""Prometheus metrics of one worker process.

Metrics live in a registry owned by the worker (not the global one) so that tests and
benchmarks can run several workers in one process without name clashes.

The per-category series (`category` label) follow the serving model's labels
(`set_categories`): a model that adds a label creates its series at 0, one that removes
a label removes them, so dashboards templated by category show what is served.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from schemas.dead_letter import ErrorKind

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16_384, 65_536, 262_144)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
GC_GENERATIONS = ("0", "1", "2")

OUTCOMES = ("ok", "invalid", "error")
RELOAD_RESULTS = ("ok", "failed")
LABEL_CHANGES = ("added", "removed")
STAGES = ("queue", "decode", "tokenize", "inference", "publish", "commit")
COMMIT_RESULTS = ("ok", "failed", "deferred")


class WorkerMetrics:
    """Every metric the worker exports, documented in the README's catalogue. Updated
    from every worker thread (prometheus_client's metrics are thread-safe), read by the
    HTTP thread."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.end_to_end_seconds = Histogram(
            "modstream_end_to_end_latency_seconds",
            "Record timestamp to its output acknowledged by the broker.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "modstream_stage_latency_seconds",
            "Seconds in one pipeline stage: queue per record (record timestamp, else poll "
            "time, to its batch's start); decode (+validate), tokenize, inference, publish "
            "(until acknowledged) and commit per batch.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "modstream_inference_latency_seconds",
            "Tokenise + bucketed forward passes for one batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "modstream_batch_size",
            "Records per closed batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "modstream_batch_tokens",
            "Real (unpadded) tokens per scored batch.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.padding_efficiency = Histogram(
            "modstream_padding_efficiency_ratio",
            "Real tokens / (rows x longest row) over a scored batch's buckets: how ragged "
            "they are. Nothing is padded in the computation (packed steps); ragged buckets "
            "only leave fewer rows in their last time steps.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.messages = Counter(
            "modstream_messages",
            "Consumed records by outcome: ok (result), invalid (dead letter), error.",
            ["outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "modstream_dead_letters",
            "Dead-lettered records by machine-readable reason.",
            ["reason"],
            registry=r,
        )
        self.flagged = Counter(
            "modstream_flagged",
            "Results with a category over its threshold.",
            ["category"],
            registry=r,
        )
        self.scores = Histogram(
            "modstream_category_score",
            "Distribution of scores per category (watch for drift).",
            ["category"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "modstream_in_flight_messages",
            "Records consumed but not yet committed.",
            registry=r,
        )
        self.publish_retries = Counter(
            "modstream_publish_retries",
            "Batches whose outputs had to be sent again after a failure.",
            registry=r,
        )
        self.outputs_abandoned = Counter(
            "modstream_outputs_abandoned",
            "Records left without any output: the broker refused even the minimal dead "
            "letter standing in for their refused output (each an output_abandoned error "
            "line); their partition moves on.",
            registry=r,
        )
        self.kafka_errors = Counter(
            "modstream_kafka_errors",
            "Kafka client errors by kind (exception class).",
            ["kind"],
            registry=r,
        )
        self.commits = Counter(
            "modstream_commits",
            "Offset commits by result, counted when the group coordinator answers: ok, "
            "failed, deferred (refused while the group rebalances; sent again), aborted "
            "(exactly-once).",
            ["result"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "modstream_assigned_partitions",
            "Input partitions currently assigned to this worker.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "modstream_consumer_lag_records",
            "Per assigned partition: end offset (high watermark) minus the consumer's "
            "position, refreshed every MODSTREAM_LAG_INTERVAL_S.",
            ["topic", "partition"],
            registry=r,
        )
        self.rebalances = Counter(
            "modstream_rebalances",
            "Consumer group rebalances seen (assignments received).",
            registry=r,
        )
        self.model_info = Info(
            "modstream_model",
            "The model currently serving: version, labels, device.",
            registry=r,
        )
        self.build_info = Info("modstream_build", "Package version.", registry=r)
        self.model_reloads = Counter(
            "modstream_model_reloads",
            "Checkpoint reloads by result: ok (swapped in), failed (old model kept serving).",
            ["result"],
            registry=r,
        )
        self.gc_pauses = Histogram(
            "modstream_gc_pause_seconds",
            "Python garbage collections by process (worker, scorer: the scoring process) "
            "and generation (2 = full), "
            "seconds each: every thread of that process stands still meanwhile "
            "(worker/collector.py).",
            ["process", "generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=r,
        )
        self.scoring_restarts = Counter(
            "modstream_scoring_process_restarts",
            "Scoring processes (MODSTREAM_SCORING=process) that died and were started "
            "again; the batch in hand was scored again (each a scoring_process_died error "
            "line).",
            registry=r,
        )
        self.label_changes = Counter(
            "modstream_model_label_changes",
            "Labels a swapped-in model added or removed against the one it replaced, one per "
            "label (each swap also logs model_labels_changed).",
            ["change"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "modstream_policy_reloads",
            "Threshold policy file changes by result: ok (applied between two batches), "
            "failed (the thresholds in effect kept).",
            ["result"],
            registry=r,
        )
        self.category_threshold = Gauge(
            "modstream_category_threshold",
            "The threshold in effect per category: the checkpoint's, the store's policy "
            "file's or MODSTREAM_THRESHOLDS' (logged as thresholds_changed).",
            ["category"],
            registry=r,
        )
        self._categories: frozenset[str] = frozenset()
        self._categories_lock = threading.Lock()
        for outcome in OUTCOMES:
            self.messages.labels(outcome=outcome)
        for result in RELOAD_RESULTS:
            self.model_reloads.labels(result=result)
            self.policy_reloads.labels(result=result)
        for change in LABEL_CHANGES:
            self.label_changes.labels(change=change)
        # Series that dashboards and alerts rate() exist from the first scrape on, at 0.
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for kind in ErrorKind:
            self.dead_letters.labels(reason=kind.value)
        for result in COMMIT_RESULTS:
            self.commits.labels(result=result)
        for generation in GC_GENERATIONS:
            self.gc_pauses.labels(process="worker", generation=generation)

    def set_categories(self, categories: Iterable[str]) -> tuple[str, ...]:
        """The serving model's labels, when it starts serving: creates their per-category
        series (at 0) and removes those of labels it no longer has; returns those.

        A batch the previous model scored may still be counted after the swap (on the
        publishing thread): `count_result` skips the removed categories, so their series
        stay removed (under one lock, so none is re-created between the two)."""
        wanted = frozenset(categories)
        with self._categories_lock:
            gone = tuple(sorted(self._categories - wanted))
            for category in gone:
                for metric in (self.flagged, self.scores, self.category_threshold):
                    with contextlib.suppress(KeyError):  # never created (no threshold yet)
                        metric.remove(category)
            for category in wanted:
                self.flagged.labels(category=category)
                self.scores.labels(category=category)
            self._categories = wanted
        return gone

    def init_categories(self, categories: Iterable[str]) -> None:
        """Creates the per-category series of a set of labels (tests, rule checks)."""
        self.set_categories(categories)

    def count_result(self, scores: Mapping[str, float], flagged: Mapping[str, bool]) -> None:
        """One result's scores and flags, for the categories serving now."""
        with self._categories_lock:
            for category, score in scores.items():
                if category not in self._categories:
                    continue
                self.scores.labels(category=category).observe(score)
                if flagged.get(category):
                    self.flagged.labels(category=category).inc()

    def set_thresholds(self, thresholds: Mapping[str, float]) -> None:
        """The thresholds in effect, per category (after `set_categories`)."""
        with self._categories_lock:
            for category, value in thresholds.items():
                if category in self._categories:
                    self.category_threshold.labels(category=category).set(value)


def catalogue_markdown() -> str:
    """The README's metrics catalogue, generated so the docs cannot drift from the code."""
    metrics = WorkerMetrics()
    rows = ["| name | type | labels | buckets | meaning |", "|---|---|---|---|---|"]
    for attribute in vars(metrics).values():
        if not isinstance(attribute, Counter | Gauge | Histogram | Info):
            continue
        name = attribute._name
        kind = type(attribute).__name__.lower()
        exposed = {
            "counter": f"{name}_total",
            "info": f"{name}_info",
        }.get(kind, name)
        labels = ", ".join(attribute._labelnames) or "—"
        buckets = "—"
        if isinstance(attribute, Histogram):
            bounds = getattr(attribute, "_kwargs", {}).get("buckets") or _bucket_bounds(attribute)
            buckets = " ".join(f"{b:g}" for b in bounds if b != float("inf"))
        rows.append(f"| `{exposed}` | {kind} | {labels} | {buckets} | {attribute._documentation} |")
    return "\n".join(rows) + "\n"


def _bucket_bounds(histogram: Histogram) -> list[float]:
    return list(getattr(histogram, "_upper_bounds", []))


if __name__ == "__main__":
    import sys

    sys.stdout.write(catalogue_markdown())
