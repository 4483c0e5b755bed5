"""The manifests and the compose file speak the worker's language: every `MODSTREAM_*`
variable they set is a real `WorkerSettings` field with a valid value, and the probes
and scrape targets hit paths and ports the worker actually serves."""

from __future__ import annotations

import argparse
import json
import re
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, OVERLAYS, Obj, one, pod_spec, workloads

COMPOSE = DEPLOY / "compose" / "compose.yaml"


def manifest_env(objects: list[Obj]) -> dict[str, list[str]]:
    """{env name: [where it is set]} over ConfigMaps and every container's env."""
    found: dict[str, list[str]] = {}
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            for key in obj.get("data", {}):
                found.setdefault(key, []).append(f"ConfigMap/{obj['metadata']['name']}")
    for obj in workloads(objects):
        for c in pod_spec(obj)["containers"]:
            for e in c.get("env", []):
                found.setdefault(e["name"], []).append(f"{obj['kind']}/{obj['metadata']['name']}")
    return found


def compose_env() -> dict[str, list[str]]:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    found: dict[str, list[str]] = {}
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("MODSTREAM_"):
                found.setdefault(key, []).append(f"compose service {name}")
    return found


def env_name(field: str) -> str:
    return "MODSTREAM_" + field.upper()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifest_env_vars_are_worker_settings(
    rendered: dict[str, list[Obj]], overlay: str, worker_settings: type[Any]
) -> None:
    fields = {env_name(f) for f in worker_settings.model_fields}
    env = manifest_env(rendered[overlay])
    unknown = {name: where for name, where in env.items() if name not in fields}
    assert not unknown, f"not WorkerSettings fields: {unknown}"


def test_compose_env_vars_are_worker_settings(worker_settings: type[Any]) -> None:
    fields = {env_name(f) for f in worker_settings.model_fields}
    unknown = {name: where for name, where in compose_env().items() if name not in fields}
    assert not unknown, f"not WorkerSettings fields: {unknown}"
    assert compose_env(), "the compose worker should be configured through MODSTREAM_*"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_values_are_valid_settings(
    rendered: dict[str, list[Obj]],
    overlay: str,
    worker_settings: type[Any],
    clean_modstream_env: pytest.MonkeyPatch,
) -> None:
    """The worker would start with these settings (pydantic validates every value)."""
    data = one(rendered[overlay], "ConfigMap")["data"]
    for key, value in data.items():
        clean_modstream_env.setenv(key, value)
    settings = worker_settings()
    for key, value in data.items():
        field = key.removeprefix("MODSTREAM_").lower()
        assert str(getattr(settings, field)) == value


