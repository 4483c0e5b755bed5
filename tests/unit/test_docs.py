"""The README's configuration and metrics tables match the code."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO_ROOT


def test_readme_tables_are_current() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/readme_tables.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_every_setting_is_documented_with_its_env_name() -> None:
    from worker.settings import WorkerSettings

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name in WorkerSettings.model_fields:
        assert f"MODSTREAM_{name.upper()}" in readme
