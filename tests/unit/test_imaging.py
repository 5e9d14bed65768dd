"""Decoding untrusted bytes: each bad input gets its typed error; odd but valid ones decode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deployments import errors
from deployments.pixels.imaging import ResizeSpec, decode, sniff_format
from tests import images, settings

LIMITS = settings.limits()  # the limits serve_config.yaml serves with


def _same_size(width: int, height: int) -> ResizeSpec:
    """Stretch to the source size: no resampling, so decoded pixels can be compared exactly."""
    return ResizeSpec(mode="stretch", input_width=width, input_height=height)


LETTERBOX = ResizeSpec(mode="letterbox", input_width=256, input_height=256)

BAD = [
    ("zero bytes", b"", errors.EmptyImage, 400),
    ("random bytes", images.random_bytes(), errors.UnsupportedFormat, 415),
    ("text file", images.TEXT_FILE, errors.UnsupportedFormat, 415),
    ("truncated jpeg", images.truncated_jpeg(), errors.CorruptImage, 422),
    ("png with corrupt header chunk", images.png_bad_header_crc(), errors.CorruptImage, 422),
    ("png with corrupt data chunk", images.png_corrupt_data(), errors.CorruptImage, 422),
    ("decompression bomb", images.decompression_bomb(), errors.TooManyPixels, 413),
]


@pytest.mark.parametrize(("name", "data", "error", "status"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_its_typed_error(
    name: str, data: bytes, error: type[errors.VisionError], status: int
) -> None:
    with pytest.raises(error) as caught:
        decode(data, LETTERBOX, LIMITS)
    assert caught.value.status == status
    assert isinstance(caught.value, errors.ClientError)
    assert len(caught.value.message) > 20  # says what is wrong, not just a code


@pytest.mark.parametrize(("side", "says"), [(8_000, "8000x8000"), (60_000, "too large")])
def test_bomb_is_rejected_from_its_header_alone(side: int, says: str) -> None:
    """Past our limit but under Pillow's, ours names the size; far past it, Pillow's fires first."""
    data = images.decompression_bomb(side, side)
    assert len(data) < 1000
    with pytest.raises(errors.TooManyPixels, match=says):
        decode(data, LETTERBOX, settings.limits(max_pixels=40_000_000))


def test_pixel_limit_is_configurable_and_pillow_limit_stays_on() -> None:
    data = images.png(200, 100)
    with pytest.raises(errors.TooManyPixels, match=r"limit is 0\.0"):
        decode(data, LETTERBOX, settings.limits(max_pixels=19_999))
    assert decode(data, LETTERBOX, settings.limits(max_pixels=20_000)).image.width == 200
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 0


def test_byte_limit() -> None:
    data = images.jpeg(320, 240)
    with pytest.raises(errors.PayloadTooLarge, match=str(len(data))):
        decode(data, LETTERBOX, settings.limits(max_image_bytes=len(data) - 1))


def test_random_bytes_do_not_look_like_an_image() -> None:
    assert sniff_format(images.random_bytes()) is None
    assert sniff_format(images.jpeg()) == "JPEG"
    assert sniff_format(images.png()) == "PNG"


def test_sixteen_bit_png_keeps_its_dynamic_range() -> None:
    data, expected = images.png16_gray(64, 48)
    out = decode(data, _same_size(64, 48), LIMITS)
    assert out.image.format == "PNG"
    for channel in range(3):
        np.testing.assert_array_equal(out.pixels[..., channel], expected)


def test_palette_png_matches_its_rgb_rendering() -> None:
    data = images.palette_png(96, 64)
    expected = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode(data, _same_size(96, 64), LIMITS).pixels, expected)


def test_cmyk_jpeg_decodes_to_the_right_colours() -> None:
    original = np.asarray(images.picture(96, 64, seed=2), dtype=np.float32)
    out = decode(images.cmyk_jpeg(96, 64, seed=2), _same_size(96, 64), LIMITS)
    assert np.abs(out.pixels.astype(np.float32) - original).mean() < 12


def test_grayscale_becomes_three_equal_channels() -> None:
    out = decode(images.gray_jpeg(), _same_size(96, 64), LIMITS)
    np.testing.assert_array_equal(out.pixels[..., 0], out.pixels[..., 1])
    np.testing.assert_array_equal(out.pixels[..., 1], out.pixels[..., 2])
    assert out.pixels.std() > 10  # still a picture, not a flat fill


def test_transparent_pixels_are_composited_over_white() -> None:
    out = decode(images.rgba_png(96, 64, seed=4), _same_size(96, 64), LIMITS)
    assert (out.pixels[:, 48:] == 255).all()
    np.testing.assert_array_equal(
        out.pixels[:, :48], np.asarray(images.picture(96, 64, seed=4))[:, :48]
    )


def test_animated_gif_uses_its_first_frame() -> None:
    data, first = images.animated_gif()
    out = decode(data, _same_size(80, 60), LIMITS)
    assert out.image.format == "GIF"
    np.testing.assert_allclose(out.pixels.reshape(-1, 3).mean(axis=0), first, atol=2)


def test_multipage_tiff_uses_its_first_page() -> None:
    data, first = images.multipage_tiff()
    out = decode(data, _same_size(80, 60), LIMITS)
    assert out.image.format == "TIFF"
    np.testing.assert_array_equal(np.unique(out.pixels.reshape(-1, 3), axis=0), [first])


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_reported_and_displayed_size_used(orientation: int) -> None:
    upright = images.picture(300, 200, seed=9)
    out = decode(images.rotated_jpeg(upright, orientation), _same_size(300, 200), LIMITS)
    assert (out.image.width, out.image.height, out.image.orientation) == (300, 200, orientation)
    diff = np.abs(out.pixels.astype(np.float32) - np.asarray(upright, dtype=np.float32)).mean()
    assert diff < 6, f"orientation {orientation} not undone (mean abs diff {diff:.1f})"


def test_draft_decoding_of_a_large_jpeg_matches_full_decoding() -> None:
    data = images.jpeg(2400, 1800, seed=11, quality=90)  # drafts at 1/4, to 600 x 450
    spec = ResizeSpec(mode="letterbox", input_width=320, input_height=320)
    fast = decode(data, spec, LIMITS)
    full = decode(
        data,
        ResizeSpec(mode="letterbox", input_width=320, input_height=320, draft=False),
        LIMITS,
    )
    assert (fast.image.width, fast.image.height) == (2400, 1800)
    assert fast.geometry == full.geometry
    assert np.abs(fast.pixels.astype(np.float32) - full.pixels.astype(np.float32)).mean() < 3


def test_output_is_contiguous_uint8_in_model_geometry() -> None:
    out = decode(
        images.jpeg(640, 480),
        ResizeSpec(mode="resize_crop", input_width=224, input_height=224, resize_size=256),
        LIMITS,
    )
    assert out.pixels.shape == (224, 224, 3) and out.pixels.dtype == np.uint8
    assert out.pixels.flags["C_CONTIGUOUS"]


def test_png_exif_orientation_is_honoured_without_decoding_twice() -> None:
    upright = images.picture(120, 80, seed=12)
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    data = images.encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    out = decode(data, _same_size(120, 80), LIMITS)
    assert (out.image.width, out.image.height, out.image.orientation) == (120, 80, 6)
    np.testing.assert_array_equal(out.pixels, np.asarray(upright))
