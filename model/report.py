"""The evaluation report `retrain` writes into the checkpoint, under `report/`.

Files: `report.json` (everything, machine-readable), `report.md` (the same for people)
and, when matplotlib is installed, PNG figures: ROC and precision-recall curves with a
marker at each model's chosen threshold, a reliability (calibration) diagram with the
examples per bin, per label; and the training curve with the kept epoch marked. Each
model has one colour in every figure. Without matplotlib
the JSON and Markdown are still written and the Markdown says the figures are missing.

The report lives inside the checkpoint directory, written into the staging directory
before the atomic rename, so it always describes exactly the weights beside it. It is
not part of the checkpoint's content hash and `load_checkpoint` only reads
`model.json` and `weights.safetensors`, so it can never stop a checkpoint from loading.

Models compared: `lstm` (the served model, scored through `Engine`) and `baseline`
(`model.baseline`), each with per-label thresholds chosen on validation.

The rooms: `model.report_data` computes the report dict (`build_report`),
`model.report_markdown` and `model.report_figures` render it, and this module writes
the files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from model.jsonsafe import json_safe
from model.report_figures import render_images
from model.report_markdown import render_markdown

REPORT_DIR = "report"
JSON_FILE = "report.json"
MARKDOWN_FILE = "report.md"


def report_files(report: Mapping[str, Any], with_images: bool = True) -> dict[str, bytes]:
    """Relative path → bytes for everything under `report/`."""
    images = render_images(report) if with_images else {}
    files = {f"{REPORT_DIR}/{name}": data for name, data in images.items()}
    files[f"{REPORT_DIR}/{MARKDOWN_FILE}"] = render_markdown(report, sorted(images)).encode()
    files[f"{REPORT_DIR}/{JSON_FILE}"] = (
        json.dumps(json_safe(report), indent=1, sort_keys=True, allow_nan=False) + "\n"
    ).encode()
    return files
