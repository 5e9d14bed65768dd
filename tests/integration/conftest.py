"""One local Ray cluster for the whole integration tier; each module deploys its own app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
from ray import serve

from tests.serving import METRICS_PORT, ROOT


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def ray_cluster() -> Iterator[None]:
    # Logical CPUs exceed the two physical cores on purpose: replicas mostly wait on each other.
    ray.init(
        address="local",  # a new cluster, never one found on the machine
        num_cpus=16,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
        runtime_env={"working_dir": None, "env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()
