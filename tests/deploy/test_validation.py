"""Schema validation and security scanning of the rendered manifests, without a cluster.

- Built-in kinds: kubernetes-validate (its bundled OpenAPI schemas, strict mode, so an
  unknown field fails) for each Kubernetes version in K8S_VERSIONS.
- Custom resources (KEDA ScaledObject, ServiceMonitor): deploy/tools/crdcheck with the
  npm packages generated from the upstream API types: schema plus unknown fields.
- checkov over the rendered manifests and the Dockerfile: no failed check. Skips are
  allowed only inline with a reason (`checkov.io/skipN` annotations, `#checkov:skip=`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    DEPLOY,
    K8S_VERSIONS,
    OVERLAYS,
    Obj,
    require,
    require_command,
    tool_versions,
    tools_dir,
)

CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
#: Every checkov check skipped anywhere, with the reason given inline where it is skipped.
ALLOWED_SKIPS = {
    "CKV_K8S_43": "images by tag in git; digests are pinned at release time",
}


def is_custom(obj: Obj) -> bool:
    return str(obj["apiVersion"]).startswith(CRD_GROUPS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_match_kubernetes_schemas(
    rendered: dict[str, list[Obj]], overlay: str, version: str
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    errors = []
    for obj in rendered[overlay]:
        if is_custom(obj):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except Exception as exc:  # the library's ValidationError and SchemaNotFoundError
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


def test_kubernetes_validate_catches_unknown_fields(rendered: dict[str, list[Obj]]) -> None:
    """Guard against a silently lenient validator (strict mode really is strict)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = next(o for o in rendered["cpu"] if o["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def run_crdcheck(objects: list[Obj]) -> tuple[int, list[dict[str, Any]]]:
    node = require_command("node")
    modules = require(tools_dir() / "crdcheck" / "node_modules", "crdcheck npm packages")
    proc = subprocess.run(
        [node, str(DEPLOY / "tools" / "crdcheck" / "check.mjs"), str(modules)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_custom_resources_match_their_schemas(rendered: dict[str, list[Obj]]) -> None:
    objects = [o for objs in rendered.values() for o in objs if is_custom(o)]
    code, results = run_crdcheck(objects)
    problems = [r for r in results if r["status"] != "valid"]
    assert code == 0 and not problems, json.dumps(problems, indent=2)
    kinds = {r["kind"] for r in results}
    assert kinds == {"ScaledObject", "ServiceMonitor", "TriggerAuthentication"}


def test_crdcheck_rejects_bad_custom_resources(rendered: dict[str, list[Obj]]) -> None:
    scaled = next(o for o in rendered["cpu"] if o["kind"] == "ScaledObject")
    monitor = next(o for o in rendered["cpu"] if o["kind"] == "ServiceMonitor")
    wrong_type = json.loads(json.dumps(scaled))
    wrong_type["spec"]["maxReplicaCount"] = "six"
    typo = json.loads(json.dumps(monitor))
    typo["spec"]["endpoints"][0]["intervall"] = "15s"
    code, results = run_crdcheck([wrong_type, typo])
    assert code == 1
    assert [r["status"] for r in results] == ["invalid", "invalid"]
    assert "maxReplicaCount" in results[0]["errors"][0]
    assert results[1]["errors"] == ["ServiceMonitor.spec.endpoints[0].intervall: unknown field"]


@pytest.fixture(scope="module")
def checkov_report(rendered: dict[str, list[Obj]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    version = tool_versions()["CHECKOV_VERSION"]
    checkov = require(tools_dir() / f"checkov-{version}" / "bin" / "checkov", f"checkov {version}")
    out = tmp_path_factory.mktemp("rendered")
    for overlay, objects in rendered.items():
        (out / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects), encoding="utf-8")
    # One directory scan (checkov ignores --file next to --directory).
    (out / "Dockerfile").write_text((DEPLOY / "Dockerfile").read_text("utf-8"), "utf-8")
    proc = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(out),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=out,
    )
    assert proc.stdout.strip(), proc.stderr
    report = json.loads(proc.stdout)
    return report if isinstance(report, list) else [report]


def test_checkov_finds_nothing(checkov_report: Any) -> None:
    frameworks = {r["check_type"] for r in checkov_report}
    assert frameworks == {"kubernetes", "dockerfile"}
    failed = [
        f"{c['check_id']} {c['check_name']} on {c['resource']} ({Path(c['file_path']).name})"
        for r in checkov_report
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    for r in checkov_report:
        assert r["summary"]["passed"] > 0
        assert r["summary"]["parsing_errors"] == 0


def test_checkov_skips_are_justified(checkov_report: Any) -> None:
    skipped = [c for r in checkov_report for c in r["results"]["skipped_checks"]]
    for check in skipped:
        assert check["check_id"] in ALLOWED_SKIPS, f"undocumented skip {check['check_id']}"
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']}: no reason"
