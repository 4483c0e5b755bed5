"""`modstream retrain --data … --label-spec …`: a taxonomy the bundled corpora lack,
trained end to end through the command (tiny model), and every bad file refused with
exit 2 before anything is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model.checkpoint import load_checkpoint
from model.data import DataNotFoundError, find_data_files, load_splits
from model.errors import ExitCode
from model.report import JSON_FILE, MARKDOWN_FILE, REPORT_DIR
from model.store import CheckpointStore
from tests.helpers import make_checkpoint
from tests.user_files import (
    LABEL_SPEC,
    USER_LABELS,
    support,
    user_rows,
    write_csv,
    write_jsonl,
)
from worker import data_flags
from worker.cli import main
from worker.feedback import FeedbackRead, FeedbackRecord, parse_feedback

# Learns the generated file in about 5 s (measured: validation AUC 0.94 harassment,
# 0.96 scam after 3 epochs); no GloVe, raw weights (a few steps are too few for EMA).
TINY = [
    "--epochs", "3", "--lr", "0.01", "--embed-dim", "16", "--hidden-dim", "16",
    "--max-vocab", "2000", "--device", "cpu", "--ema-decay", "0", "--no-glove",
    "--glove-vocab", "0", "--min-freq", "1", "--subword-buckets", "512", "--subword-dim", "8",
]  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out
    summary: dict[str, Any] = json.loads(lines[0])
    assert summary["exit_code"] == code
    return code, summary, captured.err


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time."""
    if not root.exists():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    """A store serving a small insult/spam model (the gate holds on new labels)."""
    store = CheckpointStore(tmp_path / "store")
    make_checkpoint(tmp_path / "serving", 1)
    store.promote(store.add(tmp_path / "serving"))
    return store


