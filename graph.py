"""Wires the deployment graph. Import-safe: nothing runs until a builder is called.

serve run graph:app                 # the shipped defaults
serve run serve_config.yaml         # the deploy-time source of truth (calls build_app)
"""

from typing import cast

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application, Deployment

from deployments.caller import BundleSettings, PoisonSettings
from deployments.imaging import DecodeLimits, ResizeSpec
from deployments.ingress import Ingress, IngressSettings
from deployments.model import Model
from deployments.model_source import ModelSpec, Resolved, resolve
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
    max_images_per_request: int = Field(
        64, ge=1, description="multipart parts (of any name), counted while the body arrives"
    )
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="request bodies one Ingress replica holds at once (503 past it)",
    )

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> "Limits":
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                "limits.max_body_bytes_in_flight must be at least limits.max_body_bytes, or a "
                "body of the allowed size could never be admitted"
            )
        return self


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


class Poison(BaseModel):
    """Images that crashed a replica twice (once in a bundle, once alone) are refused a while."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quarantine_ttl_s: float = Field(
        600.0, gt=0, le=86_400, description="how long such an image's sha256 is refused (422)"
    )
    max_quarantined: int = Field(10_000, ge=1, description="hashes kept; the oldest go first")


class AppArgs(BaseModel):
    """Builder args (structure). Hot knobs live in each deployment's `user_config` instead."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSpec = Field(default_factory=ModelSpec)
    limits: Limits = Field(default_factory=Limits)
    decode_threads: int = Field(2, ge=1, description="decoder threads per Preprocessor replica")
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="deadline for requests that state none (x-request-timeout-seconds)",
    )
    max_request_timeout_s: float = Field(
        120.0,
        gt=0,
        allow_inf_nan=False,
        description="the longest deadline a request may ask for; longer ones are capped",
    )
    jpeg_draft: bool = Field(True, description="decode large JPEGs at 1/2, 1/4 or 1/8 scale")
    bundles: Bundles = Field(default_factory=lambda: Bundles())
    poison: Poison = Field(default_factory=lambda: Poison())

    @model_validator(mode="after")
    def _default_deadline_within_cap(self) -> "AppArgs":
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError("request_timeout_s must not exceed max_request_timeout_s")
        return self


# What `serve run graph:app` serves: the shipped shapes detector, as serve_config.yaml does.
DEFAULT_ARGS = AppArgs(
    model=ModelSpec(name="shapes.model:build_detector", weights="shapes/shapes_detector.pt")
)


def decode_settings(args: AppArgs, resolved: Resolved) -> tuple[ResizeSpec, DecodeLimits]:
    """How every image is decoded and brought to the model input (also the benchmark's)."""
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
    return resize, limits


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
    resize, limits = decode_settings(args, resolved)
    settings = IngressSettings(
        task=resolved.task,
        max_candidates=resolved.max_candidates,
        max_body_bytes=args.limits.max_body_bytes,
        max_image_bytes=args.limits.max_image_bytes,
        max_images_per_request=args.limits.max_images_per_request,
        max_body_bytes_in_flight=args.limits.max_body_bytes_in_flight,
        request_timeout_s=args.request_timeout_s,
        max_request_timeout_s=args.max_request_timeout_s,
        bundles=BundleSettings(
            max_items=args.bundles.max_items,
            max_in_flight=args.bundles.max_in_flight,
            max_wait_s=args.bundles.max_wait_s,
        ),
        poison=PoisonSettings(
            ttl_s=args.poison.quarantine_ttl_s, max_entries=args.poison.max_quarantined
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
