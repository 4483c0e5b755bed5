"""The label spec (model/label_spec.py): TOML, per-label descriptions and policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.errors import ExitCode
from model.label_spec import (
    MAX_SPEC_BYTES,
    LabelSpecError,
    ThresholdPolicy,
    load_label_spec,
    parse_label_spec,
)

EXAMPLE = """
# a comment, as teams write them
[labels.threat]
description = "Threats of violence"
threshold = { target_precision = 0.9 }

[labels.insult]
threshold = "max_f1"

[labels.scam]
threshold = { fixed = 0.7 }

[labels.hate]
"""


def test_example_spec_keeps_order_descriptions_and_policies() -> None:
    spec = parse_label_spec(EXAMPLE)
    assert spec.names == ("threat", "insult", "scam", "hate")
    assert spec.labels["threat"].description == "Threats of violence"
    policies = spec.policies()
    assert [p.kind for p in policies.values()] == [
        "target_precision",
        "max_f1",
        "fixed",
        "max_f1",
    ]
    assert policies["threat"].target_precision == 0.9
    assert policies["scam"].fixed == 0.7
    assert [p.describe() for p in policies.values()] == [
        "target_precision 0.9",
        "max_f1",
        "fixed 0.7",
        "max_f1",
    ]


def test_policy_bounds_are_inclusive_at_one() -> None:
    assert parse_label_spec("[labels.a]\nthreshold = { fixed = 1 }").policies()["a"].fixed == 1.0
    spec = parse_label_spec("[labels.a]\nthreshold = { target_precision = 1.0 }")
    assert spec.policies()["a"].target_precision == 1.0
    assert parse_label_spec("[labels.a]\nthreshold = { max_f1 = true }").policies()["a"].max_f1


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("[labels.x]\nthreshold = { target_precision = nan }", "threshold.target_precision"),
        ("[labels.x]\nthreshold = { fixed = inf }", "threshold.fixed"),
        ("[labels.x]\nthreshold = { fixed = 0 }", "threshold.fixed"),
        ("[labels.x]\nthreshold = { fixed = -0.5 }", "threshold.fixed"),
        ("[labels.x]\nthreshold = { fixed = 1.0000001 }", "threshold.fixed"),
        ("[labels.x]\nthreshold = { fixed = true }", "threshold.fixed"),
        ('[labels.x]\nthreshold = { fixed = "0.5" }', "threshold.fixed"),
        ("[labels.x]\nthreshold = { fixed = 0.5, target_precision = 0.9 }", "x.threshold"),
        ("[labels.x]\nthreshold = {}", "x.threshold"),
        ('[labels.x]\nthreshold = "maxf1"', "x.threshold"),
        ("[labels.x]\nthreshold = { max_f1 = false }", "threshold.max_f1"),
        ("[labels.x]\ncolour = 'red'", "x.colour"),
        ("[labels.x]\ndescription = 5", "x.description"),
        (f"[labels.x]\ndescription = '{'d' * 1001}'", "x.description"),
        ("[labels.__proto__]", "labels: '__proto__'"),
        ('[labels."with space"]', "labels: 'with space'"),
        ("[labels.Spam]", "labels: 'Spam'"),
        ("[labels.text]", "reserved"),
        ("labels = {}", "labels"),
        ("labels = [1]", "labels"),
        ("version = 1\n[labels.x]", "version"),
        ("", "labels: Field required"),
    ],
)
def test_invalid_specs_name_the_field(body: str, where: str) -> None:
    with pytest.raises(LabelSpecError) as caught:
        parse_label_spec(body, "labels.toml")
    assert str(caught.value).startswith("labels.toml: ")
    assert where in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


def test_ten_thousand_labels_are_refused_before_validating_each() -> None:
    body = "".join(f"[labels.l{i}]\n" for i in range(10_000))
    with pytest.raises(LabelSpecError, match="10000 labels, at most 64"):
        parse_label_spec(body)
    ok = "".join(f"[labels.l{i}]\n" for i in range(64))
    assert len(parse_label_spec(ok).names) == 64


def test_toml_syntax_error_names_line() -> None:
    with pytest.raises(LabelSpecError, match=r"not TOML: .*line 2"):
        parse_label_spec("[labels.x]\nthreshold = = 1", "labels.toml")
    with pytest.raises(LabelSpecError, match="not TOML"):
        parse_label_spec("[labels.x]\n[labels.x]")  # a table defined twice


def test_load_spec_files(tmp_path: Path) -> None:
    path = tmp_path / "labels.toml"
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.replace("\n", "\r\n").encode())
    assert load_label_spec(path).names == ("threat", "insult", "scam", "hate")
    path.write_bytes(b"#" * (MAX_SPEC_BYTES + 1))
    with pytest.raises(LabelSpecError, match="over"):
        load_label_spec(path)
    path.write_bytes(b"[labels.caf\xe9]")
    with pytest.raises(LabelSpecError, match="not UTF-8"):
        load_label_spec(path)
    with pytest.raises(LabelSpecError, match="cannot read"):
        load_label_spec(tmp_path / "missing.toml")


def test_policy_object_rules() -> None:
    assert ThresholdPolicy.best_f1().kind == "max_f1"
    assert ThresholdPolicy.model_validate("max_f1") == ThresholdPolicy.best_f1()
    with pytest.raises(ValueError, match="exactly one"):
        ThresholdPolicy()
