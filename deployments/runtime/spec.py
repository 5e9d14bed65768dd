"""Which model to serve, as the builder's args say it (`ModelSpec`), and what is fixed about it
before any weight is loaded (`Resolved`). Plain data: tasks read it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.items import ResizeMode

Precision = Literal["float32", "bfloat16", "float16"]


class ModelSpec(BaseModel):
    """Builder args for the model (structure: changing them restarts replicas)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        "resnet18", description="torchvision model name, or `package.module:factory` import path"
    )
    weights: str = Field(
        "none",
        description="torchvision weights name (DEFAULT, IMAGENET1K_V2, ...), a state_dict path "
        "(relative paths are taken from the project root), or `none` for seeded random init",
    )
    task: str | None = Field(
        None, description="a task name (deployments/tasks); inferred from the model when omitted"
    )
    labels: str | list[str] | None = Field(
        None, description="labels file (one per line, or a JSON list) or an inline list"
    )
    num_classes: int | None = Field(None, ge=1)
    input_size: int | tuple[int, int] | None = Field(
        None, description="model input: a square side or [width, height]"
    )
    resize: ResizeMode | None = None
    resize_size: int | None = Field(None, ge=1, description="shorter side before the crop")
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    pad_value: int = Field(114, ge=0, le=255)
    seed: int = 0
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra model constructor args")
    allow_download: bool = Field(
        True, description="let torchvision download named weights missing from its cache"
    )
    max_top_k: int = Field(100, ge=1, description="classification: candidates kept per image")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per replica")
    precision: Precision = Field(
        "float32",
        description="the forward pass's dtype under autocast: float32 (none), bfloat16 (CUDA or "
        "CPU), float16 (CUDA only: a CPU replica refuses to start); outputs are float32 anyway",
    )
    channels_last: bool = Field(
        False, description="convert the module's weights to channels_last (NHWC) memory format"
    )
    compile: bool = Field(
        False,
        description="torch.compile the module: the replica compiles while it warms up (batch 1, "
        "then batch 2, whose graph every larger batch shares), so it starts tens of seconds "
        "later; needs a C++ compiler on CPU nodes",
    )
    gpu_decode: bool = Field(
        False,
        description="JPEGs travel compressed and the Model decodes them on its device "
        "(nvJPEG on a GPU replica, libjpeg on a CPU one); the Preprocessor still reads the "
        "header, orientation and limits and plans the geometry; other formats keep CPU pixels",
    )

    @field_validator("weights")
    @classmethod
    def _weights_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("weights must be a weights name, a file path or `none`")
        return value.strip()


@dataclass(frozen=True, slots=True)
class Resolved:
    """Everything about the model that is fixed before any weight is loaded."""

    name: str
    task: str  # a name in deployments.tasks.REGISTRY
    labels: tuple[str, ...]
    input_width: int
    input_height: int
    resize: ResizeMode
    resize_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    weights_kind: Literal["torchvision", "file", "none"]
    max_candidates: int = 100  # candidates the Model keeps per image (classification's max_top_k)
