"""Readiness of each served model, from the Serve controller's view of its deployment.

A model is asked nothing here: a probe that called a Model every second would count as traffic
and keep a scale-to-zero model from ever reaching zero. Serve's controller already knows whether
a replica has finished its constructor (the weights and a warm-up forward pass) and passes its
health checks (`Model.check_health`), so a RUNNING replica is a warm one.

    running replicas > 0                     ready      "ready"
    none, deployment HEALTHY                 ready      "scaled_to_zero"  (min_replicas: 0)
    none, deployment UPSCALING               ready      "waking"          (a request started one)
    none, UPDATING                           not ready  "warming"         (first replica loading)
    none, anything else (UNHEALTHY, ...)     not ready  "unavailable"

A model at zero counts as ready, as a scaled-to-zero KServe model does: it accepts requests,
and the first one waits for the cold start (README: "Several models").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_AT_ZERO = {"HEALTHY": "scaled_to_zero", "UPSCALING": "waking", "DOWNSCALING": "scaled_to_zero"}


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model's readiness as the probes report it."""

    ready: bool
    state: str
    replicas: int = 0  # RUNNING replicas

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "state": self.state, "replicas": self.replicas}


UNKNOWN = ModelState(ready=False, state="unknown")


def model_state(deployment_status: str | None, running: int) -> ModelState:
    """The table above, for one deployment's status and its count of RUNNING replicas."""
    if running > 0:
        return ModelState(ready=True, state="ready", replicas=running)
    if deployment_status in _AT_ZERO:
        return ModelState(ready=True, state=_AT_ZERO[deployment_status])
    if deployment_status == "UPDATING":
        return ModelState(ready=False, state="warming")
    return ModelState(ready=False, state="unavailable")


def _name(value: Any) -> str:
    """A Serve status enum member's value ("RUNNING"), or the plain string it already is."""
    return str(getattr(value, "value", value))


class Readiness:
    """Each model's `ModelState`, refreshed from one `serve.status()` call."""

    def __init__(self, app: str, deployments: Mapping[str, str], status: Callable[[], Any]) -> None:
        self._app = app
        self._deployments = dict(deployments)  # served model name -> its Serve deployment
        self._status = status
        self._states: dict[str, ModelState] = dict.fromkeys(self._deployments, UNKNOWN)

    async def refresh(self) -> dict[str, ModelState]:
        """Ask the controller once (off the event loop: the call blocks); every model's state."""
        status = await asyncio.to_thread(self._status)
        app = status.applications.get(self._app)
        found = app.deployments if app is not None else {}
        states = {}
        for model, deployment in self._deployments.items():
            overview = found.get(deployment)
            if overview is None:
                states[model] = ModelState(ready=False, state="unavailable")
                continue
            replicas = {_name(k): int(v) for k, v in overview.replica_states.items()}
            states[model] = model_state(_name(overview.status), replicas.get("RUNNING", 0))
        self._states = states
        return states

    def states(self) -> dict[str, ModelState]:
        """The latest refresh's states (`unknown` before the first)."""
        return dict(self._states)
