"""The rendered overlays say what the deployment promises: security, scaling, volumes,
retrain, network and monitoring wiring. Rendering itself is the pinned kustomize."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import (
    INPUT_PARTITIONS,
    OVERLAYS,
    SECURE_OVERLAYS,
    Obj,
    by_kind,
    one,
    pod_spec,
    workloads,
)

NAMESPACE = "modstream"
CHECKPOINT_MOUNT = "/var/lib/modstream/checkpoints"
#: The worker's SIGTERM drain finishes the batch in hand "well under 30 s".
DRAIN_BUDGET_S = 30
UID = 10001


def settings_map(objects: list[Obj]) -> dict[str, str]:
    return dict(one(objects, "ConfigMap")["data"])


def worker(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment")


def container(obj: Obj) -> Obj:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(rendered: dict[str, list[Obj]], overlay: str) -> None:
    kinds = sorted(o["kind"] for o in rendered[overlay])
    autoscaler = "HorizontalPodAutoscaler" if overlay == "cpu-hpa" else "ScaledObject"
    secure = ["TriggerAuthentication"] if overlay in SECURE_OVERLAYS else []
    assert kinds == sorted(
        [
            *secure,
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "ServiceMonitor",
            "PodDisruptionBudget",
            autoscaler,
            "CronJob",
            "Job",
            "NetworkPolicy",
            "NetworkPolicy",
        ]
    )
    for obj in rendered[overlay]:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "modstream"


def test_overlays_pick_their_image_and_device(rendered: dict[str, list[Obj]]) -> None:
    cpu, gpu = rendered["cpu"], rendered["gpu"]
    assert container(worker(cpu))["image"].endswith(":0.1.0-cpu")
    assert container(worker(gpu))["image"].endswith(":0.1.0-cuda")
    for objects in (cpu, gpu):
        assert container(one(objects, "CronJob"))["image"].endswith(":0.1.0-retrain")
    assert settings_map(cpu)["MODSTREAM_DEVICE"] == "cpu"
    assert settings_map(gpu)["MODSTREAM_DEVICE"] == "cuda"


def test_gpu_overlay_requests_a_gpu_on_gpu_nodes(rendered: dict[str, list[Obj]]) -> None:
    spec = pod_spec(worker(rendered["gpu"]))
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    cpu_spec = pod_spec(worker(rendered["cpu"]))
    assert "nvidia.com/gpu" not in cpu_spec["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu_spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for obj in workloads(rendered[overlay]):
        spec = pod_spec(obj)
        name = obj["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == UID, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            assert sc["runAsNonRoot"] is True, name
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/tmp") in tmp, f"{name}: /tmp must be an emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_deployment(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    deployment = worker(objects)
    spec = pod_spec(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert spec["terminationGracePeriodSeconds"] > DRAIN_BUDGET_S
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys
    for constraint in spec["topologySpreadConstraints"]:
        assert matches(constraint["labelSelector"]["matchLabels"], labels)
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)

    # The ConfigMap the pods read is the generated one (hash-suffixed name).
    configmap = one(objects, "ConfigMap")
    (env_from,) = container(deployment)["envFrom"]
    assert env_from["configMapRef"]["name"] == configmap["metadata"]["name"]


# Where each Kafka secret is mounted: {volume: (Secret, mount path)}.
KAFKA_SECRET_MOUNTS = {
    "kafka-ca": ("modstream-kafka-ca", "/etc/modstream/kafka-ca"),
    "kafka-sasl": ("modstream-kafka-sasl", "/etc/modstream/kafka-sasl"),
    "kafka-client-tls": ("modstream-kafka-client-tls", "/etc/modstream/kafka-client-tls"),
}
# The file settings and the Secret key each must point at.
FILE_SETTINGS = {
    "MODSTREAM_SSL_CAFILE": ("kafka-ca", "ca.crt"),
    "MODSTREAM_SASL_PASSWORD_FILE": ("kafka-sasl", "password"),
    "MODSTREAM_SSL_CERTFILE": ("kafka-client-tls", "tls.crt"),
    "MODSTREAM_SSL_KEYFILE": ("kafka-client-tls", "tls.key"),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_secrets_are_mounted_files_the_settings_point_at(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    deployment = worker(objects)
    for c in pod_spec(deployment)["containers"]:
        for e in c.get("env", []):
            assert "secretKeyRef" not in e.get("valueFrom", {}), f"{e['name']}: a secret in env"
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    for volume, (secret, path) in KAFKA_SECRET_MOUNTS.items():
        assert volumes[volume]["secret"]["secretName"] == secret
        assert volumes[volume]["secret"]["optional"] is True, "no Secret: no such Kafka auth"
        assert volumes[volume]["secret"]["defaultMode"] == 0o440
        assert mounts[volume] == {"name": volume, "mountPath": path, "readOnly": True}
    settings = settings_map(objects)
    assert settings["MODSTREAM_SECURITY_PROTOCOL"] == SECURE_OVERLAYS.get(overlay, "PLAINTEXT")
    assert not any("PASSWORD=" in k or k.endswith("_PASSWORD") for k in settings)
    for name, (volume, key) in FILE_SETTINGS.items():
        if name not in settings:
            continue
        secret_volume = volumes[volume]["secret"]
        keys = [i["path"] for i in secret_volume.get("items", [])] or [key]
        assert key in keys, f"{name}: Secret {secret_volume['secretName']} key {key} not mounted"
        assert settings[name] == f"{KAFKA_SECRET_MOUNTS[volume][1]}/{key}"
    if overlay == "cpu-scram":
        assert {"MODSTREAM_SASL_PASSWORD_FILE", "MODSTREAM_SSL_CAFILE"} <= set(settings)
    if overlay == "cpu-mtls":
        assert {"MODSTREAM_SSL_CERTFILE", "MODSTREAM_SSL_KEYFILE"} <= set(settings)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_retrain_cronjob_reads_kafka_as_the_workers_do(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """It reads the feedback topic: the workers' settings (ConfigMap, so the kafka-*
    components' protocol and file paths too) and the same Secret volumes, mounted at the
    paths those settings name."""
    objects = rendered[overlay]
    deployment, cronjob = worker(objects), one(objects, "CronJob")
    assert container(cronjob)["envFrom"] == container(deployment)["envFrom"]
    worker_volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    volumes = {v["name"]: v for v in pod_spec(cronjob)["volumes"]}
    worker_mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    mounts = {m["name"]: m for m in container(cronjob)["volumeMounts"]}
    for volume in KAFKA_SECRET_MOUNTS:
        assert volumes[volume] == worker_volumes[volume]
        assert mounts[volume] == worker_mounts[volume]
    for c in pod_spec(cronjob)["containers"]:
        for e in c.get("env", []):
            assert "secretKeyRef" not in e.get("valueFrom", {}), f"{e['name']}: a secret in env"
    settings = settings_map(objects)
    file_settings = {name: settings[name] for name in FILE_SETTINGS if name in settings}
    for name, path in file_settings.items():
        volume, key = FILE_SETTINGS[name]
        assert path == f"{mounts[volume]['mountPath']}/{key}", name
        items = volumes[volume]["secret"].get("items", [])
        assert key in ([i["path"] for i in items] or [key]), f"{name}: {key} not mounted"
    if overlay in SECURE_OVERLAYS:
        assert settings["MODSTREAM_SECURITY_PROTOCOL"] == SECURE_OVERLAYS[overlay]
        assert "MODSTREAM_SSL_CAFILE" in file_settings, "the broker's CA, for TLS"
    else:
        assert not file_settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkpoints_shared_rwx_read_only_for_workers(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    checkpoint_dir = settings_map(objects)["MODSTREAM_CHECKPOINT_DIR"]
    assert checkpoint_dir.startswith(CHECKPOINT_MOUNT + "/")

    def claim_mount(obj: Obj) -> tuple[Obj, Obj]:
        volumes = pod_spec(obj)["volumes"]
        (volume,) = [v for v in volumes if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        (mount,) = [m for m in container(obj)["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["mountPath"] == CHECKPOINT_MOUNT
        return volume, mount

    volume, mount = claim_mount(worker(objects))
    assert mount["readOnly"] is True
    assert volume["persistentVolumeClaim"]["readOnly"] is True

    # Both writers work in the store whose `current` the workers load: the store layout
    # (versions/ + a `current` link) that `checkpoints promote` and rollback keep.
    from model.store_layout import store_root_for

    for writer in (one(objects, "CronJob"), one(objects, "Job")):
        volume, mount = claim_mount(writer)
        assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
        args = container(writer)["args"]
        assert args[0] == "retrain" and "--output" not in args
        assert args[args.index("--store") + 1] == str(store_root_for(checkpoint_dir))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_fresh_install_serves_without_a_manual_step(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """The first-model Job writes a model (only when there is none), and the workers
    wait for it in an init container, saying so, instead of exiting 3 in a loop."""
    objects = rendered[overlay]
    job = one(objects, "Job")
    assert "--if-missing" in container(job)["args"], "re-creating the Job must not retrain"
    assert "--feedback-topic" not in container(job)["args"], "a fresh cluster may have none"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0, "an immutable Job must go away"
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert container(job)["image"] == container(one(objects, "CronJob"))["image"]

    deployment = worker(objects)
    (wait,) = pod_spec(deployment)["initContainers"]
    assert wait["args"][:2] == ["checkpoints", "wait"]
    assert wait["image"] == container(deployment)["image"]
    (env_from,) = wait["envFrom"]
    assert env_from["configMapRef"]["name"] == one(objects, "ConfigMap")["metadata"]["name"]
    mounts = {m["mountPath"]: m for m in wait["volumeMounts"]}
    assert mounts[CHECKPOINT_MOUNT]["readOnly"] is True


def test_the_kafka_address_is_set_in_one_place(kustomize: Any, tmp_path: Any) -> None:
    """Editing base/settings.env alone moves the workers and KEDA to another cluster:
    the old address is left nowhere in the rendered manifests."""
    import shutil
    import subprocess

    import yaml

    from tests.deploy.conftest import K8S

    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    settings = copy / "base" / "settings.env"
    old = dict(line.split("=", 1) for line in settings.read_text().splitlines() if "=" in line)[
        "MODSTREAM_KAFKA_BOOTSTRAP"
    ]
    text = settings.read_text()
    for key, value in (
        ("MODSTREAM_KAFKA_BOOTSTRAP", "broker-0.example.net:9093"),
        ("MODSTREAM_GROUP_ID", "moderators"),
        ("MODSTREAM_INPUT_TOPIC", "requests.v2"),
    ):
        text = "\n".join(
            f"{key}={value}" if line.startswith(f"{key}=") else line for line in text.splitlines()
        )
    settings.write_text(text + "\n")
    for overlay in ("cpu", "gpu"):
        built = subprocess.run(
            [str(kustomize), "build", str(copy / "overlays" / overlay)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert old not in built, f"{overlay}: the old Kafka address is still somewhere"
        objects = [o for o in yaml.safe_load_all(built) if o]
        (trigger,) = one(objects, "ScaledObject")["spec"]["triggers"]
        assert trigger["metadata"]["bootstrapServers"] == "broker-0.example.net:9093"
        assert trigger["metadata"]["consumerGroup"] == "moderators"
        assert trigger["metadata"]["topic"] == "requests.v2"
        assert settings_map(objects)["MODSTREAM_KAFKA_BOOTSTRAP"] == "broker-0.example.net:9093"


def test_retrain_cronjob(rendered: dict[str, list[Obj]]) -> None:
    spec = one(rendered["cpu"], "CronJob")["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["successfulJobsHistoryLimit"] <= 5
    assert 0 < spec["failedJobsHistoryLimit"] <= 5
    assert spec["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "cpu-hpa"])
def test_keda_scales_on_input_topic_lag(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    settings = settings_map(objects)
    scaled = one(objects, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == worker(objects)["metadata"]["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= INPUT_PARTITIONS
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == settings["MODSTREAM_GROUP_ID"] == "modstream"
    assert meta["topic"] == settings["MODSTREAM_INPUT_TOPIC"] == "moderation.requests"
    assert meta["bootstrapServers"] == settings["MODSTREAM_KAFKA_BOOTSTRAP"]
    assert int(meta["lagThreshold"]) > 0
    assert not by_kind(objects, "HorizontalPodAutoscaler")
    if overlay not in SECURE_OVERLAYS:
        assert "authenticationRef" not in trigger
        return
    # KEDA connects as the worker does: TLS, the same mechanism, the same Secrets.
    assert meta["tls"] == "enable"
    mechanism = settings.get("MODSTREAM_SASL_MECHANISM")
    keda_names = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert meta.get("sasl") == (keda_names[mechanism] if mechanism else None)
    auth = one(objects, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs["ca"] == ("modstream-kafka-ca", "ca.crt")
    if mechanism:
        assert refs["password"] == ("modstream-kafka-sasl", "password")
    else:
        assert refs["cert"] == ("modstream-kafka-client-tls", "tls.crt")
        assert refs["key"] == ("modstream-kafka-client-tls", "tls.key")


def test_hpa_alternative_replaces_keda(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["cpu-hpa"]
    assert not by_kind(objects, "ScaledObject"), "KEDA and an HPA would fight over replicas"
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == worker(objects)["metadata"]["name"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= INPUT_PARTITIONS
    (metric,) = hpa["metrics"]
    assert metric["type"] == "External"
    selector = metric["external"]["metric"]["selector"]["matchLabels"]
    assert selector == {"consumergroup": "modstream", "topic": "moderation.requests"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_service_monitor_and_pdb_select_the_workers(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    labels = worker(objects)["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert matches(service["spec"]["selector"], labels)
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    monitor = one(objects, "ServiceMonitor")["spec"]
    assert matches(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert matches(pdb["selector"]["matchLabels"], labels)
    assert "maxUnavailable" in pdb, "minAvailable with one replica would block node drains"


def _ports(rules: list[Obj]) -> set[tuple[str, Any]]:
    return {(p["protocol"], p["port"]) for rule in rules for p in rule["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objects, "NetworkPolicy")}
    metrics_port = int(settings_map(objects)["MODSTREAM_METRICS_PORT"])

    worker_policy = policies["modstream-worker"]
    labels = worker(objects)["spec"]["template"]["metadata"]["labels"]
    assert matches(worker_policy["podSelector"]["matchLabels"], labels)
    assert sorted(worker_policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = worker_policy["ingress"]
    assert _ports([ingress]) == {("TCP", metrics_port)}
    (peer,) = ingress["from"]
    assert peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert _ports(worker_policy["egress"]) == {
        ("TCP", 9092),
        ("TCP", 9093),
        ("UDP", 53),
        ("TCP", 53),
    }
    for rule in worker_policy["egress"]:
        assert rule.get("to"), "egress rules must name their peers"

    cron_labels = one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]
    job_labels = one(objects, "Job")["spec"]["template"]["metadata"]
    retrain_policy = policies["modstream-retrain"]
    assert matches(retrain_policy["podSelector"]["matchLabels"], cron_labels["labels"])
    assert matches(retrain_policy["podSelector"]["matchLabels"], job_labels["labels"])
    assert sorted(retrain_policy["policyTypes"]) == ["Egress", "Ingress"]
    assert not retrain_policy.get("ingress"), "nothing connects to a retrain pod"
    # It reads the feedback topic: the worker's Kafka and DNS peers, nothing more.
    assert retrain_policy["egress"] == worker_policy["egress"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_names_cannot_shadow_settings(
    rendered: dict[str, list[Obj]], overlay: str, worker_settings: type[Any]
) -> None:
    """Service links inject `<NAME>_PORT`, `<NAME>_SERVICE_HOST`... into pods; such a name
    must never be a `MODSTREAM_*` setting, should enableServiceLinks ever be turned on."""
    fields = {"MODSTREAM_" + f.upper() for f in worker_settings.model_fields}
    for service in by_kind(rendered[overlay], "Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        for suffix in ("_PORT", "_SERVICE_HOST", "_SERVICE_PORT", "_SERVICE_PORT_METRICS"):
            assert prefix + suffix not in fields
