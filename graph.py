"""Wires the deployment graph. Import-safe: nothing runs until a builder is called.

serve run serve_config.yaml         # the deploy-time source of truth (calls build_app)
serve run graph:app                 # the same application: serve_config.yaml's args and options
serve run vision_serve.graph:app    # the same, installed (vision_serve/graph.py is this file)

`serve_config.yaml` is the one home of every default: builder args and deployment options alike.
`build_app` binds the stages without options, so a config that names it (serve_config.yaml, the
rendered configs/*.yaml, the RayService) sets them all; `app` applies serve_config.yaml's.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import ray
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application, Deployment

from deployments.flow.catalogue import (
    MODEL_NAME_PATTERN,
    MODEL_VERSION_PATTERN,
    ModelCard,
    args_digest,
    publish_card,
)
from deployments.items import latest_version
from deployments.pixels.imaging import ResizeSpec
from deployments.runtime.model_source import resolve
from deployments.runtime.spec import ModelSpec, Resolved
from deployments.settings import Bundles, Limits, Poison
from deployments.stages.ingress import Ingress
from deployments.stages.model import Model
from deployments.stages.postprocessor import Postprocessor
from deployments.stages.preprocessor import Preprocessor
from deployments.transports.base import IngressSettings
from vision_serve.files import SERVE_CONFIG

MODEL_DEPLOYMENT = "Model"


def model_deployment(name: str, default_model: str, version: str | None = None) -> str:
    """The Serve deployment that runs the model `name`: `Model` for the default model (so a
    one-model config and its overrides name it as before), `Model-<name>` for each other one.
    That is its latest version's (`version` None); another version live beside it runs as
    `<that name>-v<version>`."""
    base = MODEL_DEPLOYMENT if name == default_model else f"{MODEL_DEPLOYMENT}-{name}"
    return base if version is None else f"{base}-v{version}"


class ServedModel(BaseModel):
    """One entry of `models:`: the name it is routed by and what to load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=MODEL_NAME_PATTERN,
        description="routing name: /v1/models/{name}/predict, /v2/models/{name}/infer",
    )
    # The Open Inference Protocol's unversioned model is version "1"; a model left without one
    # is served as that. Every answer names the version of the replica that produced it. One
    # name may be listed once per version, each with its own weights (`latest_version`).
    version: str = Field(
        default="1",
        pattern=MODEL_VERSION_PATTERN,
        description="the version these weights are served as: /v2/models/{name}/versions/{v}",
    )
    model: ModelSpec


