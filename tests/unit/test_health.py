"""Model readiness from the Serve controller's view (deployments/flow/health.py), without Ray."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.flow.catalogue import Catalogue, Served
from deployments.flow.health import Readiness, model_state
from tests import settings


@pytest.mark.parametrize(
    ("status", "running", "ready", "state"),
    [
        ("HEALTHY", 2, True, "ready"),
        ("UPDATING", 1, True, "ready"),  # a rolling update still serves from the old replica
        ("HEALTHY", 0, True, "scaled_to_zero"),
        ("UPSCALING", 0, True, "waking"),
        ("UPDATING", 0, False, "warming"),
        ("UNHEALTHY", 0, False, "unavailable"),
        ("DEPLOY_FAILED", 0, False, "unavailable"),
        (None, 0, False, "unavailable"),
    ],
)
def test_model_state(status: str | None, running: int, ready: bool, state: str) -> None:
    found = model_state(status, running)
    assert (found.ready, found.state, found.replicas) == (ready, state, running)


def _status(deployments: dict[str, tuple[str, dict[str, int]]]) -> Any:
    overviews = {
        name: SimpleNamespace(status=status, replica_states=replicas)
        for name, (status, replicas) in deployments.items()
    }
    app = SimpleNamespace(deployments=overviews, last_deployed_time_s=0.0, status="RUNNING")
    return SimpleNamespace(applications={"vision": app})


def test_readiness_maps_each_model_to_its_deployment() -> None:
    status = _status(
        {
            "Model": ("HEALTHY", {"RUNNING": 1, "STOPPING": 1}),
            "Model-seg": ("UPDATING", {"STARTING": 1}),
        }
    )
    deployments = {
        ("det", "2"): "Model",
        ("det", "1"): "Model-v1",  # another version live beside the latest
        ("seg", "1"): "Model-seg",
        ("gone", "1"): "X",
    }
    bound = {
        key: Served(settings.card(*key), None, "vision", deployment)
        for key, deployment in deployments.items()
    }
    readiness = Readiness(Catalogue("vision", bound), lambda: status)
    assert {n: s.state for n, s in readiness.states().items()} == dict.fromkeys(
        deployments, "unknown"
    )
    states = asyncio.run(readiness.refresh())
    assert {n: (s.ready, s.state, s.replicas) for n, s in states.items()} == {
        ("det", "2"): (True, "ready", 1),
        ("det", "1"): (False, "unavailable", 0),
        ("seg", "1"): (False, "warming", 0),
        ("gone", "1"): (False, "unavailable", 0),
    }
    assert readiness.states() == states
