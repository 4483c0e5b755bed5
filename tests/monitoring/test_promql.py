"""The metric-name extraction the dashboard and alert checks rely on."""

from __future__ import annotations

from tests.monitoring.promql import (
    exported_metric_names,
    metric_names,
    variable_query_metric_names,
)


def test_metric_names_skip_functions_labels_durations_and_strings() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(modstream_a_bucket{job=~"$job", '
        'le!="+Inf"}[$__rate_interval] offset 5m))) / ignoring(category) group_left '
        "sum without (instance) (modstream_b_total) > bool 1e3 and on (job) "
        'deriv(sum(modstream_c)[5m:30s]) unless label_replace(up, "x", "$1", "job", "(.*)")'
    )
    assert metric_names(expr) == {"modstream_a_bucket", "modstream_b_total", "modstream_c", "up"}


def test_variable_queries() -> None:
    assert variable_query_metric_names('label_values(modstream_x{job=~"$job"}, instance)') == {
        "modstream_x"
    }
    assert variable_query_metric_names("label_values(job)") == set()
    assert variable_query_metric_names("query_result(sum(modstream_y))") == {"modstream_y"}


def test_exported_names_carry_the_exposition_suffixes() -> None:
    names = exported_metric_names()
    assert {
        "modstream_messages_total",
        "modstream_end_to_end_latency_seconds_bucket",
        "modstream_end_to_end_latency_seconds_sum",
        "modstream_end_to_end_latency_seconds_count",
        "modstream_model_info",
        "modstream_build_info",
        "modstream_consumer_lag_records",
        "modstream_kafka_errors_total",
        "modstream_model_reloads_total",
    } <= names
    assert "modstream_messages" not in names
