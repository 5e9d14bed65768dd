"""The service's settings: one type per concern, validated once from serve_config.yaml.

Builder args (`args:`, read by `graph.AppArgs`): `Limits` (what one request may ask; the
transports and the Preprocessor's decode read it), `Bundles` (how images travel between stages;
the `Caller`), `Poison` (images refused after they killed replicas; the `Caller`). The Model's
`user_config`: `Batching` (its `reconfigure`). Each is passed as-is to whoever reads it.

No field has a default: serve_config.yaml is the one home of every value, and the configs rendered
from it carry every key, so a key left out is an error that names it, not a second default.
Ray-free and torch-free: a unit test or a tool imports this alone.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Batching", "Bundles", "Limits", "Poison"]


class Limits(BaseModel):
    """What one request may ask of the service; over a limit is a 413, never a crash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(ge=1, description="whole HTTP body")
    max_image_bytes: int = Field(ge=1, description="one encoded image")
    # Bounds every image a decode holds, not only the file's own size: the decoded image and the
    # resized one before the crop or pad (which outgrows the file when a thin sliver is upscaled).
    max_pixels: int = Field(ge=1, description="one decoded image, and its resize before a crop")
    max_images_per_request: int = Field(
        ge=1, description="multipart parts (of any name), counted while the body arrives"
    )
    max_body_bytes_in_flight: int = Field(
        ge=1, description="request bodies one Ingress replica holds at once (503 past it)"
    )

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> Limits:
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                "limits.max_body_bytes_in_flight must be at least limits.max_body_bytes, or a "
                "body of the allowed size could never be admitted"
            )
        return self


class Bundles(BaseModel):
    """How images travel between stages: together, one call per stage per bundle
    (`batching.Coalescer`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_items: int = Field(
        ge=1, le=512, description="images per bundle; a bigger multipart request travels as several"
    )
    max_in_flight: int = Field(
        ge=1, le=64, description="partial bundles in flight before single images wait"
    )
    max_wait_s: float = Field(
        ge=0.0, le=1.0, description="the longest a single image waits for company"
    )


class Poison(BaseModel):
    """Images that crashed a replica twice (once in a bundle, once alone) are refused a while."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quarantine_ttl_s: float = Field(
        gt=0, le=86_400, description="how long such an image's sha256 is refused (422)"
    )
    max_quarantined: int = Field(ge=1, description="hashes kept; the oldest go first")


class Batching(BaseModel):
    """The Model's `user_config`: hot knobs, applied by `reconfigure` without a restart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(ge=1, le=512)
    # 0: work-conserving. An idle Model starts a pass with what it holds at once; under load the
    # next batch is what queued during the running pass. Above 0 it is the longest an item waits
    # for company when the Model is idle, for those who trade latency for fuller batches.
    batch_wait_timeout_s: float = Field(ge=0.0, le=10.0)
