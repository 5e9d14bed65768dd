"""What every transport shares: the settings, the one request wrapper and auth.

A transport (`v1`, `oip_rest`, `oip_grpc`, `handle`) parses what it receives into `Item`s for the
one `Caller` and formats what comes back in its own shape. The rest of a request is written here
once: the body reservation, the deadline, auth, the `VisionError` / disconnect / failure ladder
and the release (`Front.guarded`). The headers an HTTP error response adds are
`http_io.error_headers`, for both HTTP transports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from starlette.requests import ClientDisconnect

from deployments import tasks
from deployments.errors import BadRequest, Unauthorized, UnknownModel, VisionError
from deployments.flow.caller import Caller
from deployments.flow.catalogue import Catalogue, ModelCard
from deployments.flow.health import ModelState, StageWatch
from deployments.items import Item, ModelInfo, Options, new_item_id
from deployments.settings import Bundles, Limits, Poison
from deployments.transports.auth import authorized
from deployments.transports.http_io import BodyBudget, Reservation, deadline_from

logger = logging.getLogger("ray.serve")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class IngressSettings:
    """What the Ingress is built with: its bound models' cards, and serve_config.yaml's settings
    as-is."""

    cards: tuple[ModelCard, ...]  # every version of every bound model (`models:`)
    default_model: str  # what /v1/predict and the handle API run when no model is named
    limits: Limits  # `limits:`: bodies, images and parts per request, bodies held at once
    request_timeout_s: float  # default deadline when a request states none
    max_request_timeout_s: float  # a request may ask for more; it gets this
    bundles: Bundles
    poison: Poison
    retry_after_s: int  # the Retry-After of the Ingress's own 503s


class Front:
    """One Ingress replica's shared state and the steps every transport takes with a request."""

    def __init__(
        self,
        caller: Caller,
        settings: IngressSettings,
        health: StageWatch,
        catalogue: Catalogue,
        api_key: str | None,
    ) -> None:
        self.caller = caller
        self.settings = settings
        self.health = health
        self.catalogue = catalogue
        self.budget = BodyBudget(settings.limits.max_body_bytes_in_flight)
        self._api_key = api_key  # never logged or echoed

    # What is routed, from the catalogue's current view (replaced whole when a model application
    # comes or goes, so one request reads one state through these).
    @property
    def versions(self) -> dict[str, tuple[str, ...]]:
        """Every version of each served model, by name."""
        return self.catalogue.view.versions

    @property
    def latest(self) -> dict[str, str]:
        """Each served model's latest version, by name."""
        return self.catalogue.view.latest

    @property
    def tasks(self) -> dict[str, tasks.Task]:
        """Each served model's task, by name."""
        return self.catalogue.view.tasks

    async def find(self, name: str | None) -> None:
        """Ask the controller again when a request names a model (None: the default) this
        replica does not route: a model application loaded a moment ago, which another Ingress
        replica loaded or which came by config (at most once a second)."""
        name = self.settings.default_model if name is None else name
        if name not in self.catalogue.view.versions:
            await self.health.refresh_catalogue()

    async def guarded(
        self,
        request_id: str,
        work: Callable[[Reservation], Awaitable[R]],
        error: Callable[[VisionError], R],
        failed: VisionError,
        gone: str = "the client disconnected before sending the whole body",
    ) -> R:
        """`work` with a body reservation that is released once it has answered; a
        `VisionError` (a client's mistake, or a 503 from the body budget), a client that left
        mid-body (400, `gone`) or any other failure (logged; `failed`) becomes `error(...)`."""
        reservation = self.budget.reservation()
        try:
            return await work(reservation)
        except VisionError as exc:
            return error(exc)
        except ClientDisconnect:
            logger.info("request %s: the client left before its body arrived", request_id)
            return error(BadRequest(gone))
        except Exception:
            logger.exception("request %s failed", request_id)
            return error(failed)
        finally:
            reservation.release()

    def authorize(self, credential: str | None, how: str = "'Authorization: Bearer <key>'") -> None:
        """`Unauthorized` (401) unless auth is off or `credential` carries the API key; `how`
        tells the client where this transport expects it."""
        if self._api_key and not authorized(credential, self._api_key):
            raise Unauthorized(f"a valid API key is required: send {how}")

    def model_named(self, name: str | None) -> str:
        """A served model's name (the default for None); `UnknownModel` (404) for any other."""
        name = self.settings.default_model if name is None else name
        if name not in self.versions:
            served = ", ".join(sorted(self.versions)) or "none"
            raise UnknownModel(f"no model is served as {name[:100]!r}; served: {served}")
        return name

    def version_named(self, name: str, version: str | None) -> str:
        """The served version of `name` a request names (None or "": the latest); `UnknownModel`
        (404), naming the versions there are, for any other."""
        view = self.catalogue.view
        if not version:
            return view.latest[name]
        versions = view.versions[name]
        if version not in versions:
            raise UnknownModel(
                f"model {name[:100]!r} has no version {version[:100]!r}; its versions are "
                f"{', '.join(versions)} (or leave the version out for the latest, "
                f"{view.latest[name]})"
            )
        return version

    def deadline(self, timeout_s: str | float | None, name: str = "timeout_s") -> float:
        """The deadline for a timeout a caller sent as `name` (None: the configured default)."""
        settings = self.settings
        return deadline_from(
            timeout_s,
            settings.request_timeout_s,
            time.time(),
            settings.max_request_timeout_s,
            name=name,
        )

    def options(
        self,
        model: str,
        given: Mapping[str, int | float | str | None] | Sequence[tuple[str, str | int | float]],
        version: str | None = None,
    ) -> Options:
        """`given` validated by the model's task, for `version` (None: the latest)."""
        card = self.catalogue.view.card(model, self.version_named(model, version))
        return tasks.parse_options(given, tasks.get(card.task), card.max_candidates)

    def item(
        self,
        data: bytes,
        options: Options,
        request_id: str,
        deadline: float,
        model: str,
        version: str | None = None,
    ) -> Item:
        """One image for `model` at `version`: one the client named (only it may answer), or,
        for None, the latest (whichever version its deployment runs answers)."""
        return Item(
            item_id=new_item_id(),
            request_id=request_id,
            data=data,
            options=options,
            deadline=deadline,
            model=model,
            version=self.version_named(model, version),
            pinned=bool(version),
        )

    async def readiness(self) -> str | None:
        """None when every stage and model is ready, else why not."""
        return await self.health.problem()

    async def model_state(self, name: str, version: str | None = None) -> ModelState:
        """One model version's latest readiness (None: the latest; `UnknownModel` for a name or
        version not served)."""
        await self.find(name)
        name = self.model_named(name)
        version = self.version_named(name, version)
        await self.health.problem()  # a fresh check when none ran lately
        state = self.health.state((name, version))
        if state.state == "unknown":  # found since the latest check (a model just loaded)
            await self.health.check()
            state = self.health.state((name, version))
        return state

    async def describe(self, model: str | None = None, version: str | None = None) -> ModelInfo:
        """What the named model version's replica reports about itself (it starts one if at
        zero; None: the default model, the latest version)."""
        await self.find(model)
        name = self.model_named(model)
        served = self.catalogue.view.served[(name, self.version_named(name, version))]
        info: ModelInfo = await served.handle.options(method_name="describe").remote()
        return info
