"""What `modstream worker` says about its configuration as it starts.

1. `unknown_variables`: `MODSTREAM_*` variables no part of modstream reads. pydantic
   ignores them, so a misspelt `MODSTREAM_KAFKA_BOOTSTRAPS` silently left the default
   broker in place; each is now warned about by name, with the closest known name.
2. `effective_settings`: every setting as the worker will use it, secrets masked, for
   one start-up log line (what the environment and flags added up to).
3. `startup_policy`: the threshold policy the first model serves under, checked against
   its labels before anything connects: `MODSTREAM_THRESHOLDS` naming a label the model
   lacks exits 2 (`UnknownOverrideLabelError`), a store policy file that does not parse
   or names such a label exits 3 (`PolicyFileError`: the store is inconsistent).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from model.threshold_overrides import (
    THRESHOLDS_ENV,
    PolicyFileError,
    ThresholdPolicyFile,
    check_override_labels,
)
from worker.setting_names import ENV_PREFIX
from worker.settings import WorkerSettings

# Read outside WorkerSettings: by retrain (store size, GloVe cache), by the local Kafka
# script (jar cache) and by the compose file (Prometheus config).
OTHER_VARIABLES = frozenset(
    {
        "MODSTREAM_CHECKPOINT_KEEP",
        "MODSTREAM_GLOVE_DIR",
        "MODSTREAM_CACHE_DIR",
        "MODSTREAM_PROMETHEUS_CONFIG",
    }
)


def known_variables() -> frozenset[str]:
    settings = {ENV_PREFIX + name.upper() for name in WorkerSettings.model_fields}
    return frozenset(settings | OTHER_VARIABLES)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """(variable, the closest known one or None) for each unknown `MODSTREAM_*` variable,
    sorted by name. pydantic-settings matches names case-insensitively, so do we."""
    known = known_variables()
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )
    return [(name, _closest(name.upper(), known)) for name in unknown]


def _closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like `name`, compared without the shared prefix (which
    would make any two names look alike)."""
    by_suffix = {variable.removeprefix(ENV_PREFIX): variable for variable in known}
    matches = difflib.get_close_matches(
        name.removeprefix(ENV_PREFIX), sorted(by_suffix), n=1, cutoff=0.6
    )
    return by_suffix[matches[0]] if matches else None


def effective_settings(settings: WorkerSettings) -> dict[str, Any]:
    """Every setting by field name, JSON-ready; secrets show as `**********`."""
    return settings.model_dump(mode="json")


def startup_policy(
    checkpoint_dir: Path, labels: Sequence[str], overrides: Mapping[str, float]
) -> ThresholdPolicyFile | None:
    """Step 3 of the module docstring: the store's policy (None without one, or for a
    plain checkpoint directory), once both it and `overrides` fit `labels`."""
    from model.store_policy import policy_conflict, policy_file_for, read_policy

    check_override_labels(overrides, labels, THRESHOLDS_ENV)
    policy_file = policy_file_for(checkpoint_dir)
    if policy_file is None:
        return None
    policy = read_policy(policy_file.parent)
    why = policy_conflict(policy, labels)
    if why is not None:
        raise PolicyFileError(
            f"{policy_file}: {why}; set a policy for this model's labels "
            "(`modstream checkpoints policy set FILE`) or clear it"
        )
    return policy
