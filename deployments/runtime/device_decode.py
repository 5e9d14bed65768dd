"""Decode JPEGs on the Model's device and bring them to the model input as `imaging.decode` does.

Pure functions, no Ray. For a model with `gpu_decode`, the Preprocessor has read each JPEG's
header, checked the limits and planned the geometry (`imaging.prepare`); here a batch is decoded
with one `torchvision.io.decode_jpeg` call on the replica's device (nvJPEG on CUDA, libjpeg on the
CPU: the same code on either, so CPU tests run it), then each image follows `imaging.decode`'s
steps with torch ops on that device: resize in stored orientation (bilinear, antialiased when
shrinking, as Pillow's), turn upright by the EXIF orientation, pad (letterbox) or crop
(resize_crop). The result is the uint8 HWC image the CPU path would have sent, give or take the
resampling (Pillow decodes a large JPEG at a DCT-scaled size first and rounds in fixed point).

A JPEG the device cannot decode is that item's own `CorruptImage`, never the batch's failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from deployments.errors import CorruptImage, ServerError, VisionError
from deployments.items import Geometry, Jpeg

logger = logging.getLogger("ray.serve")


def decode_batch(
    jpegs: Sequence[Jpeg], geometries: Sequence[Geometry], device: torch.device
) -> list[torch.Tensor | VisionError]:
    """Per JPEG, its model-input pixels (uint8 HWC on `device`) or the error that is its own.

    One `decode_jpeg` call decodes the batch; when it fails (one bad file fails the whole call),
    each JPEG is decoded alone so only the bad ones fail.
    """
    data = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
    if device.type == "cuda":
        # nvJPEG's hardware decoder may write its outputs before work queued on the caller's
        # stream has run, into blocks the caching allocator recycled from tensors that work
        # still reads (pytorch/vision#9606; torchcodec#1634 waits the same way). So nothing is
        # left in flight when it starts.
        torch.cuda.current_stream(device).synchronize()
    decoded: list[torch.Tensor | VisionError | None]
    try:
        decoded = list(_decode_jpeg(data, device))
    except Exception as exc:  # noqa: BLE001 - any one bad file fails the whole call
        if len(jpegs) > 1:
            logger.info("decoding %d JPEGs failed (%r); decoding each alone", len(data), exc)
        _free(device)
        decoded = [_decode_one(d, device) for d in data]
    out: list[torch.Tensor | VisionError] = []
    for i, (jpeg, geometry) in enumerate(zip(jpegs, geometries, strict=True)):
        image, decoded[i] = decoded[i], None  # the full-size image goes once it is placed
        assert image is not None
        if isinstance(image, VisionError):
            out.append(image)
            continue
        try:
            out.append(place(image, jpeg, geometry))
        except VisionError as exc:
            out.append(exc)
        except torch.OutOfMemoryError:
            _free(device)
            out.append(ServerError("the Model's device ran out of memory placing this image"))
    return out


def load_decoder() -> None:
    """Import torchvision's JPEG decoder now, at a replica's start, so its first request does
    not pay for it (1.4 s); a Model that never decodes on its device does without it."""
    import torchvision.io  # noqa: F401


def _decode_jpeg(data: torch.Tensor | list[torch.Tensor], device: torch.device) -> Any:
    """torchvision's `decode_jpeg` into RGB on `device`: a tensor, or a list for a list."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | VisionError:
    try:
        image: torch.Tensor = _decode_jpeg(data, device)
    except torch.OutOfMemoryError:
        _free(device)
        return ServerError("the Model's device ran out of memory decoding this image; retry later")
    except Exception as exc:  # noqa: BLE001 - the decoders raise RuntimeError for any bad data
        return CorruptImage(
            f"the JPEG could not be decoded ({_reason(exc)}); the file is corrupt or truncated, "
            "or uses a JPEG feature the decoder lacks: send it re-encoded as a baseline JPEG, "
            "or as PNG"
        )
    return image


def _reason(exc: BaseException) -> str:
    # torchvision prefixes its messages with the C++ source location; keep the last clause.
    text = str(exc).strip().rsplit(", ", 1)[-1]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def place(image: torch.Tensor, jpeg: Jpeg, geometry: Geometry) -> torch.Tensor:
    """A decoded uint8 3xHxW image (stored orientation) -> the uint8 HWC model input.

    Raises `CorruptImage` when the decoded size is not the one its header announced.
    """
    width, height = jpeg.stored
    if tuple(image.shape) != (3, height, width):
        raise CorruptImage(
            f"the JPEG's header says {width}x{height} but it decodes to "
            f"{image.shape[-1]}x{image.shape[-2]}; the file is corrupt"
        )
    new_w, new_h = jpeg.resized
    if (new_w, new_h) != (width, height):
        resized = F.interpolate(
            image[None].float(),
            size=(new_h, new_w),
            mode="bilinear",
            align_corners=False,
            antialias=True,  # Pillow's filter widens with the shrink factor; this one too
        )[0]
        image = resized.round_().clamp_(0, 255).to(torch.uint8)
    return _onto_input(upright(image, jpeg.orientation).permute(1, 2, 0), geometry, jpeg.pad_value)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A CxHxW image as displayed under EXIF `orientation` (Pillow's `exif_transpose`)."""
    if orientation == 2:  # mirrored
        return image.flip(2)
    if orientation == 3:  # upside down
        return image.flip(1, 2)
    if orientation == 4:  # mirrored upside down
        return image.flip(1)
    if orientation == 5:  # transposed
        return image.transpose(1, 2)
    if orientation == 6:  # stored 90 degrees anticlockwise: turn clockwise
        return image.rot90(-1, (1, 2))
    if orientation == 7:  # transversed
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:  # stored 90 degrees clockwise: turn anticlockwise
        return image.rot90(1, (1, 2))
    return image


def _onto_input(resized: torch.Tensor, geometry: Geometry, pad_value: int) -> torch.Tensor:
    """Pad (letterbox) or crop (resize_crop) the upright HWC image onto the model input
    (`imaging._place`'s twin)."""
    h, w = geometry.input_height, geometry.input_width
    ox, oy = int(geometry.offset_x), int(geometry.offset_y)
    if geometry.mode == "letterbox":
        out = torch.full((h, w, 3), pad_value, dtype=torch.uint8, device=resized.device)
        rh, rw = resized.shape[:2]
        out[oy : oy + rh, ox : ox + rw] = resized
        return out
    if geometry.mode == "resize_crop":
        return resized[-oy : -oy + h, -ox : -ox + w]
    return resized
