"""Loading and unloading models while serving: the model repository's write side.

A model that comes and goes is a model application (`catalogue`): its own Serve application,
one `Model` deployment. Loading one adds its application to the controller's config, unloading
removes it; every other application is submitted again exactly as it is, so Serve restarts
nothing else (an application restarts only when its own config changes).

- **The repository** is every model application of this front: those deployed, and those
  unloaded since, whose configs are parked in Ray's key-value store so that `load` brings them
  back as they were. A model loaded with a `config` (Triton's `load_model(name, config=...)`)
  joins it.
- **What a loaded config may name** is bounded: a factory (`package.module:factory`) or a
  weights file only if a model of this front's config already names it, so a management key
  cannot make the cluster import code or read files the operator did not deploy.
- **Management is its own key** (`auth.MANAGEMENT_KEY_ENV`): without one, load and unload are
  refused (403), whatever the inference key.
- On KubeRay, a change lasts until the operator next submits `serveConfigV2` (a changed
  RayService), as a Triton server's explicit loads last until it restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.errors import BadRequest, DeadlineExceeded, Forbidden, Unauthorized, UnknownModel
from deployments.flow.catalogue import (
    KV_NAMESPACE,
    MODEL_APP_BUILDER,
    MODEL_DEPLOYMENT,
    MODEL_NAME_PATTERN,
    MODEL_VERSION_PATTERN,
    Catalogue,
    is_model_app,
)
from deployments.flow.health import SERVE_API_LOCK, serve_status
from deployments.runtime.spec import ModelSpec
from deployments.transports.auth import authorized

logger = logging.getLogger("ray.serve")

MAX_CONFIG_BYTES = 65536
# Model applications a front keeps, loaded and parked together: a management key cannot fill
# the key-value store or the controller's config without bound.
MAX_MODEL_APPS = 64
POLL_S = 0.25


def serve_client() -> Any:
    """The Serve controller's client of this process (a replica has one)."""
    from ray.serve.context import _get_global_client

    return _get_global_client()


def app_configs() -> dict[str, dict[str, Any]]:
    """Every application the controller was given by config, as the config has it. Blocks."""
    import ray

    found = ray.get(serve_client()._controller.get_app_configs.remote())
    return {name: schema.model_dump(exclude_unset=True) for name, schema in found.items()}


def model_handle(deployment: str, app: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=app)