def test_three_labels_of_its_own_alone_with_a_label_spec(
    tmp_path: Path, store: CheckpointStore, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = user_rows()
    data = write_jsonl(tmp_path / "moderation.jsonl", rows)
    spec = tmp_path / "labels.toml"
    spec.write_text(LABEL_SPEC)
    code, summary, err = run(
        capsys, "retrain", "--store", str(store.root), "--force", "--data", str(data),
        "--no-bundled", "--label-spec", str(spec), *TINY,
    )  # fmt: skip
    assert code == ExitCode.OK, err
    assert summary["status"] == "promoted" and "forced despite the gate" in summary["reason"]
    loaded = load_checkpoint(store.root)
    assert loaded.version == summary["version"]
    assert loaded.labels == USER_LABELS  # the spec's order
    assert loaded.thresholds["self_harm"] == 0.35, "a fixed policy is its threshold, exactly"
    details = loaded.metrics["label_details"]
    assert details["harassment"]["threshold_policy"] == "max_f1"
    assert details["scam"]["threshold_policy"] == {"target_precision": 0.9}
    assert details["self_harm"]["threshold_policy"] == {"fixed": 0.35}
    assert details["scam"]["description"] == "Advance-fee, phishing and payment fraud"
    assert loaded.metrics["threshold_rules"]["self_harm"] == "fixed 0.35"
    for label in USER_LABELS:
        for split in ("validation", "test"):
            known, positives = support(rows, split, label)
            counted = details[label]["support"][split]
            assert (counted["known"], counted["positives"]) == (known, positives)
            assert counted["too_rare"] == (label == "self_harm")  # 10 positives of 120
            assert loaded.metrics[split][label]["examples"] == known
    # The generated labels are learnable: the tiny model separates them.
    assert loaded.metrics["validation"]["harassment"]["roc_auc"] > 0.85
    assert loaded.metrics["validation"]["scam"]["roc_auc"] > 0.85
    # No source lacks a label here, no insult comments, no probe of these labels.
    assert loaded.metrics["cross_domain"]["lstm"]["validation"] == {}
    assert "long_messages" not in loaded.metrics and "probes" not in loaded.metrics
    rare = [w for w in summary["warnings"] if w.startswith("self_harm: only 10 positive(s)")]
    assert len(rare) == 2 and {"validation" in rare[0], "test" in rare[1]} == {True}
    assert summary["data"]["bundled"] is False and summary["data"]["labels"] == list(USER_LABELS)

    report_dir = store.root / "versions" / loaded.version / REPORT_DIR
    markdown = (report_dir / MARKDOWN_FILE).read_text()
    assert "## Warnings" in markdown and rare[0] in markdown
    assert (
        "| self_harm | A person saying they may hurt themselves | fixed 0.35 (label_spec) | "
        "fixed 0.35 | 0.350 | 33 / 400 | **10 / 120** (too rare) | **10 / 120** (too rare) |"
    ) in markdown
    assert (
        "| harassment | Insults, threats and pile-ons aimed at a person | max_f1 (label_spec)"
        in (markdown)
    )
    report = json.loads((report_dir / JSON_FILE).read_text())
    assert report["label_details"] == details and report["warnings"] == summary["warnings"]


def test_a_csv_file_split_by_hash_labels_from_its_header_and_feedback_in_its_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No split column: the loader hashes texts 80/10/10. No spec: the labels are the
    header's. Feedback is validated against those labels: `insult` is unknown here."""
    rows = user_rows()
    data = write_csv(tmp_path / "moderation.csv", rows, declare_splits=False)
    records = [
        {"text": "you worthless creep, really", "labels": {"harassment": True}},
        {"text": "you idiot", "labels": {"insult": True}},
        {"text": "claim your inheritance now", "labels": {"scam": True, "self_harm": False}},
    ]
    seen_labels: list[tuple[str, ...]] = []

    def read_feedback(_kafka: Any, topic: str, labels: Any, **_: Any) -> FeedbackRead:
        """The topic's records, parsed and validated by the real `parse_feedback`."""
        seen_labels.append(tuple(labels))
        valid, skipped = [], {}
        for offset, record in enumerate(records):
            value = {
                **record,
                "id": f"f{offset}",
                "reviewer": "m",
                "decided_at": "2024-05-01T12:00:00Z",
            }
            parsed = parse_feedback(json.dumps(value).encode(), labels)
            if isinstance(parsed, str):
                skipped[parsed] = skipped.get(parsed, 0) + 1
            else:
                valid.append(FeedbackRecord(parsed, 0, offset))
        return FeedbackRead(topic, valid, len(records), skipped, {0: len(records)})

    monkeypatch.setattr("worker.feedback.read_feedback", read_feedback)
    monkeypatch.setattr("worker.feedback.commit_feedback_offsets", lambda *_: True)
    out = tmp_path / "out"
    code, summary, err = run(
        capsys, "retrain", "--output", str(out), "--data", str(data), "--no-bundled",
        "--ignore-field", "id", "--target-precision", "scam=0.8", "--no-baseline",
        "--no-report", "--feedback-topic", "moderation.feedback", "--feedback-weight", "2",
        *TINY,
    )  # fmt: skip
    assert code == ExitCode.OK, err
    assert seen_labels == [USER_LABELS], "feedback is checked against the training labels"
    assert summary["feedback"]["skipped"] == {"unknown_label": 1}
    assert summary["feedback"]["merge"]["train_examples_added"] == 4
    loaded = load_checkpoint(out)
    assert loaded.labels == USER_LABELS  # the header's label columns, by name
    details = loaded.metrics["label_details"]
    assert details["scam"]["threshold_policy"] == {"target_precision": 0.8}
    assert details["scam"]["threshold_policy_source"] == "target_precision"
    assert details["harassment"]["threshold_policy_source"] == "default"
    for label in USER_LABELS:
        known = sum(label in row.labels for row in rows)
        counted = sum(
            summary_support["known"]
            for split, summary_support in details[label]["support"].items()
            if split != "train"
        )
        train_known = details[label]["support"]["train"]["known"]
        feedback_known = {"harassment": 2, "scam": 2, "self_harm": 2}[label]
        assert counted + train_known == known + feedback_known, label
    assert not (out / REPORT_DIR).exists()


def test_with_the_bundled_corpora_the_labels_are_their_union_bundled_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        find_data_files()
    except DataNotFoundError as exc:
        pytest.skip(f"training data not installed: {exc}")
    bundled = load_splits()
    sms = next(
        ex for ex in bundled.validation if ex.source == "sms_spam" and 20 < len(ex.text) < 80
    )
    rows = user_rows()
    data = write_jsonl(tmp_path / "moderation.jsonl", rows)
    with data.open("a") as f:
        record = {"text": sms.text, "harassment": False, "scam": True, "self_harm": False}
        f.write(json.dumps(record | {"split": "train"}) + "\n")
    out = tmp_path / "out"
    code, summary, err = run(
        capsys, "retrain", "--output", str(out), "--data", str(data),
        "--target-precision", "0.9", "--no-baseline", "--no-report",
        "--limit", "600", "--eval-limit", "300", *TINY,
    )  # fmt: skip
    assert code == ExitCode.OK, err
    loaded = load_checkpoint(out)
    assert loaded.labels == ("insult", "spam", *USER_LABELS)
    assert summary["data"]["superseded_bundled"]["validation"] >= 1
    assert summary["data"]["bundled"] is True and summary["data"]["files"][0]["rows"] == 641
    details = loaded.metrics["label_details"]
    assert {d["threshold_policy_source"] for d in details.values()} == {"target_precision"}
    assert {json.dumps(d["threshold_policy"]) for d in details.values()} == {
        '{"target_precision": 0.9}'
    }
    crossed = loaded.metrics["cross_domain"]["lstm"]["validation"]
    # Each label on a corpus that never labelled it, and only there.
    assert {
        "spam_on_insults",
        "insult_on_sms_spam",
        "insult_on_user",
        "harassment_on_insults",
    } <= set(crossed)
    assert not {"harassment_on_user", "insult_on_insults", "spam_on_sms_spam"} & set(crossed)
    assert "long_messages" in loaded.metrics and loaded.metrics["probes"]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def good_lines(n: int = 3) -> str:
    return "".join(
        json.dumps({"text": f"message {i}", "harassment": i % 2 == 0, "split": "train"}) + "\n"
        for i in range(n)
    )


BAD_FILES: dict[str, tuple[str, str, str]] = {
    # name: (file name, content, what the message says after the file name)
    "wrong type": (
        "d.jsonl",
        good_lines(2) + '{"text": "hi", "harassment": "maybe", "split": "train"}\n',
        ":3: field 'harassment': must be true, false, 1, 0 or null, got 'maybe'",
    ),
    "unknown split": (
        "d.jsonl",
        good_lines(1) + '{"text": "hi", "harassment": true, "split": "dev"}\n',
        ":2: field 'split': must be train, validation or test, got 'dev'",
    ),
    "empty file": ("d.jsonl", "\n\n", ": no data rows"),
    "bad JSON": ("d.jsonl", good_lines(3) + '{"text": "hi",\n', ":4: not JSON"),
    "missing text": (
        "d.jsonl",
        good_lines(1) + '{"harassment": true, "split": "train"}\n',
        ":2: field 'text': missing",
    ),
    "CSV row width": (
        "d.csv",
        "text,harassment\nhello,1\nhi,0,extra\n",
        ":3: 3 fields, the header has 2",
    ),
    "CSV cell": (
        "d.csv",
        "text,harassment\nhello,1\nhi,perhaps\n",
        ":3: field 'harassment': must be true/false/1/0/yes/no or empty, got 'perhaps'",
    ),
    "text in two splits": (
        "d.jsonl",
        good_lines(2) + '{"text": "MESSAGE 0", "harassment": true, "split": "test"}\n',
        ":3: 1 row(s) repeat a text declared in another split, first line 3 (same text as line 1)",
    ),
    "no validation positive": (
        "d.jsonl",
        good_lines(4) + '{"text": "calm", "harassment": false, "split": "validation"}\n',
        ": field 'harassment': no positive example in validation (1 known, 0 positive)",
    ),
    "label not in the spec": (
        "d.jsonl",
        '{"text": "i will find you", "threat": true, "split": "train"}\n',
        ":1: field 'threat': not a label of the label spec (harassment, scam, self_harm)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_exits_2_naming_file_line_and_field_and_writes_nothing(
    case: str, tmp_path: Path, store: CheckpointStore, capsys: pytest.CaptureFixture[str]
) -> None:
    name, content, says = BAD_FILES[case]
    path = write_text(tmp_path / name, content)
    spec = write_text(tmp_path / "labels.toml", LABEL_SPEC)
    before = tree(store.root)
    argv = ["retrain", "--store", str(store.root), "--data", str(path), "--no-bundled", *TINY]
    if case == "label not in the spec":
        argv += ["--label-spec", str(spec)]
    code, summary, err = run(capsys, *argv)
    assert code == ExitCode.USAGE
    assert summary["error"] == f"{path}{says}" or summary["error"].startswith(f"{path}{says}")
    assert err.endswith(f"modstream retrain: {summary['error']}\n") and "Traceback" not in err
    assert summary["status"] == "error" and "version" not in summary
    assert tree(store.root) == before, "nothing is written to the store"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--no-bundled"], "--no-bundled needs at least one --data file"),
        (["--data", "{tmp}/absent.jsonl"], "--data {tmp}/absent.jsonl: does not exist"),
        (
            ["--data", "{tmp}/d.jsonl", "--data", "{tmp}/d.jsonl"],
            "--data {tmp}/d.jsonl is given twice",
        ),
        (
            ["--data", "{tmp}/labels.toml"],
            "--data {tmp}/labels.toml: unsupported file type '.toml'",
        ),
        (["--text-field", "body"], "--text-field apply to --data files, and none was given"),
        (
            ["--data", "{tmp}/d.jsonl", "--text-field", "x", "--split-field", "x"],
            "--text-field and --split-field are both 'x'",
        ),
        (["--label-spec", "{tmp}/absent.toml"], "--label-spec {tmp}/absent.toml: does not exist"),
        (
            ["--label-spec", "{tmp}/bad.toml", "--data", "{tmp}/d.jsonl", "--no-bundled"],
            "--label-spec {tmp}/bad.toml: labels.self_harm.threshold.fixed: Input should be "
            "less than or equal to 1",
        ),
        (
            [
                "--label-spec",
                "{tmp}/labels.toml",
                "--data",
                "{tmp}/d.jsonl",
                "--no-bundled",
                "--target-precision",
                "scam=0.8",
            ],
            "--target-precision and --label-spec both set the threshold policy of scam",
        ),
        (
            ["--data", "{tmp}/d.jsonl", "--no-bundled", "--target-precision", "spam=0.8"],
            "--target-precision names spam, not a label of this run (harassment)",
        ),
        (
            ["--label-spec", "{tmp}/labels.toml", "--data", "{tmp}/d.jsonl"],
            "the bundled corpora label insult, spam, which the label spec {tmp}/labels.toml "
            "does not name",
        ),
    ],
)
def test_bad_data_flags_exit_2_naming_the_flag(
    flags: list[str], says: str, tmp_path: Path, store: CheckpointStore,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr("model.data.load_splits", lambda: pytest.fail("the corpora were read"))
    write_text(tmp_path / "labels.toml", LABEL_SPEC)
    write_text(tmp_path / "bad.toml", LABEL_SPEC.replace("fixed = 0.35", "fixed = 3.5"))
    write_text(tmp_path / "d.jsonl", good_lines(4))
    before = tree(store.root)
    argv = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    code, summary, _ = run(capsys, "retrain", "--store", str(store.root), *argv, *TINY)
    assert code == ExitCode.USAGE
    assert says.replace("{tmp}", str(tmp_path)) in summary["error"]
    assert tree(store.root) == before


def test_the_flags_know_the_readers_formats() -> None:
    from model import user_formats

    assert data_flags.JSONL_SUFFIXES == user_formats.JSONL_SUFFIXES
    assert data_flags.CSV_SUFFIXES == user_formats.CSV_SUFFIXES
