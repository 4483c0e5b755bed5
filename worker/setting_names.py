"""How an operator spells a worker setting: its `MODSTREAM_*` variable, its flag, or
"environment only" for a secret.

Apart from the settings classes because the command line (worker/worker_command.py),
its error messages (worker/command_errors.py), the security diagnostics
(worker/security.py, worker/refusal.py) and the settings' own validators all name
settings, and the command line must name them without importing pydantic-settings.
"""

from __future__ import annotations

ENV_PREFIX = "MODSTREAM_"

# Secrets never go on a command line, where `ps` and shell history would show them;
# each also has a `*_file` twin for secrets mounted as files.
ENV_ONLY_SETTINGS = frozenset({"sasl_password", "ssl_key_password"})


def env_name(field: str) -> str:
    """The environment variable of setting `field`: `MODSTREAM_` + the field in capitals."""
    return f"{ENV_PREFIX}{field.upper()}"


def setting_names(field: str) -> str:
    """How an operator sets `field`: its env name, and its flag unless it is env only."""
    env = env_name(field)
    if field in ENV_ONLY_SETTINGS:
        return f"{env} (environment only)"
    return f"{env} / --{field.replace('_', '-')}"
