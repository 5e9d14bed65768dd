"""One local Ray cluster for the whole integration tier; each module deploys its own app."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.serve import context as serve_context

from tests.fixtures.models import CONTROL, GATE_NAMESPACE, Control
from tests.serving import METRICS_PORT, ROOT, port_open, wait_until

# Modules run in this order, not by name, for speed only: a deploy that changes the app's `args`
# restarts every replica after a new build (about 12 s here), one that changes a deployment's
# actor options restarts that deployment's replicas, and one that changes only user_config or
# scaling options updates them in place; so modules that deploy the same args run back to back.
# `INTEGRATION_ORDER=reverse` or `shuffle:<seed>` runs them in another order, to show that a
# module does not depend on the one before it. A module missing here runs after these, by name.
MODULE_ORDER = (
    "test_http",  # resnet18 with small limits ...
    "test_batching",  # ... the same, then the echo (tests.fixtures.models.ECHO) ...
    "test_client",  # ... which every module down to test_tracing serves
    "test_client_docs",
    "test_edge",
    "test_overload",
    "test_hostile_requests",
    "test_faults",  # its last test deletes the app
    "test_operations",  # restarts the Model, then the Ingress (their actor options)
    "test_tracing",  # restarts every replica (their runtime_env)
    "test_configs",
    "test_detection",  # six models, each by name (tests.serving.model_zoo_config) ...
    "test_segmentation",  # ... the same ...
    "test_hostile_images",  # ... the same ...
    "test_gpu_decode",  # ... the same, whose two shipped detectors decode apart
    "test_shipped_detector",  # the shipped two-model config ...
    "test_shipped_segmenter",
    "test_models",  # ... the same, with the segmenter let go to zero
    "test_v2_oip",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)

    def rank(item: pytest.Item) -> tuple[int, str]:
        if "tests/integration/" not in str(item.path):
            return (-1, "")  # the unit tier first, as collected
        name = item.path.stem
        return (MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER), name)

    items.sort(key=rank)  # stable: tests keep their order within a module
    order = os.environ.get("INTEGRATION_ORDER", "")
    if order:
        _reorder(items, order)


def _reorder(items: list[pytest.Item], order: str) -> None:
    """The integration modules in reverse or shuffled order; tests keep theirs within a module."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        if "tests/integration/" in str(item.path):
            modules.setdefault(item.path.stem, []).append(item)
    names = list(modules)
    if order == "reverse":
        names.reverse()
    elif order.startswith("shuffle:"):
        random.Random(int(order.split(":", 1)[1])).shuffle(names)
    else:
        raise pytest.UsageError(f"INTEGRATION_ORDER={order!r}: use reverse or shuffle:<seed>")
    first = len(items) - sum(len(m) for m in modules.values())  # the unit tiers come first
    items[first:] = [item for name in names for item in modules[name]]


@pytest.fixture(scope="session", autouse=True)
def ray_cluster() -> Iterator[None]:
    # Logical CPUs exceed the two physical cores on purpose: replicas mostly wait on each other.
    ray.init(
        address="local",  # a new cluster, never one found on the machine
        num_cpus=16,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
        # Ray exports metrics every 10 s by default; every second here, so a test that reads them
        # waits seconds, not tens of seconds.
        _system_config={"metrics_report_interval_ms": 1000},
        runtime_env={"working_dir": None, "env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        yield
    finally:
        # The cluster goes, every process of it (HAProxy too), without serve.shutdown()'s
        # graceful drain of every replica (about 9 s for nothing). The handles this process
        # holds go first: a router left behind would start a new Ray to report its metrics.
        client = serve_context._get_global_client(raise_if_no_controller_running=False)
        if client is not None:
            client.shutdown_cached_handles()
        serve_context._set_global_client(None)
        ray.shutdown()
        wait_until(lambda: not port_open(8000), 60, "the test cluster's edge to close port 8000")


@pytest.fixture(scope="session", autouse=True)
def _control(ray_cluster: None) -> Any:
    """The `Control` actor that `ECHO` reads at every forward pass, there from the start."""
    return Control.options(name=CONTROL, namespace=GATE_NAMESPACE, lifetime="detached").remote()


@pytest.fixture
def echo_control(_control: Any) -> Iterator[Any]:
    """The `Control` actor of `CONTROLLED_ECHO`; whatever a test sets is reset when it ends."""
    try:
        yield _control
    finally:
        ray.get(_control.set.remote())
