"""Observability of a running worker on the real broker: health endpoints, consumer lag,
the exposition (promtool), JSON logs, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer
from kafka.structs import TopicPartition

from tests.helpers import (
    REPO_ROOT,
    TopicReader,
    WorkerProcess,
    free_port,
    metric_value,
    produce,
    request_bytes,
    start_worker,
    wait_for,
)
from tests.monitoring.promql import exported_metric_names, metric_names

pytestmark = pytest.mark.integration

MONITORING = REPO_ROOT / "deploy" / "monitoring"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make monitoring-tools` (Debian: prometheus)")
    return path


def test_running_worker_serves_health_lag_metrics_and_json_logs(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=2)
    good = [(f"k{n}".encode(), request_bytes(f"m-{n}", f"hello number {n}")) for n in range(200)]
    bad = [(b"bad-1", b"{nope"), (b"bad-2", b'{"id": "x", "text": ""}'), (b"bad-3", None)]
    worker = start_worker(
        kafka_bootstrap,
        topics,
        tiny_checkpoint,
        tmp_path,
        lag_interval_s="0.5",
        log_summary_interval_s="1",
    )
    try:
        status, body = worker.get("/readyz")
        assert status == 200, body
        assert json.loads(body)["reasons"] == []
        # A group joined before the new topic's metadata arrived is first assigned nothing
        # (ready, idle-assigned); the next rebalance hands it both partitions.
        ready = wait_for(
            lambda: (r := json.loads(worker.get("/readyz")[1]))["assigned_partitions"] == 2 and r,
            60,
            "both partitions assigned",
            step_s=0.2,
        )
        assert ready["ready"] is True and ready["group_joined"] is True
        assert ready["model_version"]
        status, body = worker.get("/livez")
        assert status == 200 and json.loads(body)["live"] is True

        produce(kafka_bootstrap, topics["input"], good + bad)
        TopicReader(kafka_bootstrap, topics["output"]).read_until(len(good))

        def settled() -> str | None:
            exposition = worker.get("/metrics")[1]
            done = (
                metric_value(exposition, "modstream_messages_total", outcome="ok") == len(good)
                and metric_value(exposition, "modstream_messages_total", outcome="invalid")
                == len(bad)
                and all(
                    metric_value(
                        exposition,
                        "modstream_consumer_lag_records",
                        topic=topics["input"],
                        partition=str(p),
                    )
                    == 0
                    for p in (0, 1)
                )
                # Counted before their commit, out of flight after it.
                and metric_value(exposition, "modstream_in_flight_messages") == 0
                # Confirmed by the broker (asynchronously when pipelined).
                and (metric_value(exposition, "modstream_commits_total", result="ok") or 0) >= 1
            )
            return exposition if done else None

        exposition = wait_for(settled, 60, "all messages counted and lag back to 0", step_s=0.2)
        assert metric_value(exposition, "modstream_dead_letters_total", reason="invalid_json") == 1
        assert metric_value(exposition, "modstream_dead_letters_total", reason="null_value") == 1
        assert metric_value(exposition, "modstream_assigned_partitions") == 2
        queued = metric_value(exposition, "modstream_stage_latency_seconds_count", stage="queue")
        assert queued == len(good) + len(bad)
        check = subprocess.run(
            [tool("promtool"), "check", "metrics"],
            input=exposition,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        wait_for(
            lambda: sum(s["messages"] for s in log_lines(worker, "summary")) == len(good + bad),
            30,
            "summary log lines covering every processed message",
            step_s=0.2,
        )
    finally:
        assert worker.stop() == 0, worker.logs()

    # Every line the process wrote (stdout and stderr) is one JSON object.
    lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line]
    for line in lines:
        assert {"event", "level", "timestamp"} <= set(line), line
        assert line["level"] in {"info", "warning", "error"}, "no debug lines at level info"
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_event.setdefault(line["event"], []).append(line)
    (started,) = by_event["worker_started"]
    assert started["topic"] == topics["input"] and started["model_version"]
    letters = by_event["dead_lettered"]
    assert len(letters) == len(bad)
    for letter in letters:
        assert letter["level"] == "warning"
        assert letter["topic"] == topics["input"]
        assert letter["partition"] in (0, 1) and letter["offset"] >= 0
        assert letter["model_version"] == started["model_version"]
    summaries = by_event["summary"]
    assert sum(s["messages"] for s in summaries) == len(good) + len(bad)
    for summary in summaries:
        assert {"messages_per_s", "lag", "lag_by_partition", "ok", "invalid"} <= set(summary)
        assert summary["model_version"] == started["model_version"]
    assert "batch_processed" not in by_event


def log_lines(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines of one event so far."""
    lines = worker.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if f'"event": "{event}"' in line]


