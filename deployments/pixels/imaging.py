"""Decode untrusted image bytes into model-input pixels, with a typed error for every bad input.

Pure functions, no Ray. The steps, in order of cost:
  1. cheap checks on the bytes (empty, too large, unknown signature);
  2. the header (format, size, EXIF orientation), then a plan of every image the decode will hold
     (decoded, resized before the crop or pad), each checked against the pixel limit before any
     pixel is decoded;
  3. decode (JPEG in draft mode when the target is much smaller), resize in stored orientation,
     then rotate the small result upright, pad or crop to the model input. With a model's
     `gpu_decode`, `prepare` stops after step 2 for RGB and greyscale JPEGs and hands on the
     compressed bytes with the plan; the Model does step 3 on its device (`device_decode`).
Pillow's own limits stay on (its decompression-bomb check, truncated-file errors).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image

from deployments.errors import (
    CorruptImage,
    EmptyImage,
    PayloadTooLarge,
    ServerError,
    TooManyPixels,
    UnsupportedFormat,
)
from deployments.items import Geometry, ImageInfo, Jpeg, ResizeMode
from deployments.pixels.geometry import plan, resized_size
from deployments.settings import Limits

# Only these decoders ever see client bytes (Pillow would otherwise try every plugin it has).
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP")
SUPPORTED_NAMES = "JPEG, PNG, GIF, TIFF, WebP or BMP"

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}
_WHITE = (255, 255, 255, 255)


@dataclass(frozen=True, slots=True)
class ResizeSpec:
    """How every image is brought to the model input."""

    mode: ResizeMode
    input_width: int
    input_height: int
    resize_size: int | None = None  # shorter side before the crop, for mode "resize_crop"
    pad_value: int = 114
    draft: bool = True  # let JPEG decode at 1/2, 1/4 or 1/8 scale when that is still >= target
    # Leave RGB and greyscale JPEGs compressed for the Model to decode on its device (`prepare`).
    gpu_decode: bool = False


@dataclass(frozen=True, slots=True)
class DecodePlan:
    """Every image size a decode will allocate, known from the header alone."""

    geometry: Geometry
    stored: tuple[int, int]  # width, height as in the file (before the EXIF rotation)
    resized: tuple[int, int]  # width, height in stored orientation, before the crop or pad


@dataclass(frozen=True, slots=True)
class Preprocessed:
    pixels: npt.NDArray[np.uint8]  # HWC, input_height x input_width x 3
    image: ImageInfo
    geometry: Geometry


@dataclass(frozen=True, slots=True)
class Deferred:
    """A JPEG whose decode is left to the Model's device, with the same metadata as `decode`'s."""

    jpeg: Jpeg
    image: ImageInfo
    geometry: Geometry


def sniff_format(data: bytes) -> str | None:
    """The image container named by the first bytes, or None when it is no format we decode."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_prefix(data: bytes) -> str:
    head = data[:16]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"it starts with text {head.decode('ascii', 'replace')!r}"
    return f"it starts with bytes {head[:8].hex(' ')}"


