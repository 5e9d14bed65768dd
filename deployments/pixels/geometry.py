"""Resize geometry between the displayed image and the model input, and its exact inverse.

Pure functions, no Ray. Coordinates are continuous (pixel column i spans [i, i + 1)), so a box
maps by the affine `x_in = x * scale_x + offset_x` with no half-pixel corrections.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from deployments.items import Geometry, ResizeMode


def plan_letterbox(width: int, height: int, input_width: int, input_height: int) -> Geometry:
    """Scale to fit inside the input keeping the aspect ratio, centre on padding."""
    scale = min(input_width / width, input_height / height)
    new_w = min(input_width, max(1, round(width * scale)))
    new_h = min(input_height, max(1, round(height * scale)))
    return Geometry(
        mode="letterbox",
        source_width=width,
        source_height=height,
        input_width=input_width,
        input_height=input_height,
        scale_x=new_w / width,
        scale_y=new_h / height,
        offset_x=float((input_width - new_w) // 2),
        offset_y=float((input_height - new_h) // 2),
    )


def plan_resize_crop(
    width: int, height: int, input_width: int, input_height: int, resize_size: int
) -> Geometry:
    """Shorter side to `resize_size`, then a centre crop: torchvision's classification preset."""
    if width <= height:
        new_w, new_h = resize_size, int(resize_size * height / width)
    else:
        new_w, new_h = int(resize_size * width / height), resize_size
    new_w, new_h = max(new_w, input_width), max(new_h, input_height)
    crop_left = round((new_w - input_width) / 2.0)
    crop_top = round((new_h - input_height) / 2.0)
    return Geometry(
        mode="resize_crop",
        source_width=width,
        source_height=height,
        input_width=input_width,
        input_height=input_height,
        scale_x=new_w / width,
        scale_y=new_h / height,
        offset_x=float(-crop_left),
        offset_y=float(-crop_top),
    )


def plan_stretch(width: int, height: int, input_width: int, input_height: int) -> Geometry:
    """Resize to the input size exactly, ignoring the aspect ratio."""
    return Geometry(
        mode="stretch",
        source_width=width,
        source_height=height,
        input_width=input_width,
        input_height=input_height,
        scale_x=input_width / width,
        scale_y=input_height / height,
        offset_x=0.0,
        offset_y=0.0,
    )


def plan(
    mode: ResizeMode,
    width: int,
    height: int,
    input_width: int,
    input_height: int,
    resize_size: int | None = None,
) -> Geometry:
    """Dispatch on the resize mode."""
    if mode == "letterbox":
        return plan_letterbox(width, height, input_width, input_height)
    if mode == "resize_crop":
        return plan_resize_crop(
            width, height, input_width, input_height, resize_size or min(input_width, input_height)
        )
    return plan_stretch(width, height, input_width, input_height)


def resized_size(geom: Geometry) -> tuple[int, int]:
    """Size of the whole displayed image after scaling, before padding or cropping."""
    return round(geom.source_width * geom.scale_x), round(geom.source_height * geom.scale_y)


def boxes_to_input(boxes: npt.ArrayLike, geom: Geometry) -> npt.NDArray[np.float64]:
    """Map [x_min, y_min, x_max, y_max] rows from displayed pixels into model-input pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([geom.scale_x, geom.scale_y, geom.scale_x, geom.scale_y])
    offset = np.array([geom.offset_x, geom.offset_y, geom.offset_x, geom.offset_y])
    mapped: npt.NDArray[np.float64] = b * scale + offset
    return mapped


def boxes_to_source(boxes: npt.ArrayLike, geom: Geometry) -> npt.NDArray[np.float64]:
    """Map model-input boxes back to displayed pixels: undo offset, then scale, then clip."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([geom.scale_x, geom.scale_y, geom.scale_x, geom.scale_y])
    offset = np.array([geom.offset_x, geom.offset_y, geom.offset_x, geom.offset_y])
    out = (b - offset) / scale
    limit = np.array([geom.source_width, geom.source_height, geom.source_width, geom.source_height])
    clipped: npt.NDArray[np.float64] = np.clip(out, 0.0, limit)
    return clipped
