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

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application, Deployment

from deployments.pixels.imaging import ResizeSpec
from deployments.runtime.model_source import resolve
from deployments.runtime.spec import ModelSpec, Resolved
from deployments.settings import Bundles, Limits, Poison
from deployments.stages.ingress import Ingress
from deployments.stages.model import Model
from deployments.stages.postprocessor import ModelAnswers, Postprocessor
from deployments.stages.preprocessor import Preprocessor
from deployments.transports.base import IngressSettings, ModelRoute
from vision_serve.files import SERVE_CONFIG

MODEL_DEPLOYMENT = "Model"
MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
MODEL_VERSION_PATTERN = r"^[0-9A-Za-z]([0-9A-Za-z._-]{0,30}[0-9A-Za-z])?$"


def model_deployment(name: str, default_model: str) -> str:
    """The Serve deployment that runs the model `name`: `Model` for the default model (so a
    one-model config and its overrides name it as before), `Model-<name>` for each other one."""
    return MODEL_DEPLOYMENT if name == default_model else f"{MODEL_DEPLOYMENT}-{name}"


class ServedModel(BaseModel):
    """One entry of `models:`: the name it is routed by and what to load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=MODEL_NAME_PATTERN,
        description="routing name: /v1/models/{name}/predict, /v2/models/{name}/infer",
    )
    # The Open Inference Protocol's unversioned model is version "1"; a model left without one
    # is served as that. Every answer names the version of the replica that produced it.
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

    models: tuple[ServedModel, ...] = Field(min_length=1, max_length=32)
    default_model: str = Field(description="the model /v1/predict (no name in the path) runs")
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
    def _models_named_once(self) -> "AppArgs":
        names = [m.name for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"models: each name must be used once; repeated: {twice}")
        if self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not in models: {names}")
        return self

    @property
    def model(self) -> ModelSpec:
        """The default model's spec (what /v1/predict serves; the benchmark's peers load it)."""
        return next(m.model for m in self.models if m.name == self.default_model)

    def deployment_of(self, name: str) -> str:
        """The Serve deployment that runs the model `name`."""
        return model_deployment(name, self.default_model)


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
    model = spec or args.model
    resize = ResizeSpec(
        mode=resolved.resize,
        input_width=resolved.input_width,
        input_height=resolved.input_height,
        resize_size=resolved.resize_size,
        pad_value=model.pad_value,
        draft=args.jpeg_draft,
        gpu_decode=model.gpu_decode,  # the Preprocessor leaves JPEGs to the Model's device
    )
    return resize, args.limits


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


def _bind(args: AppArgs, options: Mapping[str, Mapping[str, Any]]) -> Application:
    # `@serve.deployment` turns each class into a Deployment; its typing does not say so.
    pre, model_class, post, ingress = (
        cast(Deployment, c) for c in (Preprocessor, Model, Postprocessor, Ingress)
    )
    models = {m.name: (m, resolve(m.model)) for m in args.models}
    stages: dict[str, Deployment] = {
        ingress.name: ingress,
        pre.name: pre,
        post.name: post,
        **{args.deployment_of(n): model_class.options(name=args.deployment_of(n)) for n in models},
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
    # One Preprocessor and one Postprocessor serve every model, each item by its model's
    # preprocessing and task; each model has its own Model deployment (batching, scaling).
    resize = {n: decode_settings(args, r, m.model)[0] for n, (m, r) in models.items()}
    answers = {n: ModelAnswers(r.name, r.task, r.labels) for n, (_, r) in models.items()}
    routes = {
        n: ModelRoute(task=r.task, version=m.version, max_candidates=r.max_candidates)
        for n, (m, r) in models.items()
    }
    settings = IngressSettings(
        models=routes,
        default_model=args.default_model,
        limits=args.limits,
        request_timeout_s=args.request_timeout_s,
        max_request_timeout_s=args.max_request_timeout_s,
        bundles=args.bundles,
        poison=args.poison,
        retry_after_s=args.retry_after_s,
    )
    model_handles = {
        n: stages[args.deployment_of(n)].bind(m.model, r, n, m.version)
        for n, (m, r) in models.items()
    }
    return stages[ingress.name].bind(
        stages[pre.name].bind(resize, args.limits, args.decode_threads),
        model_handles,
        stages[post.name].bind(answers),
        settings,
    )


def __getattr__(name: str) -> Application:
    # `serve run graph:app` builds lazily: importing this module reads no file and loads no model.
    if name == "app":
        return build_configured_app(load_app_config())
    raise AttributeError(name)
