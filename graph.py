"""Wires the deployment graph. Import-safe: nothing runs until a builder is called.

serve run graph:app                 # the shipped defaults
serve run serve_config.yaml         # the deploy-time source of truth (calls build_app)
"""

from typing import cast

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from deployments.caller import BundleSettings
from deployments.imaging import DecodeLimits, ResizeSpec
from deployments.ingress import Ingress, IngressSettings
from deployments.model import Model
from deployments.models import ModelSpec, resolve
from deployments.postprocessor import Postprocessor
from deployments.preprocessor import Preprocessor


class Limits(BaseModel):
    """What one request may ask of the service; over a limit is a 413, never a crash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1, description="whole HTTP body")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="one encoded image")
    max_pixels: int = Field(
        40_000_000, ge=1, description="one decoded image, and its resize before a crop (w x h)"
    )
    max_images_per_request: int = Field(64, ge=1, description="multipart image parts")


class Bundles(BaseModel):
    """How images travel between stages: together, one call per stage per bundle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_items: int = Field(8, ge=1, le=512, description="images per bundle")
    max_in_flight: int = Field(
        2, ge=1, le=64, description="partial bundles in flight before single images wait"
    )
    max_wait_s: float = Field(
        0.05, ge=0.0, le=1.0, description="the longest a single image waits for company"
    )


class AppArgs(BaseModel):
    """Builder args (structure). Hot knobs live in each deployment's `user_config` instead."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSpec = Field(default_factory=ModelSpec)
    limits: Limits = Field(default_factory=Limits)
    decode_threads: int = Field(2, ge=1, description="decoder threads per Preprocessor replica")
    request_timeout_s: float | None = Field(
        30.0,
        description="deadline for requests that state none (x-request-timeout-seconds); "
        "null or <= 0: none",
    )
    jpeg_draft: bool = Field(True, description="decode large JPEGs at 1/2, 1/4 or 1/8 scale")
    bundles: Bundles = Field(default_factory=lambda: Bundles())


# What `serve run graph:app` serves: the shipped shapes detector, as serve_config.yaml does.
DEFAULT_ARGS = AppArgs(
    model=ModelSpec(name="shapes.model:build_detector", weights="shapes/shapes_detector.pt")
)


def build_app(args: AppArgs) -> Application:
    """Build the graph Ingress -> Preprocessor -> Model -> Postprocessor.

    Args:
        args: `AppArgs` (a plain dict from `serve_config.yaml` is validated into one).

    Returns:
        The bound Ingress, ready for `serve.run` or a Serve config's `import_path`.
    """
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    resolved = resolve(args.model)
    resize = ResizeSpec(
        mode=resolved.resize,
        input_width=resolved.input_width,
        input_height=resolved.input_height,
        resize_size=resolved.resize_size,
        pad_value=args.model.pad_value,
        draft=args.jpeg_draft,
    )
    limits = DecodeLimits(
        max_image_bytes=args.limits.max_image_bytes, max_pixels=args.limits.max_pixels
    )
    settings = IngressSettings(
        task=resolved.task,
        max_top_k=args.model.max_top_k,
        max_body_bytes=args.limits.max_body_bytes,
        max_images_per_request=args.limits.max_images_per_request,
        request_timeout_s=args.request_timeout_s,
        bundles=BundleSettings(
            max_items=args.bundles.max_items,
            max_in_flight=args.bundles.max_in_flight,
            max_wait_s=args.bundles.max_wait_s,
        ),
    )
    return _deployment(Ingress).bind(
        _deployment(Preprocessor).bind(resize, limits, args.decode_threads),
        _deployment(Model).bind(args.model, resolved),
        _deployment(Postprocessor).bind(resolved.name, resolved.task, resolved.labels),
        settings,
    )


def _deployment(decorated: object) -> Deployment:
    # `@serve.deployment` turns each class into a Deployment; its typing does not say so.
    return cast(Deployment, decorated)


def __getattr__(name: str) -> Application:
    # `serve run graph:app` builds lazily, so importing this module never loads torch models.
    if name == "app":
        return build_app(DEFAULT_ARGS)
    raise AttributeError(name)
