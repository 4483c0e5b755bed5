"""Thresholds without retraining (model/threshold_overrides.py): the environment
variable's syntax, policy files, and which one applies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.errors import ExitCode
from model.threshold_overrides import (
    CHECKPOINT_POLICY,
    MAX_OVERRIDES_CHARS,
    MAX_POLICY_BYTES,
    THRESHOLDS_ENV,
    PolicyFileError,
    ThresholdOverrideError,
    UnknownOverrideLabelError,
    check_override_labels,
    effective_thresholds,
    load_policy_file,
    parse_policy_file,
    parse_threshold_overrides,
    policy_version,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("  ", {}),
        ("insult=0.8", {"insult": 0.8}),
        ("insult=0.8,spam=0.95", {"insult": 0.8, "spam": 0.95}),
        (" insult = 0.8 , spam=1 ,", {"insult": 0.8, "spam": 1.0}),
        ("a=.5,b=8e-1,c=1.0,d=1e0", {"a": 0.5, "b": 0.8, "c": 1.0, "d": 1.0}),
        (",,a=0.000001,,", {"a": 1e-6}),
    ],
)
def test_valid_overrides(text: str, expected: dict[str, float]) -> None:
    assert parse_threshold_overrides(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("insult", "not LABEL=THRESHOLD"),
        ("insult:0.8", "not LABEL=THRESHOLD"),
        ("=0.8", "not a label name"),
        ("insult=", "not a number"),
        ("insult=0,8", "insult: 0 must be in (0, 1]"),  # a decimal comma splits the pair
        ("insult=1,5", "'5' is not LABEL=THRESHOLD"),
        ("insult=0.8=0.9", "not a number"),
        ("insult=0", "must be in (0, 1]"),
        ("insult=1.01", "must be in (0, 1]"),
        ("insult=1e999", "must be in (0, 1]"),
        ("insult=-0.5", "not a number"),
        ("insult=nan", "not a number"),
        ("insult=inf", "not a number"),
        ("insult=0x1p-1", "not a number"),
        ("insult=0.5_0", "not a number"),
        ("insult=½", "not a number"),
        ("insult=0.8,insult=0.9", "given twice"),
        ("__proto__=0.5", "not a label name"),
        ("with space=0.5", "not a label name"),
        ("Insult=0.5", "not a label name"),
    ],
)
def test_invalid_overrides_name_the_pair(text: str, problem: str) -> None:
    with pytest.raises(ThresholdOverrideError) as caught:
        parse_threshold_overrides(text)
    assert str(caught.value).startswith(f"{THRESHOLDS_ENV}: ")
    assert problem in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


def test_overrides_are_bounded() -> None:
    longest = ",".join(f"l{i:02d}_{'x' * 28}=0.123456789" for i in range(64))
    assert len(longest) <= MAX_OVERRIDES_CHARS
    assert len(parse_threshold_overrides(longest)) == 64
    many = ",".join(f"l{i}=0.5" for i in range(65))
    with pytest.raises(ThresholdOverrideError, match="65 labels, at most 64"):
        parse_threshold_overrides(many)
    with pytest.raises(ThresholdOverrideError, match="over 8192 characters"):
        parse_threshold_overrides("a=0.5," * 10_000)


def test_unknown_labels_against_the_checkpoint() -> None:
    check_override_labels({"insult": 0.8}, ("insult", "spam"), THRESHOLDS_ENV)
    with pytest.raises(UnknownOverrideLabelError, match="threat, zz not among"):
        check_override_labels({"zz": 0.8, "threat": 0.5}, ("insult", "spam"), THRESHOLDS_ENV)


def policy_bytes(**fields: object) -> bytes:
    body: dict[str, object] = {"version": "strict-2024-06", "thresholds": {"insult": 0.8}}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_valid_policy_file() -> None:
    policy = parse_policy_file(policy_bytes(description="stricter on insults"), "p.json")
    assert policy.version == "strict-2024-06"
    assert policy.thresholds == {"insult": 0.8}
    assert parse_policy_file(policy_bytes(thresholds={}), "p.json").thresholds == {}
    bom = b"\xef\xbb\xbf" + policy_bytes()
    assert parse_policy_file(bom, "p.json").version == "strict-2024-06"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"version": "v1", "thresholds": {"insult": NaN}}', "NaN is not a JSON number"),
        (b'{"version": "v1", "thresholds": {"insult": Infinity}}', "Infinity"),
        (b'{"version": "v1", "version": "v2", "thresholds": {}}', "appears twice"),
        (b'{"version": "v1", "thresholds": {"insult": 0.8}', "not JSON"),
        (b"[" * 60_000, "nested too deeply"),
        (b'{"version": "v1", "thresholds": {"insult": 1e400}}', "thresholds.insult"),
        (b'{"version": "v1", "thresholds": {"insult": "0.8"}}', "thresholds.insult"),
        (b'{"version": "v1", "thresholds": {"insult": true}}', "thresholds.insult"),
        (b'{"version": "v1", "thresholds": {"insult": 0}}', "thresholds.insult"),
        (b'{"version": "v1", "thresholds": {"insult": 1.5}}', "thresholds.insult"),
        (b'{"version": "v1", "thresholds": {"__proto__": 0.5}}', "'__proto__'"),
        (b'{"version": "v1", "thresholds": {"a b": 0.5}}', "'a b'"),
        (b'{"version": "v1", "thresholds": [0.5]}', "thresholds"),
        (b'{"version": "v1"}', "thresholds: Field required"),
        (b'{"thresholds": {}}', "version: Field required"),
        (b'{"version": "", "thresholds": {}}', "version"),
        (b'{"version": "../../etc", "thresholds": {}}', "version"),
        (b'{"version": "checkpoint", "thresholds": {}}', "reserved"),
        (b'{"version": "env-1234", "thresholds": {}}', "reserved"),
        (b'{"version": "v1", "thresholds": {}, "extra": 1}', "extra"),
        (b'{"version": 1, "thresholds": {}}', "version"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"null", "(top level)"),
    ],
)
def test_invalid_policy_files_name_the_field(data: bytes, problem: str) -> None:
    with pytest.raises(PolicyFileError) as caught:
        parse_policy_file(data, "store/policy.json")
    assert str(caught.value).startswith("store/policy.json: ")
    assert problem in str(caught.value)
    assert caught.value.exit_code == ExitCode.CHECKPOINT


def test_policy_file_bounds(tmp_path: Path) -> None:
    many = {f"l{i}": 0.5 for i in range(1000)}
    with pytest.raises(PolicyFileError, match="1000 labels, at most 64"):
        parse_policy_file(policy_bytes(thresholds=many), "p.json")
    path = tmp_path / "policy.json"
    path.write_bytes(policy_bytes(description=" " * 100) + b" " * MAX_POLICY_BYTES)
    with pytest.raises(PolicyFileError, match="over 65536 bytes"):
        load_policy_file(path)
    path.write_bytes(policy_bytes())
    assert load_policy_file(path).thresholds == {"insult": 0.8}
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policy_file(tmp_path / "absent.json")


def test_precedence_environment_then_policy_then_checkpoint() -> None:
    checkpoint = {"insult": 0.5, "spam": 0.6, "threat": 0.7}
    labels = ("insult", "spam", "threat")
    policy = parse_policy_file(
        policy_bytes(version="p1", thresholds={"insult": 0.8, "spam": 0.9}), "p"
    )
    env = {"spam": 0.95}
    both = effective_thresholds(checkpoint, labels, policy, env)
    assert both.thresholds == {"insult": 0.8, "spam": 0.95, "threat": 0.7}
    assert both.sources == {"insult": "policy p1", "spam": THRESHOLDS_ENV, "threat": "checkpoint"}
    assert both.policy_version.startswith("p1+env-") and len(both.policy_version) == 3 + 4 + 8
    plain = effective_thresholds(checkpoint, labels)
    assert (plain.thresholds, plain.policy_version) == (checkpoint, CHECKPOINT_POLICY)
    assert effective_thresholds(checkpoint, labels, policy).policy_version == "p1"
    env_only = effective_thresholds(checkpoint, labels, None, env).policy_version
    assert env_only.startswith("env-")
    assert policy_version(None, {"spam": 0.9}) != env_only  # another pin, another version
    assert policy_version(None, {"spam": 0.95}) == env_only  # deterministic


def test_effective_thresholds_refuse_labels_the_checkpoint_lacks() -> None:
    stale = parse_policy_file(policy_bytes(thresholds={"harassment": 0.8}), "p")
    with pytest.raises(UnknownOverrideLabelError, match="policy strict-2024-06: harassment"):
        effective_thresholds({"insult": 0.5}, ("insult",), stale)
    with pytest.raises(UnknownOverrideLabelError, match=THRESHOLDS_ENV):
        effective_thresholds({"insult": 0.5}, ("insult",), None, {"spam": 0.9})
