"""Readiness: of each served model, from the Serve controller's view of its deployment, and of
the whole service, watched in the background (`StageWatch`).

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
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployments.flow.catalogue import Catalogue

STAGES = ("preprocessor", "postprocessor")  # asked directly; models through Serve
HEALTH_EVERY_S = 1.0  # how often the Ingress asks every stage whether it answers
HEALTH_STALE_S = 5.0  # older than this, a probe asks the stages itself
HEALTH_TIMEOUT_S = 10.0
FIND_EVERY_S = 0.2  # the most often a request naming an unknown model refreshes the catalogue
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


def _stamp(status: Any) -> tuple[tuple[str, float, str], ...]:
    """What `serve.status()` says of every application that a config change would change."""
    return tuple(
        sorted(
            (name, float(app.last_deployed_time_s), _name(app.status))
            for name, app in status.applications.items()
        )
    )


def _name(value: Any) -> str:
    """A Serve status enum member's value ("RUNNING"), or the plain string it already is."""
    return str(getattr(value, "value", value))


ModelKey = tuple[str, str]  # a served model's name and version (`catalogue.ModelKey`)


SERVE_API_LOCK = threading.Lock()


def serve_status() -> Any:
    """`serve.status()`, one call at a time per process: building its answer registers and
    unregisters a module with cloudpickle, which two threads at once break (ValueError)."""
    from ray import serve

    with SERVE_API_LOCK:
        return serve.status()


class Readiness:
    """Each model version's `ModelState`, refreshed from one `serve.status()` call; first the
    catalogue, so a model application that came or went is routed, or no longer, within a
    second (`Catalogue`)."""

    def __init__(self, catalogue: Catalogue, status: Callable[[], Any]) -> None:
        self.catalogue = catalogue
        self._status = status
        self._states: dict[ModelKey, ModelState] = {}
        self._asking: asyncio.Task[bool] | None = None  # a refresh for requests, shared
        self._asked = 0.0  # when it started (monotonic)

    async def refresh(self) -> dict[ModelKey, ModelState]:
        """Ask the controller (off the event loop: the calls block); every model version's
        state."""
        status = await asyncio.to_thread(self._status)
        await asyncio.to_thread(self.catalogue.refresh, _stamp(status))
        states = {}
        for key, served in self.catalogue.view.served.items():
            app = status.applications.get(served.app)
            overview = app.deployments.get(served.deployment) if app is not None else None
            if overview is None:
                states[key] = ModelState(ready=False, state="unavailable")
                continue
            replicas = {_name(k): int(v) for k, v in overview.replica_states.items()}
            states[key] = model_state(_name(overview.status), replicas.get("RUNNING", 0))
        self._states = states
        return states

    async def refresh_catalogue(self) -> None:
        """The catalogue again, for a request that names a model not routed. Requests that
        arrive together share one refresh, and one starts at most every `FIND_EVERY_S`: a
        client sending unknown names cannot keep the controller busy."""
        task = self._asking
        if task is None or (task.done() and time.monotonic() - self._asked >= FIND_EVERY_S):
            self._asked = time.monotonic()
            task = self._asking = asyncio.get_running_loop().create_task(self._find())
        await asyncio.shield(task)

    async def _find(self) -> bool:
        status = await asyncio.to_thread(self._status)
        return await asyncio.to_thread(self.catalogue.refresh, _stamp(status))

    def states(self) -> dict[ModelKey, ModelState]:
        """The latest refresh's states (`unknown` for a version found since)."""
        return {key: self._states.get(key, UNKNOWN) for key in self.catalogue.view.served}


class StageWatch:
    """Whether the service is ready: every stage answers (`checks`, the Preprocessor's and the
    Postprocessor's `ready`) and every model is ready by `Readiness`.

    Probes are answered from the latest check, which a background task repeats every second: a
    probe never waits on the stages, so it stays fast under load.
    """

    def __init__(
        self, checks: Sequence[Callable[[], Awaitable[Any]]], readiness: Readiness
    ) -> None:
        self._checks = tuple(checks)
        self._readiness = readiness
        self._latest: tuple[float | None, str | None] = (None, None)  # (checked at, problem)
        self._watcher: asyncio.Task[None] | None = None

    async def problem(self) -> str | None:
        """None when the service is ready, else why not (transports format it)."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        checked_at, problem = self._latest
        if checked_at is None or time.monotonic() - checked_at > HEALTH_STALE_S:
            problem = await self.check()  # no recent check: the probe waits for one
        return problem

    def states(self) -> dict[ModelKey, ModelState]:
        """Every model version's state at the latest check."""
        return self._readiness.states()

    def state(self, key: ModelKey) -> ModelState:
        """One model version's state at the latest check (`unknown` before one)."""
        return self._readiness.states().get(key, UNKNOWN)

    async def refresh_catalogue(self) -> None:
        await self._readiness.refresh_catalogue()

    async def _watch(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(HEALTH_EVERY_S)

    async def check(self) -> str | None:
        """Ask the stages, and Serve for every model; None when all are ready, else what is
        not. Remembered."""
        checks = [check() for check in self._checks]
        problem: str | None = None
        try:
            await asyncio.wait_for(asyncio.gather(*checks), timeout=HEALTH_TIMEOUT_S)
            states = await asyncio.wait_for(self._readiness.refresh(), timeout=HEALTH_TIMEOUT_S)
            waiting = {f"{n} v{v}": s.state for (n, v), s in states.items() if not s.ready}
            if waiting:
                problem = f"models not ready: {waiting}"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            problem = repr(exc)
        self._latest = (time.monotonic(), problem)
        return problem
