"""Segmentation: masks back in original displayed pixels (EXIF, letterbox and crop undone).

Two tasks share this module's mask handling (`deployments.pixels.masks`):
  * `segmentation` (semantic): one label per pixel; each class present is one prediction with its
    area, box and mask. Class 0 is the background (torchvision's and the shipped segmenter's
    convention) and is not reported.
  * `instance_segmentation` (Mask R-CNN): detections, each with its own mask, area and box.
Masks come as COCO RLE (`mask_format=rle`, the default), or the whole image as one PNG label map
(`mask_format=png`: the result's `label_map`, base64; a pixel holds the class id, or for instances
the 1-based rank of the instance; 0 is nothing).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from deployments.items import Geometry, Meta, Prediction
from deployments.pixels.masks import NOT_SEEN, box_of, encode_png, encode_rle, to_source
from deployments.tasks.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Arrays,
    OptionSpec,
    Preprocessing,
    label_for,
)
from deployments.tasks.detection import (
    Defaults as DetectionDefaults,
)
from deployments.tasks.detection import (
    boxes_in_source,
    detector_kwargs,
    detector_preprocessing,
    is_instance_segmenter,
    kept,
    score_options,
)

if TYPE_CHECKING:
    import torch
    from torchvision.models import WeightsEnum

    from deployments.runtime.spec import ModelSpec, Resolved

MASK_FORMATS = ("rle", "png")
MAX_CLASSES = 254  # label maps are 8-bit, and 255 marks pixels the model never saw
MASK_THRESHOLD = 0.5  # Mask R-CNN's per-pixel probability that makes a pixel the instance's
# Label maps leave the Model at the displayed size up to this many pixels (4 MP, 4 MB); larger
# images get a proportionally smaller map, sampled to every displayed pixel.
MAX_MAP_PIXELS = 1 << 22
_SAMPLES_PER_CHUNK = 1 << 18  # displayed pixels interpolated at once (x classes x 4 bytes)


class MaskOut(BaseModel):
    """COCO run-length encoding (pycocotools.mask.decode reads it)."""

    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="compressed column-major run lengths")


class SegmentOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    class_id: int
    score: float
    box: list[float]
    area: int
    mask: MaskOut | None = None


def _mask_format_option() -> OptionSpec:
    return OptionSpec(
        "mask_format",
        "choice",
        "segmentation: rle (a COCO RLE per prediction) or png (one label map per image)",
        choices=MASK_FORMATS,
    )


def _png(label_map: npt.NDArray[Any]) -> dict[str, Any]:
    return {"label_map": base64.b64encode(encode_png(label_map)).decode("ascii")}


def seen_region(geometry: Geometry) -> tuple[float, float, float, float]:
    """The part of the displayed image the model input covers: all of it, but for a crop."""
    x0 = max(0.0, -geometry.offset_x / geometry.scale_x)
    y0 = max(0.0, -geometry.offset_y / geometry.scale_y)
    x1 = min(geometry.source_width, (geometry.input_width - geometry.offset_x) / geometry.scale_x)
    y1 = min(geometry.source_height, (geometry.input_height - geometry.offset_y) / geometry.scale_y)
    return x0, y0, x1, y1


def displayed_labels(
    logits: torch.Tensor, geometry: Geometry
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """The label map at the displayed image's own resolution (at most `MAX_MAP_PIXELS`), from
    the logits interpolated bilinearly at each displayed pixel's centre, and the displayed
    region (x0, y0, x1, y1) it covers.

    Class boundaries land between input pixels, where the logits cross, instead of on the input
    grid: an image shown 3x larger than the model saw it gets boundaries to the displayed pixel,
    not steps of 3.
    """
    import torch  # label maps are made in the Model, which has torch loaded already
    import torch.nn.functional as F

    x0, y0, x1, y1 = seen_region(geometry)
    width, height = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    shrink = min(1.0, math.sqrt(MAX_MAP_PIXELS / (width * height)))
    cols, rows = max(1, round(width * shrink)), max(1, round(height * shrink))
    device = logits.device

    def normalised(
        start: float, extent: float, n: int, scale: float, offset: float, size: int
    ) -> torch.Tensor:
        centres = start + (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * extent / n
        return (centres * scale + offset) / size * 2.0 - 1.0  # grid_sample: -1..1 edge to edge

    gx = normalised(x0, width, cols, geometry.scale_x, geometry.offset_x, geometry.input_width)
    gy = normalised(y0, height, rows, geometry.scale_y, geometry.offset_y, geometry.input_height)
    out = np.empty((rows, cols), dtype=np.uint8)
    step = max(1, _SAMPLES_PER_CHUNK // cols)
    for top in range(0, rows, step):
        ys = gy[top : top + step]
        grid = torch.stack(torch.meshgrid(gx, ys, indexing="xy"), dim=-1)[None]
        sampled = F.grid_sample(
            logits[None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        out[top : top + len(ys)] = sampled[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
    return out, np.array([x0, y0, x1, y1], dtype=np.float64)


def map_geometry(arrays: Arrays, geometry: Geometry) -> Geometry:
    """How displayed pixels map onto a label map made by `displayed_labels`."""
    x0, y0, x1, y1 = (float(v) for v in arrays["region"])
    rows, cols = arrays["label_map"].shape
    scale_x, scale_y = cols / max(x1 - x0, 1e-6), rows / max(y1 - y0, 1e-6)
    return Geometry(
        mode="stretch",
        source_width=geometry.source_width,
        source_height=geometry.source_height,
        input_width=cols,
        input_height=rows,
        scale_x=scale_x,
        scale_y=scale_y,
        offset_x=-x0 * scale_x,
        offset_y=-y0 * scale_y,
    )


class SemanticDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_format: str = Field(pattern="^(rle|png)$")


class Semantic:
    name = "segmentation"
    summary = "a class per pixel: one mask, area and box per class present"
    defaults = SemanticDefaults
    prediction_schema = SegmentOut
    custom_input_size = 512

    def serves(self, torchvision_name: str) -> bool:
        import torchvision  # only where a model is resolved: the CPU stages never import torch

        return torchvision_name in torchvision.models.list_models(
            module=torchvision.models.segmentation
        )

    def preprocessing(self, entry: WeightsEnum | None, spec: ModelSpec) -> Preprocessing:
        # torchvision's preset resizes the shorter side to 520 and lets the size vary; batches
        # need one size, so the image is letterboxed into 520 x 520 instead.
        preset = entry.transforms() if entry is not None else None
        if preset is None:
            return Preprocessing(520, "letterbox", None, IMAGENET_MEAN, IMAGENET_STD)
        side = int(preset.resize_size[0]) if preset.resize_size else 520
        return Preprocessing(side, "letterbox", None, tuple(preset.mean), tuple(preset.std))

    def constructor_kwargs(self, spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
        if resolved.weights_kind != "torchvision":
            return {"weights_backbone": None}  # never fetch ImageNet backbone weights
        return {}

    def option_specs(self, max_candidates: int) -> tuple[OptionSpec, ...]:
        return (_mask_format_option(),)

    def decode(
        self, output: Any, geometries: Sequence[Geometry], resolved: Resolved
    ) -> list[Arrays]:
        logits = output["out"] if isinstance(output, Mapping) else output
        classes = int(logits.shape[1])
        if classes > MAX_CLASSES:
            raise ValueError(f"segmentation serves at most {MAX_CLASSES} classes, not {classes}")
        import torch  # decode runs in the Model, which has torch loaded already

        logits = logits.float()
        confidence, labels = torch.softmax(logits, dim=1).max(dim=1)
        flat = labels.flatten(1)
        # Mean confidence of each class over its own pixels: the class's score.
        sums = torch.zeros((len(geometries), classes), device=logits.device)
        sums.scatter_add_(1, flat, confidence.flatten(1))
        ones = torch.ones_like(flat, dtype=sums.dtype)
        counts = torch.zeros_like(sums).scatter_add_(1, flat, ones)
        scores = (sums / counts.clamp(min=1)).cpu().numpy()
        decoded = []
        for i, geometry in enumerate(geometries):
            label_map, region = displayed_labels(logits[i], geometry)
            decoded.append({"label_map": label_map, "region": region, "class_scores": scores[i]})
        return decoded

    def answer(
        self, arrays: Arrays, meta: Meta, labels: Sequence[str], options: Mapping[str, Any]
    ) -> tuple[tuple[Prediction, ...], dict[str, Any]]:
        shown = to_source(arrays["label_map"], map_geometry(arrays, meta.geometry), NOT_SEEN)
        areas = np.bincount(shown.ravel(), minlength=NOT_SEEN + 1)  # far cheaper than unique
        present = [c for c in range(1, NOT_SEEN) if areas[c]]
        rle = options["mask_format"] == "rle"
        predictions = []
        for c in present:
            mask = shown == c
            box = box_of(mask)
            assert box is not None  # the class is present
            predictions.append(
                Prediction(
                    label=label_for(labels, c),
                    class_id=c,
                    score=float(arrays["class_scores"][c]),
                    box=box,
                    area=int(areas[c]),
                    mask=encode_rle(mask) if rle else None,
                )
            )
        if rle:
            return tuple(predictions), {}
        png = np.where(shown == NOT_SEEN, 0, shown).astype(np.uint8)
        return tuple(predictions), _png(png)


class InstanceDefaults(DetectionDefaults):
    mask_format: str = Field(pattern="^(rle|png)$")


class Instances:
    name = "instance_segmentation"
    summary = "objects: a box, a class, a score and a mask each"
    defaults = InstanceDefaults
    prediction_schema = SegmentOut
    custom_input_size = 512

    def serves(self, torchvision_name: str) -> bool:
        import torchvision  # only where a model is resolved: the CPU stages never import torch

        return is_instance_segmenter(torchvision_name) and torchvision_name in (
            torchvision.models.list_models(module=torchvision.models.detection)
        )

    def preprocessing(self, entry: WeightsEnum | None, spec: ModelSpec) -> Preprocessing:
        return detector_preprocessing(spec)

    def constructor_kwargs(self, spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
        return detector_kwargs(spec, resolved)

    def option_specs(self, max_candidates: int) -> tuple[OptionSpec, ...]:
        return (*score_options(), _mask_format_option())

    def decode(
        self, output: Any, geometries: Sequence[Geometry], resolved: Resolved
    ) -> list[Arrays]:
        decoded = []
        for d in output:
            masks = (d["masks"][:, 0] >= MASK_THRESHOLD).cpu().numpy()
            decoded.append(
                {
                    "boxes": d["boxes"].float().cpu().numpy(),
                    "scores": d["scores"].float().cpu().numpy(),
                    "class_ids": d["labels"].cpu().numpy().astype(np.int64),
                    # One bit per pixel: 100 instances at 640 x 640 are 5 MB, not 40.
                    "masks": np.packbits(masks, axis=-1),
                }
            )
        return decoded

    def answer(
        self, arrays: Arrays, meta: Meta, labels: Sequence[str], options: Mapping[str, Any]
    ) -> tuple[tuple[Prediction, ...], dict[str, Any]]:
        geometry = meta.geometry
        keep = kept(arrays["scores"], options)
        boxes, visible = boxes_in_source(arrays["boxes"][keep], geometry)
        rle = options["mask_format"] == "rle"
        instance_map = np.zeros((geometry.source_height, geometry.source_width), dtype=np.uint16)
        predictions: list[Prediction] = []
        for idx, box, seen in zip(keep, boxes, visible, strict=True):
            if not seen:
                continue
            bits = np.unpackbits(arrays["masks"][idx], axis=-1)[:, : geometry.input_width]
            mask = to_source(bits, geometry, fill=0).astype(bool)
            c = int(arrays["class_ids"][idx])
            predictions.append(
                Prediction(
                    label=label_for(labels, c),
                    class_id=c,
                    score=float(arrays["scores"][idx]),
                    box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    area=int(mask.sum()),
                    mask=encode_rle(mask) if rle else None,
                )
            )
            if not rle:  # a better-scoring instance keeps the pixels both claim
                instance_map[mask & (instance_map == 0)] = len(predictions)
            if len(predictions) == int(options["max_detections"]):
                break
        return tuple(predictions), ({} if rle else _png(instance_map))


TASK = Semantic()
INSTANCE_TASK = Instances()
