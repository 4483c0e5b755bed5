"""JSON Schema files for outside clients, generated from the pydantic models.

`python -m schemas.export` rewrites `schemas/json/`; a test fails when they drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.dead_letter import DeadLetter
from schemas.feedback import ModeratorFeedback
from schemas.request import ModerationRequest
from schemas.result import ModerationResult

SCHEMA_DIR = Path(__file__).with_name("json")

MODELS: dict[str, type[BaseModel]] = {
    "request": ModerationRequest,
    "result": ModerationResult,
    "dead_letter": DeadLetter,
    "feedback": ModeratorFeedback,
}


def render(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(mode="validation")
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in MODELS.items():
        path = directory / f"{name}.schema.json"
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        sys.stdout.write(f"wrote {path}\n")
