"""Shared pytest fixtures for modstream.

Kafka: tests needing a broker request ``kafka_bootstrap`` (one real broker per
session, started lazily -- unit-only runs never start a JVM) and
``make_topics`` / ``topic_names`` for fresh, uniquely named topics so tests
never see each other's messages. Set ``MODSTREAM_KAFKA_BOOTSTRAP=host:port``
to use an existing broker instead of starting one. Any test using
``kafka_bootstrap`` is marked ``integration`` automatically, so
``pytest -m "not integration"`` reliably skips everything that needs Kafka.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_KAFKA_LOCAL_PATH = REPO_ROOT / "deploy" / "local" / "kafka_local.py"
_KAFKA_LOCAL_MODULE = "modstream_kafka_local"

#: ``make_topics(partitions=1, roles=("input", "output", "dead_letter")) -> {role: topic}``
MakeTopics = Callable[..., dict[str, str]]


def load_kafka_local() -> ModuleType:
    """Import ``deploy/local/kafka_local.py`` by path (``deploy/`` is not a package).

    Registered in ``sys.modules`` so every caller shares one module object
    (one atexit registration, one set of exception classes for ``except``).
    """
    cached = sys.modules.get(_KAFKA_LOCAL_MODULE)
    if cached is not None:
        return cached
    spec = importlib.util.spec_from_file_location(_KAFKA_LOCAL_MODULE, _KAFKA_LOCAL_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_KAFKA_LOCAL_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_KAFKA_LOCAL_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_KAFKA_LOCAL_MODULE]
        raise
    return module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that (transitively) needs a broker as ``integration``."""
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models score fastest single-threaded, especially on a busy shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_local() -> ModuleType:
    """The ``kafka_local`` module (LocalKafka, create_topics, ...)."""
    return load_kafka_local()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_local: ModuleType) -> Iterator[str]:
    """``host:port`` of a real Kafka broker shared by the whole session."""
    with kafka_local.broker_from_env() as bootstrap:
        yield str(bootstrap)


def _topic_base(nodeid: str) -> str:
    # Test name in the topic makes broker-side debugging easy; '.' and '_' are
    # avoided because Kafka warns that they collide in metric names.
    return re.sub(r"[^A-Za-z0-9-]+", "-", nodeid).strip("-")[:80] or "test"


@pytest.fixture
def make_topics(
    request: pytest.FixtureRequest, kafka_local: ModuleType, kafka_bootstrap: str
) -> Iterator[MakeTopics]:
    """Factory creating fresh topics for this test; they are deleted afterwards."""
    created: list[str] = []

    def factory(
        partitions: int = 1, roles: Sequence[str] = ("input", "output", "dead_letter")
    ) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:8]
        base = _topic_base(request.node.name)
        names = {role: f"{base}-{suffix}-{role.replace('_', '-')}" for role in roles}
        kafka_local.create_topics(kafka_bootstrap, list(names.values()), partitions)
        created.extend(names.values())
        return names

    yield factory
    if created:
        try:
            kafka_local.delete_topics(kafka_bootstrap, created)
        except Exception as err:  # cleanup must not mask the test's own result
            warnings.warn(f"could not delete test topics {created}: {err}", stacklevel=1)


@pytest.fixture
def topic_names(make_topics: MakeTopics) -> dict[str, str]:
    """Fresh single-partition ``input``/``output``/``dead_letter`` topics."""
    return make_topics()
