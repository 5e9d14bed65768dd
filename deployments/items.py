"""The objects that cross deployment boundaries: the whole protocol of the graph in one file.

What travels is a bundle: the items that arrived together, one call per stage for all of them.

    Ingress --tuple[Item]--> Preprocessor --Bundle (Sample | ItemError per item)--> Model
    Model --tuple[RawOutput | ItemError] (one per item, same order)-->
    Postprocessor(outputs, Bundle) --tuple[Result | ItemError]--> Ingress

An `Item` is one image's bytes with its own id, request id, options and deadline. A `Sample`
carries its `Meta` (born in the Preprocessor) beside the uint8 pixels (or a `Jpeg` the Model
decodes on its device, when its model sets `gpu_decode`); the Model answers with a
`RawOutput` tagged with the same item id, in model-input coordinates; the Postprocessor joins the
two by id, maps geometry back to the original image and applies that item's options.
Errors are items too: an `ItemError` flows through the later stages untouched, in its place.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from deployments.errors import VisionError, error_for_code

ResizeMode = Literal["letterbox", "resize_crop", "stretch"]


T = TypeVar("T")


def latest_version(versions: Sequence[str]) -> str:
    """The latest of one model's versions, as listed: the numerically highest when every one is
    all digits ("10" after "9"), else the one listed last."""
    if all(v.isdigit() for v in versions):
        return max(versions, key=int)
    return versions[-1]


def of_version(table: Mapping[tuple[str, str], T], model: str, version: str) -> T:
    """`table`'s entry for `version` of `model`, else for the latest version of `model` it has.

    A rollout that replaces a version in place (new weights under a new version, one deployment)
    runs old and new replicas of every stage side by side, so a stage built with the new version
    meets items sent to, and outputs produced by, the old one: they get the new one's settings.
    """
    found = table.get((model, version))
    if found is not None:
        return found
    known = [v for m, v in table if m == model]
    if not known:
        raise KeyError(f"model {model!r} is not served by this replica")
    return table[(model, latest_version(known))]


def new_item_id() -> str:
    """A fresh id for one image; unique even when clients reuse request ids."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Options:
    """Per-request options by name, validated by the model's task (`deployments.tasks`).

    A name that is not given takes the deployment's default (the Postprocessor's user_config).
    """

    values: tuple[tuple[str, int | float | str], ...] = ()

    @classmethod
    def of(cls, values: dict[str, int | float | str]) -> Options:
        return cls(tuple(sorted(values.items())))

    def get(self, name: str) -> int | float | str | None:
        return dict(self.values).get(name)

    def over(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """These options on top of `defaults`."""
        return {**defaults, **dict(self.values)}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """The original image as displayed: size after EXIF orientation, container format."""

    width: int
    height: int
    format: str
    orientation: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "orientation": self.orientation,
        }


@dataclass(frozen=True, slots=True)
class Geometry:
    """How displayed image pixels map to model-input pixels: `x_in = x * scale_x + offset_x`.

    Offsets are positive for letterbox padding and negative for a centre crop. Coordinates are
    continuous: pixel column i spans [i, i + 1).
    """

    mode: ResizeMode
    source_width: int
    source_height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float


def deadline_passed(deadline: float | None, now: float) -> bool:
    """Whether a deadline (wall-clock seconds; None: none) has passed at `now`. At the deadline
    itself it has: no stage starts work that is due that instant."""
    return deadline is not None and now >= deadline


@dataclass(frozen=True, slots=True)
class Meta:
    """Everything post-processing needs about one item; the model never sees it."""

    item_id: str
    request_id: str
    image: ImageInfo
    geometry: Geometry
    options: Options
    deadline: float | None = None  # wall-clock seconds (time.time()); None = no deadline
    preprocess_ms: float = 0.0
    model: str = ""  # the served model's name (`models:` in serve_config.yaml)
    trace: str | None = None  # its request's W3C trace context (`deployments.tracing`)
    version: str = ""  # the version of `model` its item was sent to (`Item.version`)

    def expired(self, now: float) -> bool:
        """Whether the item's deadline has passed at `now` (`time.time()`)."""
        return deadline_passed(self.deadline, now)


@dataclass(frozen=True, slots=True)
class Jpeg:
    """A JPEG left compressed for the Model to decode on its device (a model's `gpu_decode`),
    with what the Preprocessor planned from its header: the Model resizes it to `resized` in
    stored orientation, turns it upright by `orientation`, then pads or crops it by the item's
    `Geometry`, exactly the CPU decode's steps."""

    data: bytes
    stored: tuple[int, int]  # width, height as in the file (before the EXIF rotation)
    resized: tuple[int, int]  # width, height in stored orientation, before the crop or pad
    orientation: int  # EXIF 1..8, as in the item's `ImageInfo`
    pad_value: int  # letterbox padding, 0..255

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Sample:
    """One preprocessed image, plus its metadata: uint8 HWC pixels in model-input geometry, or,
    for a model that decodes JPEGs on its device, the `Jpeg` and its plan instead."""

    meta: Meta
    pixels: npt.NDArray[np.uint8] | Jpeg

    @property
    def item_id(self) -> str:
        return self.meta.item_id