class LoadConfig(BaseModel):
    """The `config` a load may carry: the model application's args and its Model's options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(default="1", pattern=MODEL_VERSION_PATTERN)
    model: ModelSpec
    # The Model deployment's Serve options (autoscaling, resources, user_config, ...); left
    # out: those of a model application of this front, or of its bound `Model`.
    deployment: dict[str, Any] | None = None


def _parked_key(front: str, app: str) -> bytes:
    return f"parked/{front}/{app}".encode()


class Repository:
    """One Ingress replica's side of load and unload (`OipRepository` calls it)."""

    def __init__(
        self,
        catalogue: Catalogue,
        management_key: str | None,
        client: Callable[[], Any] = serve_client,
        configs: Callable[[], Mapping[str, Mapping[str, Any]]] = app_configs,
        kv: Any = None,
    ) -> None:
        self._catalogue = catalogue
        self._key = management_key  # never logged or echoed
        self._client = client
        self._configs = configs
        self._kv = kv
        self._lock = asyncio.Lock()  # one change at a time from this replica

    def authorize(self, credential: str | None) -> None:
        """403 while management is off (no key configured: fail closed), 401 without the key."""
        if self._key is None:
            raise Forbidden(
                "model management is off: set VISION_MANAGEMENT_KEY (or VISION_MANAGEMENT_KEY_FILE)"
                " on the Ingress to load and unload models"
            )
        if not authorized(credential, self._key):
            raise Unauthorized(
                "loading and unloading need the management key: send 'Authorization: Bearer "
                "<management key>'"
            )

    # --- the key-value store of parked (unloaded) model applications --------------------------

    def _store(self) -> Any:
        if self._kv is None:
            from ray.experimental import internal_kv

            self._kv = internal_kv
        return self._kv

    def parked(self) -> dict[str, dict[str, Any]]:
        """Unloaded model applications of this front, by application name. Blocks."""
        kv = self._store()
        prefix = _parked_key(self._catalogue.front, "")
        out = {}
        for key in kv._internal_kv_list(prefix, namespace=KV_NAMESPACE):
            raw = kv._internal_kv_get(key, namespace=KV_NAMESPACE)
            if raw is not None:
                out[key[len(prefix) :].decode()] = json.loads(raw)
        return out

    def _park(self, app: str, config: Mapping[str, Any]) -> None:
        self._store()._internal_kv_put(
            _parked_key(self._catalogue.front, app),
            json.dumps(config).encode(),
            overwrite=True,
            namespace=KV_NAMESPACE,
        )

    def _unpark(self, app: str) -> None:
        self._store()._internal_kv_del(
            _parked_key(self._catalogue.front, app), namespace=KV_NAMESPACE
        )

    # --- load and unload -------------------------------------------------------------------

    async def load(self, name: str, config: str | None, deadline: float) -> str:
        """Serve `name` (its parked applications, or `config`); returns once it is routed.

        Raises: `UnknownModel` (404) for a name the repository lacks and no config,
        `BadRequest` for a config that cannot be served (its build failed), `DeadlineExceeded`
        when it is still starting at the deadline.
        """
        async with self._lock:
            adding = await asyncio.to_thread(self._plan_load, name, config)
            # An application unloaded a moment ago may still be stopping: it goes first.
            await self._wait(list(adding), deadline, loaded=False, gone=True)
            apps = await asyncio.to_thread(self._submit_load, name, adding)
            await self._wait(apps, deadline, loaded=True)
        return f"model {name!r} is loaded" if apps else f"model {name!r} was already loaded"

    async def unload(self, name: str, deadline: float) -> str:
        """Stop serving `name` (every version its own application serves); it stays in the
        repository, parked, for a later `load`. Returns once no request is routed to it; its
        replicas stop once they have answered what they hold (Triton's unload is as
        asynchronous)."""
        async with self._lock:
            apps = await asyncio.to_thread(self._submit_unload, name)
            await self._wait(apps, deadline, loaded=False)
        return f"model {name!r} is unloaded" if apps else f"model {name!r} was not loaded"

    def _mine(self, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        front = self._catalogue.front
        return {app: c for app, c in configs.items() if is_model_app(c, front)}

    def _plan_load(self, name: str, config: str | None) -> dict[str, Mapping[str, Any]]:
        """The applications a load adds (none: the model is loaded already), checked."""
        configs = dict(self._configs())
        parked = {a: c for a, c in self.parked().items() if c["args"]["name"] == name}
        adding: dict[str, Mapping[str, Any]]
        if config is not None:
            entry = self._new_app(name, config, configs)
            adding = {entry["name"]: entry}
        elif parked:
            adding = dict(parked)
        elif name in self._catalogue.view.versions:
            return {}  # Triton's load of a loaded model: nothing to change
        else:
            raise UnknownModel(
                f"model {name[:100]!r} is not in the repository: load it with a `config` "
                '({"version": "1", "model": {"name": ..., "weights": ...}}) to add it'
            )
        bound = self._bound(name, adding)
        if bound:
            raise BadRequest(bound)
        return adding

    def _submit_load(self, name: str, adding: Mapping[str, Mapping[str, Any]]) -> list[str]:
        if not adding:
            return []
        configs = dict(self._configs())
        configs.update(adding)
        self._deploy(configs)
        for app in adding:
            self._unpark(app)
        logger.info("model %s: loading application(s) %s", name, sorted(adding))
        return sorted(adding)

    def _submit_unload(self, name: str) -> list[str]:
        configs = dict(self._configs())
        apps = sorted(a for a, c in self._mine(configs).items() if c["args"]["name"] == name)
        if not apps:
            view = self._catalogue.view
            if any(s.card.name == name and not s.own_app for s in view.served.values()):
                raise BadRequest(
                    f"model {name[:100]!r} is bound into the application "
                    f"{self._catalogue.front!r} (its args.models): remove it there and "
                    "redeploy, or serve it as a model application to unload it alone"
                )
            if any(c["args"]["name"] == name for c in self.parked().values()):
                return []
            raise UnknownModel(f"model {name[:100]!r} is not in the repository")
        for app in apps:
            self._park(app, configs.pop(app))
        self._deploy(configs)
        logger.info("model %s: unloading application(s) %s", name, apps)
        return apps

    def _bound(self, name: str, adding: Mapping[str, Mapping[str, Any]]) -> str | None:
        for entry in adding.values():
            key = (name, str(entry["args"].get("version", "1")))
            served = self._catalogue.view.served.get(key)
            if served is not None and not served.own_app:
                return (
                    f"model {name[:100]!r} version {key[1]!r} is bound into the application "
                    f"{self._catalogue.front!r}; load another version"
                )
        return None

    def _new_app(
        self, name: str, text: str, configs: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        """The application a load's `config` asks for, checked against what is deployed."""
        if not re.match(MODEL_NAME_PATTERN, name):
            raise BadRequest(
                f"model name {name[:100]!r} must be lower-case letters, digits, '.', '_' or '-' "
                "(at most 63)"
            )
        if len(text.encode()) > MAX_CONFIG_BYTES:
            raise BadRequest(f"the load's config is over {MAX_CONFIG_BYTES} bytes")
        try:
            asked = LoadConfig.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                for e in exc.errors()
            )
            raise BadRequest(f"the load's config is not valid: {problems}") from None
        mine = {**self._mine(configs), **self.parked()}
        app = f"{self._catalogue.front}-{name}-v{asked.version}"
        if app not in mine and len(mine) >= MAX_MODEL_APPS:
            raise BadRequest(
                f"this service holds {len(mine)} model applications, loaded or unloaded, the "
                f"most it keeps ({MAX_MODEL_APPS}): unload and remove some from the config first"
            )
        front = configs.get(self._catalogue.front, {})
        known_specs = [c["args"]["model"] for c in mine.values()] + list(
            front.get("args", {}).get("models", [])
        )
        known_specs = [s.get("model", s) for s in known_specs]
        _check_known(asked.model, known_specs)
        deployment = asked.deployment
        if deployment is None:
            deployment = _model_options(mine, front)
        import_path = next(
            (c["import_path"] for c in mine.values()),
            str(front.get("import_path", "vision_serve.graph:build_app")).rsplit(":", 1)[0]
            + ":"
            + MODEL_APP_BUILDER.rsplit(":", 1)[1],
        )
        entry: dict[str, Any] = {
            "name": app,
            "route_prefix": None,
            "import_path": import_path,
            "args": {
                "front": self._catalogue.front,
                "name": name,
                "version": asked.version,
                "model": asked.model.model_dump(mode="json", exclude_unset=True),
            },
            "deployments": [{**deployment, "name": MODEL_DEPLOYMENT}],
        }
        if front.get("runtime_env"):
            entry["runtime_env"] = front["runtime_env"]
        if app in configs and not is_model_app(configs[app], self._catalogue.front):
            raise BadRequest(f"an application named {app!r} exists and serves no model")
        return entry

    def _deploy(self, configs: Mapping[str, Mapping[str, Any]]) -> None:
        """Submit every application again, changed ones changed: Serve restarts only those."""
        from ray.serve.schema import ServeDeploySchema

        client = self._client()
        with SERVE_API_LOCK:  # Serve's schemas are not safe to build from two threads at once
            target_capacity = client.get_serve_details().get("target_capacity")
            schema = ServeDeploySchema.model_validate(
                {"applications": list(configs.values()), "target_capacity": target_capacity}
            )
            client.deploy_apps(schema, _blocking=False)

    async def _wait(
        self, apps: list[str], deadline: float, loaded: bool, gone: bool = False
    ) -> None:
        """Until each of `apps` runs (`loaded`) or is routed no more, and this replica's
        catalogue says so; `gone`: until Serve has deleted each of them."""
        while apps:
            status = await asyncio.to_thread(serve_status)
            found = {a: status.applications.get(a) for a in apps}
            if gone:
                if all(s is None for s in found.values()):
                    return
                done = False
            elif loaded:
                failed = {
                    a: s.message for a, s in found.items() if s and s.status == "DEPLOY_FAILED"
                }
                if failed:
                    await asyncio.to_thread(self._roll_back, list(failed))
                    raise BadRequest(f"the model could not be loaded: {failed}")
                done = all(s is not None and s.status == "RUNNING" for s in found.values())
            else:
                done = True  # out of the config: no longer routed once the catalogue knows
            if done:
                await asyncio.to_thread(self._catalogue.refresh)
                routed = {s.app for s in self._catalogue.view.served.values()}
                if all((a in routed) == loaded for a in apps):
                    return
            if time.time() >= deadline:
                raise DeadlineExceeded(
                    f"{'loading' if loaded else 'unloading'} goes on after this request's "
                    "deadline: poll the model's readiness or the repository index"
                )
            await asyncio.sleep(POLL_S)

    def _roll_back(self, apps: list[str]) -> None:
        configs = dict(self._configs())
        for app in apps:
            configs.pop(app, None)
        self._deploy(configs)


def _check_known(spec: ModelSpec, known: list[Mapping[str, Any]]) -> None:
    """A load may name a factory or weights file only if the deployed config already does."""
    names = {s.get("name") for s in known}
    weights = {s.get("weights") for s in known}
    if ":" in spec.name and spec.name not in names:
        raise BadRequest(
            f"model.name {spec.name[:200]!r} is a factory no model of this service's config "
            "names: a load may use torchvision model names and the factories already deployed"
        )
    is_file = "/" in spec.weights or spec.weights.endswith((".pt", ".pth", ".bin"))
    if is_file and spec.weights not in weights:
        raise BadRequest(
            f"model.weights {spec.weights[:200]!r} is a file no model of this service's config "
            "names: a load may use torchvision weights names, `none`, and the files already "
            "deployed"
        )
    if isinstance(spec.labels, str) and spec.labels not in {s.get("labels") for s in known}:
        raise BadRequest("model.labels may only name a labels file the deployed config names")


def _model_options(
    mine: Mapping[str, Mapping[str, Any]], front: Mapping[str, Any]
) -> dict[str, Any]:
    """The Serve options a loaded model gets when its config gives none."""
    for config in mine.values():
        for deployment in config.get("deployments", []):
            if deployment.get("name") == MODEL_DEPLOYMENT:
                return {k: v for k, v in deployment.items() if k != "name"}
    for deployment in front.get("deployments", []):
        if deployment.get("name") == MODEL_DEPLOYMENT:
            return {k: v for k, v in deployment.items() if k != "name"}
    raise BadRequest(
        "the load's config needs `deployment` (the Model's Serve options, with its "
        "user_config): this service has no model application to copy them from"
    )