def test_default_settings_match_the_manifests(
    rendered: dict[str, list[Obj]], worker_settings: type[Any]
) -> None:
    """Topics, group and metrics port in the ConfigMap are the worker's own defaults, so
    KEDA, the ServiceMonitor and black-box clients agree with a worker run without env."""
    fields = worker_settings.model_fields
    data = one(rendered["cpu"], "ConfigMap")["data"]
    for field in ("input_topic", "output_topic", "dead_letter_topic", "group_id", "metrics_port"):
        assert data[env_name(field)] == str(fields[field].default)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_the_worker_health_endpoints(
    rendered: dict[str, list[Obj]], overlay: str, worker_settings: type[Any]
) -> None:
    objects = rendered[overlay]
    port = int(one(objects, "ConfigMap")["data"]["MODSTREAM_METRICS_PORT"])
    assert port == worker_settings.model_fields["metrics_port"].default
    (c,) = pod_spec(one(objects, "Deployment"))["containers"]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named["metrics"] == port
    probes = {
        kind: c[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/livez"
    assert probes["startupProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for get in probes.values():
        assert named.get(get["port"], get["port"]) == port


def _probe_paths(objects: list[Obj]) -> set[str]:
    (c,) = pod_spec(one(objects, "Deployment"))["containers"]
    return {c[k]["httpGet"]["path"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}


def test_worker_serves_the_probe_paths(rendered: dict[str, list[Obj]]) -> None:
    """Start the worker's real HealthServer and GET every probe path the manifests use
    (plus the scrape path): each must answer with health JSON, never 404."""
    from prometheus_client import CollectorRegistry

    from worker.health import HealthServer, HealthState

    paths = set().union(*(_probe_paths(objs) for objs in rendered.values()))
    monitor = one(rendered["cpu"], "ServiceMonitor")["spec"]["endpoints"][0]
    state = HealthState()
    server = HealthServer("127.0.0.1", 0, CollectorRegistry(), state)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        for path in sorted(paths):
            try:
                with urllib.request.urlopen(base + path, timeout=5) as resp:
                    status, body = resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
            assert status in (200, 503), f"{path}: HTTP {status}"
            assert isinstance(json.loads(body), dict)
        state.set(model_version="test", group_joined=True)
        with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(base + monitor["path"], timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.stop()


def test_metrics_port_is_consistent_everywhere(
    rendered: dict[str, list[Obj]], worker_settings: type[Any]
) -> None:
    port = worker_settings.model_fields["metrics_port"].default
    # Dockerfile EXPOSE and its HEALTHCHECK default.
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert set(re.findall(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE)) == {str(port)}
    assert f"'MODSTREAM_METRICS_PORT', '{port}'" in dockerfile
    # compose: the worker's env, its published port and Prometheus' scrape target.
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = compose["services"]["worker"]
    assert service["environment"]["MODSTREAM_METRICS_PORT"] == str(port)
    assert f"127.0.0.1:{port}:{port}" in service["ports"]
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text("utf-8"))
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "modstream-worker"]
    assert job["static_configs"][0]["targets"] == [f"worker:{port}"]
    # Kubernetes: the job is named after the Service, so the `job` label matches locally.
    assert one(rendered["cpu"], "Service")["metadata"]["name"] == job["job_name"]


def test_no_secret_literal_in_manifests(rendered: dict[str, list[Obj]]) -> None:
    for objects in rendered.values():
        assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are created out of band"
        for obj in workloads(objects):
            for c in pod_spec(obj)["containers"]:
                for e in c.get("env", []):
                    if "PASSWORD" in e["name"] or "USERNAME" in e["name"]:
                        assert "value" not in e, e["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_command_is_a_modstream_command(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """The args of every container (worker, init container, retrain CronJob and Job)
    parse as a `modstream` command line (the image's entrypoint)."""
    from worker.cli import build_parser

    for obj in workloads(rendered[overlay]):
        spec = pod_spec(obj)
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            build_parser().parse_args(c["args"])  # SystemExit(2) on an unknown flag


#: The README section whose loop the retrain CronJob runs.
README_LOOP = "## Refreshing the model: retrain → promote → reload"
#: Where the CronJob's `retrain` arguments differ from the README loop's on purpose (all
#: said in deploy/README.md, "Retrain on Kubernetes"); the test checks each one's effect.
DEPLOYMENT_SPECIFIC = {
    # The store on the checkpoints volume, written out: the loop's default, the store of
    # MODSTREAM_CHECKPOINT_DIR, is the same store in the pod.
    "store",
    # The loop's example broker; the pod reads MODSTREAM_KAFKA_BOOTSTRAP from the
    # workers' ConfigMap instead.
    "kafka_bootstrap",
    # A Job runs a failed pod again and counts a failure: the gate's hold exits 0, not 10.
    "succeed_if_held",
}


def readme_retrain_loop() -> list[str]:
    """The `modstream retrain …` line of the README's refresh loop, as argv."""
    import shlex

    readme = (DEPLOY.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split(README_LOOP + "\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    (line,) = [ln for ln in block.splitlines() if ln.startswith("modstream retrain ")]
    return shlex.split(line)[1:]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_retrain_cronjob_runs_the_readme_loop(
    rendered: dict[str, list[Obj]], overlay: str, clean_modstream_env: pytest.MonkeyPatch
) -> None:
    """The CronJob's args, parsed by modstream's own parser, are the README loop's
    arguments but for DEPLOYMENT_SPECIFIC; in the pod's environment (the ConfigMap) those
    resolve to the README loop's store and to the workers' Kafka settings."""
    from worker.checkpoint_commands import open_store
    from worker.cli import build_parser
    from worker.retrain_command import _kafka_settings

    objects = rendered[overlay]
    cronjob = one(objects, "CronJob")
    (c,) = pod_spec(cronjob)["containers"]
    readme = vars(build_parser().parse_args(readme_retrain_loop()))
    job = vars(build_parser().parse_args(c["args"]))
    assert job["command"] == readme["command"] == "retrain"
    differs = {key for key in readme.keys() | job.keys() if readme.get(key) != job.get(key)}
    assert differs <= DEPLOYMENT_SPECIFIC, f"differs from the README loop: {differs}"
    assert job["feedback_topic"] == readme["feedback_topic"] == "moderation.feedback"
    assert job["succeed_if_held"] is True

    # The pod's environment: the workers' ConfigMap, by reference.
    configmap = one(objects, "ConfigMap")
    (env_from,) = c["envFrom"]
    assert env_from == {"configMapRef": {"name": configmap["metadata"]["name"]}}
    (worker,) = pod_spec(one(objects, "Deployment"))["containers"]
    assert c["envFrom"] == worker["envFrom"]
    assert not c.get("env"), "nothing beside the workers' settings"
    for key, value in configmap["data"].items():
        clean_modstream_env.setenv(key, value)
    as_job, as_readme = argparse.Namespace(**job), argparse.Namespace(**readme)
    assert open_store(as_job).root == open_store(as_readme).root
    settings = _kafka_settings(as_job)
    assert settings.kafka_bootstrap == configmap["data"]["MODSTREAM_KAFKA_BOOTSTRAP"]
    assert settings.security_protocol == configmap["data"]["MODSTREAM_SECURITY_PROTOCOL"]

    # The first-model Job writes its first version into the same store.
    (first,) = pod_spec(one(objects, "Job"))["containers"]
    first_args = build_parser().parse_args(first["args"])
    assert first_args.command == "retrain" and first_args.if_missing
    assert open_store(first_args).root == open_store(as_job).root