@dataclass(frozen=True, slots=True)
class Item:
    """One image as the Ingress sends it: encoded bytes and everything that belongs to it."""

    item_id: str
    request_id: str
    data: bytes
    options: Options
    deadline: float | None = None  # wall-clock seconds (time.time()); None = no deadline
    model: str = ""  # the served model it goes to; "" in a one-model graph's own tests
    trace: str | None = None  # its request's W3C trace context (`deployments.tracing`)
    version: str = ""  # the version of `model` it is sent to (`models[].version`)
    # The client named `version`: an answer by any other (a replica mid-rollout) is not its
    # answer. Otherwise `version` is the latest, and whichever its deployment runs may answer.
    pinned: bool = False

    def expired(self, now: float) -> bool:
        """Whether the item's deadline has passed at `now` (`time.time()`)."""
        return deadline_passed(self.deadline, now)


@dataclass(frozen=True, slots=True)
class Bundle:
    """What the Preprocessor emits for the items of one call: a `Sample` or an `ItemError` each,
    in the order the items came. One object, so one object-store write for the whole bundle."""

    items: tuple[Sample | ItemError, ...]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(i.item_id for i in self.items)


@dataclass(frozen=True, slots=True)
class RawOutput:
    """The model's answer for one item, in model-input coordinates, tagged with its item id.

    `arrays` are named by the task that decoded them (`deployments.tasks`): classification's
    `class_ids` and `scores`, detection's `boxes` as well, segmentation's `label_map`, ...
    """

    item_id: str
    arrays: dict[str, npt.NDArray[Any]]
    batch_size: int
    inference_ms: float
    queue_ms: float = 0.0
    model_version: str = ""  # the version the Model replica that ran it serves


@dataclass(frozen=True, slots=True)
class Prediction:
    """A class, an object or a segment, in displayed pixels; fields its task does not give are
    None: `box` is [x_min, y_min, x_max, y_max], `area` counts mask pixels, `mask` is COCO RLE."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float] | None = None
    area: int | None = None
    mask: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "class_id": self.class_id, "score": self.score}
        if self.box is not None:
            out["box"] = list(self.box)
        if self.area is not None:
            out["area"] = self.area
        if self.mask is not None:
            out["mask"] = self.mask
        return out


@dataclass(frozen=True, slots=True)
class Result:
    """The answer for one image, as the client sees it."""

    request_id: str
    item_id: str
    model: str
    task: str
    image: ImageInfo
    predictions: tuple[Prediction, ...]
    batch_size: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # the task's other fields (JSON-ready)
    model_version: str = ""  # the version that produced it (its `RawOutput`'s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "item_id": self.item_id,
            "model": self.model,
            "model_version": self.model_version,
            "task": self.task,
            "image": self.image.to_dict(),
            "predictions": [p.to_dict() for p in self.predictions],
            "batch_size": self.batch_size,
            "timings_ms": self.timings_ms,
            **self.extra,
        }


@dataclass(frozen=True, slots=True)
class ItemError:
    """A failure that belongs to one item; it passes through later stages untouched."""

    item_id: str
    code: str
    message: str
    status: int

    @classmethod
    def from_exception(cls, item_id: str, exc: VisionError) -> ItemError:
        return cls(item_id=item_id, code=exc.code, message=exc.message, status=exc.status)

    def to_exception(self) -> VisionError:
        return error_for_code(self.code, self.message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "error": {"code": self.code, "message": self.message, "status": self.status},
        }


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What `GET /v1/model` reports, filled in by the Model replica that loaded the weights."""

    name: str
    task: str
    labels: tuple[str, ...]
    input_width: int
    input_height: int
    resize: ResizeMode
    weights: str
    device: str
    max_batch_size: int
    batch_wait_timeout_s: float
    replica: str = ""
    version: str = ""  # the served version these weights are (`models[].version`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "task": self.task,
            "labels": list(self.labels),
            "input_size": {"width": self.input_width, "height": self.input_height},
            "resize": self.resize,
            "weights": self.weights,
            "device": self.device,
            "replica": self.replica,
            "batching": {
                "max_batch_size": self.max_batch_size,
                "batch_wait_timeout_s": self.batch_wait_timeout_s,
            },
        }