def test_consumer_lag_is_end_offset_minus_position(
    kafka_bootstrap: str, make_topics: Callable[..., dict[str, str]]
) -> None:
    """A worker that polled 1 of 50 records reports a lag of 49 for that partition."""
    from tests.unit.test_model_engine import make_engine
    from worker.app import Worker
    from worker.settings import WorkerSettings

    topics = make_topics(partitions=1)
    settings = WorkerSettings(
        kafka_bootstrap=kafka_bootstrap,
        input_topic=topics["input"],
        output_topic=topics["output"],
        dead_letter_topic=topics["dead_letter"],
        group_id=f"g-lag-{uuid.uuid4().hex[:8]}",
        device="cpu",
    )
    worker = Worker(settings, make_engine())
    worker.connect()
    source, lag = worker.kafka.source, worker.kafka.lag
    tp = TopicPartition(topics["input"], 0)
    try:
        wait_for(
            lambda: source.poll(0.2, 1) == [] and tp in source.assignment(),
            60,
            "the partition assigned",
        )
        produce(
            kafka_bootstrap,
            topics["input"],
            [(None, request_bytes(f"l{n}", "x")) for n in range(50)],
        )
        polled = wait_for(lambda: source.poll(0.2, 1), 60, "one record polled")
        assert len(polled) == 1
        wait_for(lambda: lag.refresh().get(tp) == 49, 30, "lag of 49")
        value = worker.metrics.registry.get_sample_value(
            "modstream_consumer_lag_records", {"topic": tp.topic, "partition": "0"}
        )
        assert value == 49
    finally:
        worker.close()


# -- a real Prometheus -------------------------------------------------------------------


class Prometheus:
    """`prometheus` on a free loopback port with its own config and a tmp TSDB."""

    def __init__(self, tmp_path: Path, worker_port: int) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(MONITORING / "alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": "modstream-worker",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                }
            ],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self._log = (tmp_path / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = tmp_path / "prometheus.log"

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant query, or None while it has no finite answer."""
        result = self.query(expr)
        if len(result) != 1:
            return None
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.logs()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/-/ready", timeout=2
            ) as response:
                return response.status == 200
        except OSError:
            return False

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture
def steady_producer(kafka_bootstrap: str) -> Iterator[Callable[[str, float, float], list[int]]]:
    """start(topic, rate, max_seconds): sends requests at `rate`/s in a thread until the
    test ends or `max_seconds` pass; returns a list whose length is the count sent so far."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(topic: str, rate: float, max_seconds: float) -> list[int]:
        sent: list[int] = []

        def run() -> None:
            producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
            began = time.monotonic()
            try:
                while not stop.is_set() and time.monotonic() - began < max_seconds:
                    due = int((time.monotonic() - began) * rate) + 1
                    while len(sent) < due:
                        n = len(sent)
                        producer.send(topic, value=request_bytes(f"s-{n}", f"steady text {n}"))
                        sent.append(n)
                    producer.flush(timeout=30)
                    stop.wait(0.05)  # pacing of the load generator, not synchronisation
            finally:
                producer.close()

        thread = threading.Thread(target=run, name="steady-producer", daemon=True)
        thread.start()
        threads.append(thread)
        return sent

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=60)


