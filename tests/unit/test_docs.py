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


def _readme_section(title: str) -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _command_table() -> dict[tuple[str, ...], set[str]]:
    """The README's command table: per command (its words), the flags its rows show."""
    import re

    rows: dict[tuple[str, ...], set[str]] = {}
    for line in _readme_section("Command line").splitlines():
        match = re.match(r"\| `modstream ([^`]*)` \|", line)
        if not match:
            continue
        synopsis = match.group(1)
        words = []
        for token in synopsis.split():
            if not re.fullmatch(r"[a-z]+", token):
                break
            words.append(token)
        rows.setdefault(tuple(words), set()).update(re.findall(r"--[a-z][a-z0-9-]*", synopsis))
    return rows


def _parser_commands() -> list[tuple[str, ...]]:
    """Every runnable command of the parser, as the words that name it."""
    import argparse

    from worker.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return [
                    command
                    for name, child in action.choices.items()
                    for command in walk(child, (*prefix, name))
                ]
        return [prefix]

    return walk(build_parser(), ())


def _help_flags(command: tuple[str, ...]) -> set[str]:
    import re

    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *command, "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    options = done.stdout.split("\noptions:\n", 1)[1]
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", options)) - {"--help"}


def test_the_readme_command_table_matches_every_commands_help() -> None:
    """Every command is in the table; every flag the table shows exists in that
    command's --help; and every flag of --help is documented: in the table's row, or
    (worker) the configuration table, or (retrain) the generated training-flag table."""
    import re

    table = _command_table()
    assert sorted(table) == sorted(_parser_commands())
    configuration = set(re.findall(r"`(--[a-z0-9-]+)`", _readme_section("Configuration")))
    training = set(
        re.findall(
            r"`(--[a-z0-9-]+)`",
            (REPO_ROOT / "README.md")
            .read_text(encoding="utf-8")
            .split("<!-- BEGIN GENERATED retrain -->", 1)[1]
            .split("<!-- END GENERATED retrain -->", 1)[0],
        )
    )
    documented_elsewhere = {("worker",): configuration, ("retrain",): training}
    for command, shown in table.items():
        flags = _help_flags(command)
        assert shown <= flags, f"modstream {' '.join(command)}: README shows {shown - flags}"
        missing = flags - shown - documented_elsewhere.get(command, set())
        assert not missing, f"modstream {' '.join(command)}: README lacks {sorted(missing)}"
    assert "`modstream --version`" in _readme_section("Command line")
