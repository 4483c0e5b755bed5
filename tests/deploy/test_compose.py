"""deploy/compose: the local stack is a valid Compose project and wires the worker,
Kafka, Prometheus and Grafana to each other and to deploy/monitoring/.

Validation, strongest available first: `composecheck` (compose-go, the library behind
`docker compose config`: Compose Specification schema, interpolation, normalisation),
always; `docker compose config` as well where the compose plugin is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO_ROOT, require, tools_dir

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
#: Files of deploy/monitoring/ (kept by the monitoring work) that the stack mounts.
MONITORING_FILES = (
    "deploy/monitoring/prometheus.yml",
    "deploy/monitoring/alerts.yml",
    "deploy/monitoring/grafana/dashboards/modstream.json",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


def dockerfile_targets() -> set[str]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    return set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))


def composecheck(*args: str) -> dict[str, Any]:
    binary = require(tools_dir() / "composecheck" / "composecheck", "composecheck")
    proc = subprocess.run(
        [str(binary), *args, str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_compose_spec_valid() -> None:
    project = composecheck()
    assert set(project["services"]) == {"kafka", "kafka-init", "worker", "prometheus", "grafana"}
    with_retrain = composecheck("-profile", "retrain")
    assert "retrain" in with_retrain["services"]


def test_composecheck_rejects_an_invalid_file(tmp_path: Path) -> None:
    binary = require(tools_dir() / "composecheck" / "composecheck", "composecheck")
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  worker:\n    imagee: modstream\n", encoding="utf-8")
    proc = subprocess.run([str(binary), str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "imagee" in proc.stderr


def test_docker_compose_config_when_available() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker client not installed (composecheck covers the same validation)")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed (composecheck covers the same validation)")
    proc = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--profile", "retrain", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: {image} is not pinned"
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")


def test_worker_and_retrain_build_from_the_dockerfile(compose: dict[str, Any]) -> None:
    targets = dockerfile_targets()
    for name, target in (("worker", "worker"), ("retrain", "retrain")):
        build = compose["services"][name]["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == REPO_ROOT
        assert (REPO_ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["target"] == target and target in targets
    assert compose["services"]["retrain"]["profiles"] == ["retrain"]


def test_worker_runs_like_in_kubernetes(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["user"] == "10001:10001"
    assert worker["read_only"] is True
    assert worker["cap_drop"] == ["ALL"]
    assert "/tmp" in worker["tmpfs"]
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) > 30
    assert worker["environment"]["MODSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert any(
        v.endswith(":ro") and "/var/lib/modstream/checkpoints" in v for v in worker["volumes"]
    )


def test_kafka_is_single_node_kraft(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    init = compose["services"]["kafka-init"]["command"][0]
    for topic in ("moderation.requests", "moderation.results", "moderation.dead-letter"):
        assert topic in init


def test_host_ports_bind_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_monitoring_wiring(compose: dict[str, Any]) -> None:
    """Prometheus loads deploy/monitoring/alerts.yml and Grafana the modstream dashboard,
    through the paths that deploy/monitoring/ uses."""
    mounts: dict[str, str] = {}
    for service in ("prometheus", "grafana"):
        for volume in compose["services"][service]["volumes"]:
            m = re.fullmatch(r"(.+?):(/[^:]+)(?::ro)?", volume)
            assert m, volume
            mounts[m.group(2)] = m.group(1)
    prometheus_config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text("utf-8"))
    config_source = mounts["/etc/prometheus/prometheus.yml"]
    assert config_source == "${MODSTREAM_PROMETHEUS_CONFIG:-./prometheus.yml}"
    monitoring_dir = mounts["/etc/prometheus/modstream"]
    assert (COMPOSE_DIR / monitoring_dir).resolve() == DEPLOY / "monitoring"
    assert prometheus_config["rule_files"] == ["/etc/prometheus/modstream/alerts.yml"]

    dashboards_target = "/var/lib/grafana/dashboards/modstream"
    dashboards_source = (COMPOSE_DIR / mounts[dashboards_target]).resolve()
    assert dashboards_source == DEPLOY / "monitoring" / "grafana" / "dashboards"
    provisioning = COMPOSE_DIR / mounts["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "modstream.yaml").read_text("utf-8"))
    assert provider["providers"][0]["options"]["path"] == dashboards_target
    datasource = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yaml").read_text("utf-8")
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"

    # The files the monitoring work provides, where they exist already.
    for relative in MONITORING_FILES:
        path = REPO_ROOT / relative
        if not path.exists():
            continue
        if path.suffix == ".json":
            json.loads(path.read_text("utf-8"))
        else:
            assert yaml.safe_load(path.read_text("utf-8")) is not None