class AppArgs(BaseModel):
    """Builder args (structure). Hot knobs live in each deployment's `user_config` instead.

    No field has a default: serve_config.yaml is their home, and the configs rendered from it
    carry every one, so a key left out is an error that names it, not a second default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Models bound into this application: fixed for its replicas' lives (a change restarts
    # them). Models that come and go alone are applications of their own (`ModelAppArgs`).
    models: tuple[ServedModel, ...] = Field(max_length=32)
    default_model: str = Field(
        description="the model /v1/predict (no name in the path) runs: bound, or a model "
        "application's"
    )
    limits: Limits
    decode_threads: int = Field(ge=1, description="decoder threads per Preprocessor replica")
    request_timeout_s: float = Field(
        gt=0,
        allow_inf_nan=False,
        description="deadline for requests that state none (x-request-timeout-seconds)",
    )
    max_request_timeout_s: float = Field(
        gt=0,
        allow_inf_nan=False,
        description="the longest deadline a request may ask for; longer ones are capped",
    )
    retry_after_s: int = Field(
        ge=1,
        le=3600,
        description="Retry-After of every 503 overload answer, the Ingress's queue limit's too",
    )
    jpeg_draft: bool = Field(description="decode large JPEGs at 1/2, 1/4 or 1/8 scale")
    bundles: Bundles
    poison: Poison

    @model_validator(mode="after")
    def _default_deadline_within_cap(self) -> "AppArgs":
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError("request_timeout_s must not exceed max_request_timeout_s")
        return self

    @model_validator(mode="after")
    def _models_named_once_per_version(self) -> "AppArgs":
        pairs = [(m.name, m.version) for m in self.models]
        twice = sorted({f"{n} version {v}" for n, v in pairs if pairs.count((n, v)) > 1})
        if twice:
            raise ValueError(
                f"models: each name and version must be listed once; repeated: {twice}"
            )
        names = list(dict.fromkeys(n for n, _ in pairs))
        deployments = [self.deployment_of(n, v) for n, v in pairs]
        clash = sorted({d for d in deployments if deployments.count(d) > 1})
        if clash:
            raise ValueError(
                f"models: two entries would run as the same deployment {clash}: a model named "
                "`<name>-v<version>` meets another version of `<name>`; rename one"
            )
        for name in names:  # a task given in the spec; `check_tasks` sees the resolved ones
            check_tasks(name, {m.version: m.model.task for m in self.models if m.name == name})
        return self

    def versions(self, name: str) -> tuple[str, ...]:
        """Every version of the model `name`, as listed."""
        return tuple(m.version for m in self.models if m.name == name)

    def latest(self, name: str) -> str:
        """The version a request that names none gets (`latest_version`)."""
        return latest_version(self.versions(name))

    @property
    def model(self) -> ModelSpec:
        """The default model's spec, its latest version's (what /v1/predict serves; the
        benchmark's peers load it)."""
        return self.served(self.default_model).model

    def served(self, name: str, version: str | None = None) -> ServedModel:
        """The entry of `models:` for `name` at `version` (None: the latest)."""
        version = self.latest(name) if version is None else version
        return next(m for m in self.models if (m.name, m.version) == (name, version))

    def deployment_of(self, name: str, version: str | None = None) -> str:
        """The Serve deployment that runs `version` of the model `name` (None: the latest)."""
        if version is None or version == self.latest(name):
            return model_deployment(name, self.default_model)
        return model_deployment(name, self.default_model, version)


class ModelAppArgs(BaseModel):
    """Builder args of a model application (`import_path: vision_serve.graph:build_model`): one
    version of one model, its own Serve application with one deployment, `Model`. It starts,
    changes and stops alone: no other model's replicas and no stage of the front restart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    front: str = Field(
        min_length=1, description="the application whose Ingress routes it (`vision`)"
    )
    name: str = Field(pattern=MODEL_NAME_PATTERN, description="the name requests route by")
    version: str = Field(default="1", pattern=MODEL_VERSION_PATTERN)
    model: ModelSpec


def check_tasks(name: str, tasks_by_version: Mapping[str, str | None]) -> None:
    """Every version of one model serves one task (a version's None: not known yet)."""
    known = {v: t for v, t in tasks_by_version.items() if t is not None}
    if len(set(known.values())) > 1:
        raise ValueError(
            f"models: every version of {name!r} must serve one task; its versions' tasks are "
            f"{known}"
        )


APP_NAME = "vision"


def load_app_config(path: Path = SERVE_CONFIG, name: str = APP_NAME) -> dict[str, Any]:
    """One application of a Serve config file: its `args` and its `deployments` options."""
    config = yaml.safe_load(path.read_text())
    for app in config.get("applications", []):
        if app.get("name") == name:
            found: dict[str, Any] = app
            return found
    raise ValueError(f"{path} has no application named {name!r}")


def served_args() -> AppArgs:
    """The builder args serve_config.yaml gives the graph."""
    return AppArgs.model_validate(load_app_config()["args"])


def decode_settings(
    args: AppArgs, resolved: Resolved, spec: ModelSpec | None = None
) -> tuple[ResizeSpec, Limits]:
    """How every image for one model (the default one unless `spec` names another) is decoded
    and brought to its input, and the limits the decode enforces (also the benchmark's)."""
    return _resize(spec or args.model, resolved, args.jpeg_draft), args.limits


def _resize(spec: ModelSpec, resolved: Resolved, draft: bool) -> ResizeSpec:
    return ResizeSpec(
        mode=resolved.resize,
        input_width=resolved.input_width,
        input_height=resolved.input_height,
        resize_size=resolved.resize_size,
        pad_value=spec.pad_value,
        draft=draft,
        gpu_decode=spec.gpu_decode,  # the Preprocessor leaves JPEGs to the Model's device
    )


def build_app(args: AppArgs) -> Application:
    """Build the graph Ingress -> Preprocessor -> Model -> Postprocessor, without options.

    Args:
        args: `AppArgs` (a plain dict from a Serve config is validated into one).

    Returns:
        The bound Ingress for a Serve config's `import_path`: that config's `deployments` set
        every stage's options (a stage it leaves out runs with Serve's own defaults).
    """
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    return _bind(args, {})


def build_configured_app(app_config: Mapping[str, Any]) -> Application:
    """What a Serve config's application runs, without Ray: its args and its deployments' options.

    Args:
        app_config: one entry of a config's `applications` (`load_app_config()`).

    Returns:
        The bound Ingress with each stage's `.options(...)` taken from `app_config["deployments"]`.
    """
    options = {
        d["name"]: {key: value for key, value in d.items() if key != "name"}
        for d in app_config.get("deployments", [])
    }
    return _bind(AppArgs.model_validate(app_config["args"]), options)


def model_card(served: ServedModel | ModelAppArgs, resolved: Resolved) -> ModelCard:
    """What the Ingress, the Preprocessor and the Postprocessor need of one model version (the
    Preprocessor sets `draft`, the front's `jpeg_draft`)."""
    resize = _resize(served.model, resolved, draft=True)
    return ModelCard(
        name=served.name,
        version=served.version,
        task=resolved.task,
        source=resolved.name,
        labels=tuple(resolved.labels),
        max_candidates=resolved.max_candidates,
        resize=resize,
    )


def _bind(args: AppArgs, options: Mapping[str, Mapping[str, Any]]) -> Application:
    # `@serve.deployment` turns each class into a Deployment; its typing does not say so.
    pre, model_class, post, ingress = (
        cast(Deployment, c) for c in (Preprocessor, Model, Postprocessor, Ingress)
    )
    # Every version of every bound model, by (name, version): each its own Model deployment.
    models = {(m.name, m.version): (m, resolve(m.model)) for m in args.models}
    for name in dict.fromkeys(n for n, _ in models):
        check_tasks(name, {v: r.task for (n, v), (_, r) in models.items() if n == name})
    deployment_of = {key: args.deployment_of(*key) for key in models}
    stages: dict[str, Deployment] = {
        ingress.name: ingress,
        pre.name: pre,
        post.name: post,
        **{d: model_class.options(name=d) for d in deployment_of.values()},
    }
    unknown = sorted(set(options) - set(stages))
    if unknown:
        raise ValueError(f"deployments {unknown} are not in the graph {sorted(stages)}")
    if "backpressure_config" in options.get(ingress.name, {}):
        raise ValueError(
            "the Ingress's backpressure_config comes from args.retry_after_s; set that"
        )
    # Serve's own 503 past max_queued_requests says what the service's 503s say.
    stages[ingress.name] = ingress.options(
        backpressure_config={"status_code": 503, "retry_after_s": args.retry_after_s}
    )
    for name, stage_options in options.items():
        stages[name] = stages[name].options(**stage_options)
    # One Preprocessor and one Postprocessor serve every model: what each version needs of
    # them (input geometry, task, labels) travels with its images from the Ingress, which
    # knows it from these cards (bound models) or from a model application's own builder.
    settings = IngressSettings(
        cards=tuple(model_card(m, r) for m, r in models.values()),
        default_model=args.default_model,
        limits=args.limits,
        request_timeout_s=args.request_timeout_s,
        max_request_timeout_s=args.max_request_timeout_s,
        bundles=args.bundles,
        poison=args.poison,
        retry_after_s=args.retry_after_s,
    )
    model_handles = {
        (n, v): stages[deployment_of[(n, v)]].bind(m.model, r, n, v)
        for (n, v), (m, r) in models.items()
    }
    return stages[ingress.name].bind(
        stages[pre.name].bind(args.limits, args.decode_threads, args.jpeg_draft),
        model_handles,
        stages[post.name].bind(),
        settings,
    )


def build_model(args: dict[str, Any]) -> Application:
    """Build a model application: its Model deployment, without options.

    Args:
        args: `ModelAppArgs` as the config has them (a plain dict: its digest keys the card).

    Returns:
        The bound Model. The model's card (task, input geometry, labels) is published for the
        front's Ingress, which routes the model once it finds the card.
    """
    parsed = ModelAppArgs.model_validate(args)
    resolved = resolve(parsed.model)
    if ray.is_initialized():  # always, when Serve builds it; not in a unit test's call
        publish_card(args_digest(args), model_card(parsed, resolved))
    model = cast(Deployment, Model)
    return model.bind(parsed.model, resolved, parsed.name, parsed.version, parsed.front)


def __getattr__(name: str) -> Application:
    # `serve run graph:app` builds lazily: importing this module reads no file and loads no model.
    if name == "app":
        return build_configured_app(load_app_config())
    raise AttributeError(name)
