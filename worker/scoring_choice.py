"""Where the model runs (`MODSTREAM_SCORING`) and what a scoring process is started with.

Why apart from worker/scoring_process.py: choosing needs only the CPU count, so a worker
that scores in process decides without importing the scoring process's machinery
(shared memory, sockets, restarts). `auto` is `process` from 2 usable CPUs on (README
"Where the model runs").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from worker.settings import WorkerSettings

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def usable_cpus() -> float:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (a
    pod's CPU limit) where one is set."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    quota = _cgroup_quota()
    return min(cpus, quota) if quota is not None else cpus


def _cgroup_quota() -> float | None:
    try:
        limit, period = CGROUP_V2_CPU_MAX.read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        limit = (CGROUP_V1_CPU / "cpu.cfs_quota_us").read_text().strip()
        period = (CGROUP_V1_CPU / "cpu.cfs_period_us").read_text().strip()
        return None if int(limit) <= 0 else int(limit) / int(period)
    except (OSError, ValueError):
        return None


def choose_scoring(setting: str, cpus: float | None = None) -> str:
    """`MODSTREAM_SCORING` resolved: `auto` is `process` with 2 or more usable CPUs on a
    platform that has memory files (Linux), else `in_process`."""
    if setting != "auto":
        return setting
    if not hasattr(os, "memfd_create"):
        return "in_process"
    return "process" if (usable_cpus() if cpus is None else cpus) >= 2 else "in_process"


@dataclass(frozen=True)
class ScoringOptions:
    """How the scoring process runs its engines (from `WorkerSettings`)."""

    device: str = "cpu"
    engine_options: dict[str, int] = field(default_factory=dict)
    torch_threads: int = 1
    switch_interval_us: int = 0
    log_level: str = "info"

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> ScoringOptions:
        return cls(
            device=settings.device,
            engine_options=settings.engine_options(),
            torch_threads=settings.torch_threads,
            switch_interval_us=settings.gil_switch_interval_us,
            log_level=settings.log_level,
        )
