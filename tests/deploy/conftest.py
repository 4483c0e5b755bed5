"""Fixtures for the deployment checks: rendered overlays, pinned tools, worker settings.

The tools (kustomize, checkov, composecheck, crdcheck) are installed outside git by
`make deploy-tools` (a prerequisite of `make test` and `make deploy-check`) at the
versions pinned in deploy/tools/versions.mk. A test needing a missing tool is skipped
with the command to install it -- except under CI (CI=true), where it fails: CI installs
every tool, so a skip there would hide a broken install step.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu", "cpu-hpa", "cpu-scram", "cpu-mtls")
#: Overlays whose workers reach Kafka over TLS (components/kafka-*): {overlay: protocol}.
SECURE_OVERLAYS = {"cpu-scram": "SASL_SSL", "cpu-mtls": "SSL"}
#: Kubernetes versions the manifests must be valid for (kubernetes-validate schemas).
K8S_VERSIONS = ("1.30.0", "1.37.0")
#: Partitions of the input topic: the most consumers that can do work.
INPUT_PARTITIONS = 6

Obj = dict[str, Any]


def tool_versions() -> dict[str, str]:
    text = (DEPLOY / "tools" / "versions.mk").read_text(encoding="utf-8")
    return dict(re.findall(r"^(\w+) := (\S+)$", text, re.MULTILINE))


def tools_dir() -> Path:
    env = os.environ.get("DEPLOY_TOOLS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modstream" / "tools"


def require(path: Path, what: str) -> Path:
    """The tool at `path`, or skip (fail under CI) saying how to install it."""
    if path.exists():
        return path
    message = f"{what} not installed at {path}; run `make deploy-tools`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_command(name: str) -> str:
    from shutil import which

    found = which(name)
    if found is None:
        message = f"`{name}` is not on PATH"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def kustomize() -> Path:
    version = tool_versions()["KUSTOMIZE_VERSION"]
    return require(tools_dir() / f"kustomize-{version}" / "kustomize", f"kustomize {version}")


@pytest.fixture(scope="session")
def rendered(kustomize: Path) -> dict[str, list[Obj]]:
    """Every overlay rendered by the pinned kustomize: {overlay: [objects]}."""
    out: dict[str, list[Obj]] = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [str(kustomize), "build", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"kustomize build {overlay}:\n{proc.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str) -> Obj:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(obj["spec"]["template"]["spec"])


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "CronJob", "Job", "Pod")]


@pytest.fixture(scope="session")
def worker_settings() -> type[Any]:
    """`worker.settings.WorkerSettings`, imported for real."""
    from worker.settings import WorkerSettings

    return WorkerSettings


@pytest.fixture
def clean_modstream_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("MODSTREAM_"):
            monkeypatch.delenv(name)
    yield monkeypatch
