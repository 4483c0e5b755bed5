"""The Grafana dashboard: well-formed, covers what an operator needs, and queries only
metrics the worker really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from model.data import LABELS
from tests.monitoring.promql import (
    MONITORING,
    PROMETHEUS_SERIES,
    exported_metric_names,
    metric_names,
    read,
    variable_query_metric_names,
)
from worker.metrics import WorkerMetrics

DASHBOARD = "grafana/dashboards/modstream.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(read(DASHBOARD))
    return loaded


def panels(items: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"] if items is None else items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in panels()
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


@pytest.mark.parametrize("title, expr", queries())
def test_panel_queries_read_only_exported_metrics(title: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{title}: no metric in {expr!r}"
    unknown = names - exported_metric_names() - PROMETHEUS_SERIES
    assert not unknown, f"panel {title!r} queries metrics the worker does not export: {unknown}"


def test_variable_queries_read_only_exported_metrics() -> None:
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        names = variable_query_metric_names(query)
        assert names, f"${variable['name']}: no metric in {query!r}"
        assert names <= exported_metric_names(), f"${variable['name']}: {names}"


def test_dashboard_covers_the_operator_questions() -> None:
    read_metrics = set().union(*(metric_names(expr) for _, expr in queries()))
    for needed in (
        "modstream_messages_total",  # throughput
        "modstream_end_to_end_latency_seconds_bucket",  # latency percentiles
        "modstream_stage_latency_seconds_bucket",  # where the time goes
        "modstream_consumer_lag_records",  # lag
        "modstream_batch_size_bucket",  # batch size
        "modstream_padding_efficiency_ratio_sum",  # padding
        "modstream_flagged_total",  # flagged rate per category
        "modstream_category_score_bucket",  # score distribution
        "modstream_dead_letters_total",  # dead letters
        "modstream_model_info",  # model version
    ):
        assert needed in read_metrics, f"no panel reads {needed}"


_CATEGORY_MATCHER = re.compile(r'\bcategory\s*(=~|!~|!=|=)\s*"([^"]*)"')
_CATEGORY_VARIABLE = re.compile(r"\$(?:category|\{category(?::\w+)?\})")


def per_category_metric_names() -> set[str]:
    """The exported names (with _bucket, _total, …) of the metrics labelled by category."""
    metrics = WorkerMetrics()
    bases = {
        attribute._name
        for attribute in vars(metrics).values()
        if "category" in getattr(attribute, "_labelnames", ())
    }
    return {name for name in exported_metric_names() if any(name.startswith(b) for b in bases)}


def test_no_panel_hard_codes_a_category() -> None:
    """Categories are whatever the serving model's labels are (a retrain on other data,
    a taxonomy change): every per-category query selects `$category`, which lists the
    labels the workers export, and no panel names a category of its own."""
    per_category = per_category_metric_names()
    assert {"modstream_flagged_total", "modstream_category_score_bucket"} <= per_category
    for title, expr in queries():
        for op, value in _CATEGORY_MATCHER.findall(expr):
            assert _CATEGORY_VARIABLE.fullmatch(value), f"{title}: category{op}{value!r}"
        if metric_names(expr) & per_category:
            assert _CATEGORY_MATCHER.search(expr), f"{title}: {expr} is not filtered by $category"
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "category"]
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    assert variable["type"] == "query" and not variable.get("options")
    assert re.fullmatch(r"label_values\((modstream_\w+)\{[^}]*\},\s*category\)", query)
    assert variable_query_metric_names(query) <= per_category
    # Nor in a title, a legend or a description: the bundled labels appear nowhere.
    text = read(DASHBOARD).lower()
    for label in LABELS:
        assert not re.search(rf"\b{label}\b", text), f"the dashboard names {label!r}"


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    datasources = yaml.safe_load(read("grafana/provisioning/datasources/prometheus.yaml"))
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    providers = yaml.safe_load(read("grafana/provisioning/dashboards/modstream.yaml"))
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    assert (MONITORING / DASHBOARD).is_file()
