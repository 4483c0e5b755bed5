"""Which metric names a PromQL expression (or a Grafana variable query) reads, and which
names a worker really exports, so dashboards and alerts can be checked against the code."""

from __future__ import annotations

import functools
import re
import shutil

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from tests.helpers import REPO_ROOT
from worker.metrics import WorkerMetrics

MONITORING = REPO_ROOT / "deploy" / "monitoring"

#: Series Prometheus makes itself, not the worker.
PROMETHEUS_SERIES = frozenset({"up"})

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'" r"|`[^`]*`")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*?),)?\s*\w+\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((.*)\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (in matchers or grouping clauses), durations, numbers or strings."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("1m", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def variable_query_metric_names(query: str) -> set[str]:
    """Metric names in a Grafana Prometheus variable query (label_values, query_result)."""
    if match := _LABEL_VALUES.match(query):
        return metric_names(match.group(1) or "")
    if match := _QUERY_RESULT.match(query):
        return metric_names(match.group(1))
    return set()


@functools.cache
def exported_metric_names() -> frozenset[str]:
    """Every sample name in the exposition of a live WorkerMetrics, each labelled metric
    given one child so that its series (with _bucket/_sum/_count/_total/_info) appear."""
    metrics = WorkerMetrics()
    for attribute in vars(metrics).values():
        if not isinstance(attribute, MetricWrapperBase):
            continue
        names = attribute._labelnames
        if names:
            attribute.labels(**dict.fromkeys(names, "x"))
        elif hasattr(attribute, "info"):
            attribute.info({"version": "x"})
    exposition = generate_latest(metrics.registry).decode()
    return frozenset(
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    )


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `make monitoring-tools` (Debian: prometheus)")
    return path


def read(relative: str) -> str:
    return (MONITORING / relative).read_text(encoding="utf-8")
