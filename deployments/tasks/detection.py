"""Detection: boxes with a class and a score, mapped back to displayed pixels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from deployments.items import Geometry, Meta, Prediction
from deployments.pixels.geometry import boxes_to_source
from deployments.tasks.base import NO_NORMALISATION, Arrays, OptionSpec, Preprocessing, label_for

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

    from deployments.runtime.spec import ModelSpec, Resolved

# Detectors whose internal transform takes min_size/max_size: we pin both to our input size so the
# letterboxed image is not resized a second time inside the model.
RESIZING_DETECTORS = ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos")
MAX_DETECTIONS = 1000


class Defaults(BaseModel):
    """What a request gets for options it does not send (the Postprocessor's user_config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score_threshold: float = Field(ge=0.0, le=1.0)
    max_detections: int = Field(ge=1, le=MAX_DETECTIONS)


class BoxOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    class_id: int
    score: float
    box: list[float]


def is_instance_segmenter(name: str) -> bool:
    return name.startswith("maskrcnn")


def detector_preprocessing(spec: ModelSpec) -> Preprocessing:
    """torchvision detectors normalise inside; the input side is their `min_size` (640)."""
    mean, std = NO_NORMALISATION
    return Preprocessing(int(spec.kwargs.get("min_size", 640)), "letterbox", None, mean, std)


def detector_kwargs(spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if resolved.weights_kind != "torchvision":
        kwargs["weights_backbone"] = None  # never fetch ImageNet backbone weights
    if spec.name.startswith(RESIZING_DETECTORS):
        kwargs["min_size"] = min(resolved.input_width, resolved.input_height)
        kwargs["max_size"] = max(resolved.input_width, resolved.input_height)
    return kwargs


def score_options(max_detections: int = MAX_DETECTIONS) -> tuple[OptionSpec, ...]:
    return (
        OptionSpec("score_threshold", "probability", "minimum score, 0..1"),
        OptionSpec("max_detections", "int", "at most this many, best first", 1, max_detections),
    )


def kept(scores: npt.NDArray[np.float32], options: Mapping[str, Any]) -> npt.NDArray[np.int64]:
    """Indices of the boxes at or above the threshold, best first (at most `max_detections`
    before boxes that fall entirely into padding are dropped)."""
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] >= float(options["score_threshold"])]


def boxes_in_source(
    boxes: npt.NDArray[np.float32], geometry: Geometry
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Boxes in displayed pixels, and which of them keep an area once clipped (boxes that fell
    entirely into letterbox padding do not)."""
    mapped = boxes_to_source(boxes, geometry)
    visible = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    return mapped, visible


class Detection:
    name = "detection"
    summary = "objects: a box, a class and a score each"
    defaults = Defaults
    prediction_schema = BoxOut
    custom_input_size = 512

    def serves(self, torchvision_name: str) -> bool:
        import torchvision  # only where a model is resolved: the CPU stages never import torch

        module = torchvision.models.detection
        return torchvision_name in torchvision.models.list_models(
            module=module
        ) and not is_instance_segmenter(torchvision_name)

    def preprocessing(self, entry: WeightsEnum | None, spec: ModelSpec) -> Preprocessing:
        return detector_preprocessing(spec)

    def constructor_kwargs(self, spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
        return detector_kwargs(spec, resolved)

    def option_specs(self, max_candidates: int) -> tuple[OptionSpec, ...]:
        return score_options()

    def decode(
        self, output: Any, geometries: Sequence[Geometry], resolved: Resolved
    ) -> list[Arrays]:
        return [
            {
                "boxes": d["boxes"].float().cpu().numpy(),
                "scores": d["scores"].float().cpu().numpy(),
                "class_ids": d["labels"].cpu().numpy().astype(np.int64),
            }
            for d in output
        ]

    def answer(
        self, arrays: Arrays, meta: Meta, labels: Sequence[str], options: Mapping[str, Any]
    ) -> tuple[tuple[Prediction, ...], dict[str, Any]]:
        """Boxes at or above the threshold, mapped to displayed-image pixels, best first."""
        keep = kept(arrays["scores"], options)
        if len(keep) == 0:
            return (), {}
        boxes, visible = boxes_in_source(arrays["boxes"][keep], meta.geometry)
        out: list[Prediction] = []
        for idx, box, seen in zip(keep, boxes, visible, strict=True):
            if not seen:
                continue
            c = int(arrays["class_ids"][idx])
            out.append(
                Prediction(
                    label=label_for(labels, c),
                    class_id=c,
                    score=float(arrays["scores"][idx]),
                    box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                )
            )
            if len(out) == int(options["max_detections"]):
                break
        return tuple(out), {}


TASK = Detection()
