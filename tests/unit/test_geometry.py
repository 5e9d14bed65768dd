"""Resize geometry and its inverse: exact on paper, and true to the pixels the decoder produces."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from deployments.pixels.geometry import boxes_to_input, boxes_to_source, plan
from deployments.pixels.imaging import ResizeSpec, decode
from tests import settings
from tests.images import encode, rotated_jpeg

LIMITS = settings.limits()

SIZES = [
    (1, 1),
    (64, 64),
    (64, 256),
    (256, 64),
    (640, 480),
    (480, 640),
    (1000, 250),
    (250, 1000),
    (4096, 1024),
    (1023, 4093),
    (3000, 17),
    (17, 3000),
    (333, 777),
]
INPUTS = [(320, 320), (384, 256), (224, 224)]


def _random_boxes(width: int, height: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xs = np.sort(rng.uniform(0, width, size=(n, 2)), axis=1)
    ys = np.sort(rng.uniform(0, height, size=(n, 2)), axis=1)
    return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)


@pytest.mark.parametrize("mode", ["letterbox", "stretch", "resize_crop"])
@pytest.mark.parametrize(("size", "inp"), list(itertools.product(SIZES, INPUTS)))
def test_inverse_undoes_forward(mode: str, size: tuple[int, int], inp: tuple[int, int]) -> None:
    width, height = size
    geom = plan(mode, width, height, *inp, resize_size=max(inp) + 32)  # type: ignore[arg-type]
    boxes = _random_boxes(width, height, 50, seed=width * 7 + height)
    mapped = boxes_to_input(boxes, geom)
    if mode == "resize_crop":
        # Only what survives the crop can come back; keep boxes fully inside it.
        inside = (
            (mapped[:, 0] >= 0)
            & (mapped[:, 1] >= 0)
            & (mapped[:, 2] <= inp[0])
            & (mapped[:, 3] <= inp[1])
        )
        boxes, mapped = boxes[inside], mapped[inside]
    np.testing.assert_allclose(boxes_to_source(mapped, geom), boxes, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("size", "inp"), list(itertools.product(SIZES, INPUTS)))
def test_letterbox_fits_and_centres(size: tuple[int, int], inp: tuple[int, int]) -> None:
    width, height = size
    geom = plan("letterbox", width, height, *inp)
    corners = boxes_to_input([[0, 0, width, height]], geom)[0]
    assert corners[0] >= 0 and corners[1] >= 0
    assert corners[2] <= inp[0] + 1e-9 and corners[3] <= inp[1] + 1e-9
    # One side fills the input; padding is split evenly (within a pixel) on the other.
    assert corners[2] - corners[0] == pytest.approx(inp[0]) or corners[3] - corners[
        1
    ] == pytest.approx(inp[1])
    assert abs(corners[0] - (inp[0] - corners[2])) <= 1
    assert abs(corners[1] - (inp[1] - corners[3])) <= 1
    # Aspect ratio is kept to within the rounding of one pixel.
    assert (corners[2] - corners[0]) / (corners[3] - corners[1]) == pytest.approx(
        width / height, rel=max(1 / (corners[2] - corners[0]), 1 / (corners[3] - corners[1])) * 1.01
    )


def test_boxes_outside_the_image_are_clipped() -> None:
    geom = plan("letterbox", 200, 100, 320, 320)
    back = boxes_to_source([[0, 0, 320, 320]], geom)[0]
    assert back.tolist() == [0.0, 0.0, 200.0, 100.0]


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _image_with_rectangle(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    img = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    return img


CASES = [
    ("letterbox", 640, 480, (100, 50, 300, 200)),
    ("letterbox", 1000, 250, (10, 20, 990, 240)),
    ("letterbox", 250, 1000, (50, 600, 200, 980)),
    ("letterbox", 97, 61, (3, 5, 90, 60)),
    ("letterbox", 4000, 1000, (1200, 100, 2800, 900)),
    ("stretch", 640, 200, (100, 20, 500, 180)),
    ("resize_crop", 640, 480, (200, 150, 440, 330)),
]


@pytest.mark.parametrize(("mode", "width", "height", "box"), CASES)
def test_forward_map_matches_decoded_pixels(
    mode: str, width: int, height: int, box: tuple[int, int, int, int]
) -> None:
    spec = ResizeSpec(mode=mode, input_width=320, input_height=320, resize_size=352, pad_value=0)  # type: ignore[arg-type]
    out = decode(encode(_image_with_rectangle(width, height, box), "PNG"), spec, LIMITS)
    measured = _extent(out.pixels[..., 0] >= 128)
    expected = boxes_to_input([box], out.geometry)[0]
    np.testing.assert_allclose(measured, expected, atol=1.0)
    # And back: the rectangle seen in model pixels lands on the original, within one model pixel.
    back = boxes_to_source([measured], out.geometry)[0]
    tolerance = 1.0 / min(out.geometry.scale_x, out.geometry.scale_y)
    np.testing.assert_allclose(back, box, atol=tolerance + 1e-9)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize(("width", "height"), [(400, 240), (240, 400)])
def test_exif_orientation_is_applied_before_geometry(
    orientation: int, width: int, height: int
) -> None:
    box = (40, 30, 160, 110)
    data = rotated_jpeg(_image_with_rectangle(width, height, box), orientation)
    spec = ResizeSpec(mode="letterbox", input_width=320, input_height=320, pad_value=0)
    out = decode(data, spec, LIMITS)
    assert (out.image.width, out.image.height, out.image.orientation) == (
        width,
        height,
        orientation,
    )
    measured = _extent(out.pixels[..., 0] >= 128)
    np.testing.assert_allclose(measured, boxes_to_input([box], out.geometry)[0], atol=1.5)
