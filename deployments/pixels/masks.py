"""Masks between model input and displayed pixels, and their compact encodings. Pure, no Ray.

A label map or mask predicted at model-input resolution is brought back to the displayed image
(after EXIF orientation) by sampling, for every displayed pixel, the input pixel its centre lands
on: `x_in = (x + 0.5) * scale_x + offset_x`, the same affine map as boxes. This undoes letterbox
padding, centre crops and stretching exactly; displayed pixels that the model never saw (cropped
away) take `fill`.

Encodings: COCO run-length (column-major, the compressed `counts` string of pycocotools, so
`pycocotools.mask.decode` reads it) and a PNG of a label map.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from deployments.items import Geometry

NOT_SEEN = 255  # label-map value for displayed pixels outside the model's view (cropped away)


def _source_index(size: int, scale: float, offset: float, limit: int) -> npt.NDArray[np.int64]:
    """For each displayed column (or row), the input column it samples; -1 when outside."""
    centres = (np.arange(size, dtype=np.float64) + 0.5) * scale + offset
    index = np.floor(centres).astype(np.int64)
    index[(index < 0) | (index >= limit)] = -1
    return index


def to_source(
    plane: npt.NDArray[np.generic], geometry: Geometry, fill: int = NOT_SEEN
) -> npt.NDArray[np.generic]:
    """A model-input plane (H_in x W_in: labels or a mask) resampled to displayed pixels."""
    if plane.shape[:2] != (geometry.input_height, geometry.input_width):
        raise ValueError(
            f"plane is {plane.shape[1]}x{plane.shape[0]}, the model input is "
            f"{geometry.input_width}x{geometry.input_height}"
        )
    cols = _source_index(
        geometry.source_width, geometry.scale_x, geometry.offset_x, geometry.input_width
    )
    rows = _source_index(
        geometry.source_height, geometry.scale_y, geometry.offset_y, geometry.input_height
    )
    out = plane[np.clip(rows, 0, None)[:, None], np.clip(cols, 0, None)[None, :]]
    if (cols < 0).any() or (rows < 0).any():
        out = out.copy()
        out[rows < 0, :] = fill
        out[:, cols < 0] = fill
    return out


def rle_counts(mask: npt.NDArray[np.bool_]) -> list[int]:
    """Run lengths of a binary mask in column-major order, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """COCO's compressed counts: each run (after the second, as a difference from the run two
    before) in 5-bit groups with a continuation bit, offset into printable ASCII from '0'."""
    out: list[str] = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10 == 0 and x == 0) or (c & 0x10 != 0 and x == -1))
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def encode_rle(mask: npt.NDArray[np.bool_]) -> dict[str, object]:
    """COCO RLE of a binary mask: `{"size": [height, width], "counts": str}`."""
    height, width = mask.shape
    return {"size": [int(height), int(width)], "counts": rle_string(rle_counts(mask))}


def decode_rle(rle: dict[str, object]) -> npt.NDArray[np.bool_]:
    """The mask a COCO RLE (compressed counts string) describes; for tests and clients."""
    size = rle["size"]
    counts_text = rle["counts"]
    assert isinstance(size, list) and isinstance(counts_text, str)
    height, width = int(size[0]), int(size[1])
    counts: list[int] = []
    pos = 0
    while pos < len(counts_text):
        x, shift, more = 0, 0, True
        while more:
            c = ord(counts_text[pos]) - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                x |= -1 << shift
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(height * width, dtype=bool)
    at = 0
    for i, run in enumerate(counts):
        if i % 2:
            flat[at : at + run] = True
        at += run
    return flat.reshape((height, width), order="F")


def encode_png(label_map: npt.NDArray[np.generic]) -> bytes:
    """A label map as a greyscale PNG: each pixel's value is its class (or instance); 8-bit for
    a uint8 map, 16-bit otherwise."""
    buf = io.BytesIO()
    dtype = np.uint8 if label_map.dtype == np.uint8 else np.dtype("<u2")
    image = Image.fromarray(np.ascontiguousarray(label_map, dtype=dtype))  # "L" or "I;16"
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def box_of(mask: npt.NDArray[np.bool_]) -> tuple[float, float, float, float] | None:
    """The tight [x_min, y_min, x_max, y_max] of a mask's pixels (pixel i spans [i, i + 1))."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