def open_image(data: bytes, limits: Limits) -> tuple[Image.Image, str]:
    """Parse the header only; raise the typed error a client can act on."""
    if not data:
        raise EmptyImage("the image is empty (0 bytes); send the file's contents as the body")
    if len(data) > limits.max_image_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data)} bytes; the limit is {limits.max_image_bytes} bytes"
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormat(
            f"the data is not an image in a supported format ({SUPPORTED_NAMES}); "
            f"{_describe_prefix(data)}"
        )
    Image.init()  # registers every plugin once, so `formats=` can name them (cheap afterwards)
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"the {fmt} image is too large to decode safely: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure
        raise CorruptImage(
            f"the data looks like {fmt} but its header cannot be read ({_reason(exc)}); "
            "the file is corrupt or truncated"
        ) from None
    width, height = img.size
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {limits.max_pixels / 1e6:.1f} megapixels; downscale it before sending"
        )
    return img, fmt


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _orientation(img: Image.Image, fmt: str) -> int:
    """The EXIF orientation tag, read without decoding any pixels."""
    try:
        if fmt == "PNG":
            # PNG's getexif() decodes the whole image to look for late chunks; read the
            # eXIf chunk seen before the pixel data instead.
            exif = Image.Exif()
            raw = img.info.get("exif")
            if isinstance(raw, bytes):
                exif.load(raw)
        else:
            exif = img.getexif()
        value = exif.get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail an otherwise good image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def plan_decode(
    width: int, height: int, orientation: int, spec: ResizeSpec, limits: Limits
) -> DecodePlan:
    """Size every image the decode will hold, from the header; refuse one over the pixel limit.

    `width` x `height` is the stored size, already checked against `limits.max_pixels`; the JPEG
    draft only shrinks it. The resized image (before the crop or pad) is checked here: letterbox
    and stretch never exceed the model input, but resize_crop upscales a thin sliver until its
    shorter side fills the input, so a 1x20000 image would become 232x4640000. The model input
    itself is always allowed (its size is the config's, not the image's). Pillow's two-pass
    resize runs the cheaper pass first, so the buffer between its passes holds no more pixels
    than the larger of the two images checked.
    """
    swaps = orientation in _SWAPS_AXES
    shown_w, shown_h = (height, width) if swaps else (width, height)
    geom = plan(spec.mode, shown_w, shown_h, spec.input_width, spec.input_height, spec.resize_size)
    new_w, new_h = resized_size(geom)
    allowed = max(limits.max_pixels, spec.input_width * spec.input_height)
    if new_w * new_h > allowed:
        shorter = min(new_w, new_h)
        raise TooManyPixels(
            f"the {shown_w}x{shown_h} image would be resized to {new_w}x{new_h} = "
            f"{new_w * new_h / 1e6:.1f} megapixels before its {spec.input_width}x"
            f"{spec.input_height} {'centre crop' if geom.mode == 'resize_crop' else 'model input'}"
            f"; the limit is {allowed / 1e6:.1f} megapixels; crop it to an aspect ratio of at "
            f"most {max(1, allowed // (shorter * shorter))}:1 before sending"
        )
    return DecodePlan(
        geometry=geom,
        stored=(width, height),
        resized=(new_h, new_w) if swaps else (new_w, new_h),
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; alpha is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        # 16-bit (or 32-bit integer) samples: keep the top 8 bits instead of clipping at 255.
        # In place: one 4-byte copy of the image, not one per arithmetic step.
        arr = np.asarray(img).astype(np.uint32)
        top = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        arr *= 255
        arr //= max(top, 1)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    if mode == "F":
        floats = np.array(img, dtype=np.float32)  # a writable copy, scaled in place
        if floats.max(initial=0.0) <= 1.0:
            floats *= 255.0
        np.clip(floats, 0, 255, out=floats)
        return Image.fromarray(floats.astype(np.uint8)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return img.convert("RGB")


def _open_planned(
    data: bytes, spec: ResizeSpec, limits: Limits
) -> tuple[Image.Image, str, int, DecodePlan]:
    """The header, its orientation and the decode's plan, every limit checked; no pixel decoded."""
    img, fmt = open_image(data, limits)
    orientation = _orientation(img, fmt)
    try:
        planned = plan_decode(*img.size, orientation, spec, limits)
    except TooManyPixels:
        img.close()
        raise
    return img, fmt, orientation, planned


def _info(geom: Geometry, fmt: str, orientation: int) -> ImageInfo:
    return ImageInfo(
        width=geom.source_width, height=geom.source_height, format=fmt, orientation=orientation
    )


def prepare(data: bytes, spec: ResizeSpec, limits: Limits) -> Preprocessed | Deferred:
    """What the Preprocessor emits: `decode`'s pixels, or with `spec.gpu_decode` an RGB or
    greyscale JPEG left compressed, with the plan `decode` would have followed (the same header,
    orientation, limits and geometry; the Model's device decodes and places it).

    Raises a `ClientError` subclass for anything wrong with the header, like `decode`.
    """
    if not (spec.gpu_decode and sniff_format(data) == "JPEG"):
        return decode(data, spec, limits)
    img, fmt, orientation, planned = _open_planned(data, spec, limits)
    mode = img.mode
    img.close()  # only its header was read
    if fmt != "JPEG" or mode not in ("RGB", "L"):  # CMYK and YCCK JPEGs stay with Pillow
        return decode(data, spec, limits)
    if not _ends_after_its_scan(data):
        # Pillow refuses a JPEG cut short (it must read to the end marker); some device decoders
        # would fill the rest with grey and answer, so the same file is refused here, as Pillow's.
        raise CorruptImage(
            "the JPEG image ends before its end-of-image marker; the file is corrupt or truncated"
        )
    jpeg = Jpeg(
        data=data,
        stored=planned.stored,
        resized=planned.resized,
        orientation=orientation,
        pad_value=spec.pad_value,
    )
    geom = planned.geometry
    return Deferred(jpeg=jpeg, image=_info(geom, fmt, orientation), geometry=geom)


def _ends_after_its_scan(data: bytes) -> bool:
    """Whether an end-of-image marker follows the last start-of-scan (inside scan data 0xFF is
    followed only by 0x00 or a restart marker 0xD0-0xD7, so neither appears there by chance)."""
    scan = data.rfind(b"\xff\xda")
    return scan >= 0 and data.find(b"\xff\xd9", scan) >= 0


def decode(data: bytes, spec: ResizeSpec, limits: Limits) -> Preprocessed:
    """Bytes -> upright uint8 pixels in model-input geometry, with what post-processing needs.

    Raises a `ClientError` subclass for anything wrong with the bytes; never a bare exception.
    """
    img, fmt, orientation, planned = _open_planned(data, spec, limits)
    geom, target = planned.geometry, planned.resized
    try:
        if spec.draft and fmt == "JPEG" and img.mode in ("RGB", "L"):
            img.draft(img.mode, target)
        img.load()
        rgb = _to_rgb(img)
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.BILINEAR)
        if orientation in _TRANSPOSE:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
        resized = np.asarray(rgb)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"the {fmt} image is too large to decode safely: {exc}") from None
    except MemoryError:  # our limit, not the client's file: never report it as corrupt
        raise ServerError(
            "the service ran out of memory decoding this image; retry later"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken data
        raise CorruptImage(
            f"the {fmt} image could not be decoded ({_reason(exc)}); "
            "the file is corrupt or truncated"
        ) from None
    finally:
        img.close()
    return Preprocessed(
        pixels=_place(resized, geom, spec.pad_value),
        image=_info(geom, fmt, orientation),
        geometry=geom,
    )


def _place(resized: npt.NDArray[np.uint8], geom: Geometry, pad_value: int) -> npt.NDArray[np.uint8]:
    """Pad (letterbox) or crop (resize_crop) the resized image onto the model input."""
    h, w = geom.input_height, geom.input_width
    ox, oy = int(geom.offset_x), int(geom.offset_y)
    if geom.mode == "letterbox":
        out = np.full((h, w, 3), pad_value, dtype=np.uint8)
        rh, rw = resized.shape[:2]
        out[oy : oy + rh, ox : ox + rw] = resized
        return out
    if geom.mode == "resize_crop":
        return np.ascontiguousarray(resized[-oy : -oy + h, -ox : -ox + w])
    return np.ascontiguousarray(resized)