def test_prometheus_scrapes_the_worker_and_answers_rate_and_p99(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
    steady_producer: Callable[[str, float, float], list[int]],
) -> None:
    rate = 40.0
    topics = make_topics(partitions=2)
    worker = start_worker(kafka_bootstrap, topics, tiny_checkpoint, tmp_path, lag_interval_s="1")
    prometheus = Prometheus(tmp_path, worker.metrics_port)
    try:
        wait_for(prometheus.ready, 60, "prometheus ready", step_s=0.2)
        wait_for(
            lambda: prometheus.scalar('up{job="modstream-worker"}') == 1,
            60,
            "prometheus scraping the worker",
            step_s=0.2,
        )
        steady_producer(topics["input"], rate, 180.0)
        flowing_since: float = wait_for(
            lambda: (
                worker.metric("modstream_messages_total", outcome="ok") > 0 and time.monotonic()
            ),
            60,
            "the first results",
            step_s=0.2,
        )

        p99_expr = (
            "histogram_quantile(0.99, "
            "sum(rate(modstream_end_to_end_latency_seconds_bucket[30s])) by (le))"
        )
        rate_expr = "sum(rate(modstream_messages_total[30s]))"

        def answered() -> tuple[float, float] | None:
            # rate() over [30s] reads low while the window still holds the time before
            # the stream began: ask once results have flowed for a whole window. A loaded
            # machine may miss some of the 1 s scrapes; rate() extrapolates over the rest,
            # so a third of them is plenty.
            if time.monotonic() - flowing_since < 31:
                return None
            samples = prometheus.scalar(
                'count_over_time(modstream_messages_total{outcome="ok"}[30s])'
            )
            p99, measured = prometheus.scalar(p99_expr), prometheus.scalar(rate_expr)
            if samples is None or samples < 10 or p99 is None or measured is None:
                return None
            return (p99, measured) if p99 > 0 and measured > 0 else None

        p99, measured = wait_for(answered, 120, "p99 and rate from prometheus", step_s=0.5)
        print(f"prometheus: p99 {p99:.4f}s, rate {measured:.1f}/s (produced {rate:g}/s)")
        assert 0 < p99 < 10.0, f"p99 end-to-end latency {p99}s"
        assert rate / 2 <= measured <= rate * 2, f"measured {measured}/s, produced {rate}/s"

        lag = prometheus.query('modstream_consumer_lag_records{job="modstream-worker"}')
        assert sorted(s["metric"]["partition"] for s in lag) == ["0", "1"]

        # The shipped alert rules load and evaluate against real data without errors,
        # and none fires for a healthy worker.
        def rules_evaluated() -> list[dict[str, Any]] | None:
            rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
            # Never evaluated reads "0001-01-01T00:00:00Z"; RFC 3339 strings sort by time.
            evaluated = rules and all(r["lastEvaluation"] > "2000" for r in rules)
            return rules if evaluated else None

        rules = wait_for(rules_evaluated, 30, "alert rules evaluated", step_s=0.5)
        assert all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
        ]
        firing = [a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]]
        assert "ModstreamWorkerDown" not in firing and "ModstreamStalled" not in firing

        # Every dashboard query is valid PromQL to this Prometheus.
        dashboard = json.loads(
            (MONITORING / "grafana" / "dashboards" / "modstream.json").read_text("utf-8")
        )
        substitutions = {
            "$__rate_interval": "30s",
            '"$job"': '".*"',
            '"$instance"': '".*"',
            '"$category"': '"insult"',
        }
        exported = exported_metric_names()
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in substitutions.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, expr
                prometheus.query(expr)  # raises on a PromQL error
                assert metric_names(expr) <= exported | {"up"}
    finally:
        prometheus.stop()
        assert worker.stop() == 0, worker.logs()
