"""Segmentation end to end over HTTP and the Python handle: every mask comes back in the image's
own displayed pixels (EXIF rotation, 4:1 letterbox undone) as COCO RLE or a PNG label map.

The `colours` test model labels red pixels 1 and green pixels 2, so each image's true masks are
known and a mask joined to another image, or mapped back wrongly, fails its IoU."""

from __future__ import annotations

import base64
import io

import numpy as np
import pycocotools.mask as coco
import pytest
from PIL import Image
from ray import serve

from deployments.transports.schema import MultiResultOut, ResultOut
from tests.images import encode, rotated_jpeg, two_rectangles
from tests.serving import (
    MASK_RCNN,
    deploy,
    model_zoo_config,
    post_image,
    post_multipart,
)

# (width, height, red box, green box): 4:1 both ways, and a small one
SCENES = [
    (800, 200, (40, 20, 300, 180), (500, 50, 760, 150)),
    (150, 600, (10, 20, 140, 200), (30, 350, 120, 560)),
    (97, 61, (5, 5, 40, 50), (60, 10, 90, 55)),
]


@pytest.fixture(scope="module", autouse=True)
def segmenter_app() -> None:
    """`COLOURS_SEGMENTER` as the default model, Mask R-CNN by name (test_detection's deploy)."""
    deploy(model_zoo_config())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _scene(i: int, orientation: int = 1) -> tuple[bytes, np.ndarray]:
    width, height, red, green = SCENES[i]
    upright, truth = two_rectangles(width, height, red=red, green=green)
    data = encode(upright, "PNG") if orientation == 1 else rotated_jpeg(upright, orientation)
    return data, truth


def _check_masks(body: dict, truth: np.ndarray) -> None:
    assert body["task"] == "segmentation"
    height, width = truth.shape
    assert (body["image"]["width"], body["image"]["height"]) == (width, height)
    assert [p["label"] for p in body["predictions"]] == ["red", "green"]
    for p in body["predictions"]:
        rle = {"size": p["mask"]["size"], "counts": p["mask"]["counts"].encode()}
        mask = coco.decode(rle) > 0
        assert mask.shape == (height, width)
        assert p["area"] == int(mask.sum())
        assert iou(mask, truth == p["class_id"]) >= 0.9, (p["label"], body["image"])


@pytest.mark.parametrize("orientation", [1, 6, 8])
@pytest.mark.parametrize("scene", range(len(SCENES)))
def test_masks_come_back_in_displayed_pixels(scene: int, orientation: int) -> None:
    data, truth = _scene(scene, orientation)
    kind = "image/png" if orientation == 1 else "image/jpeg"
    response = post_image(data, kind)
    assert response.status_code == 200, response.text
    body = response.json()
    assert ResultOut.model_validate(body).model_dump(exclude_none=True) == body
    _check_masks(body, truth)


def test_a_multipart_batch_gives_each_image_its_own_masks() -> None:
    scenes = [_scene(i) for i in range(len(SCENES))]
    response = post_multipart([(f"{i}.png", d, "image/png") for i, (d, _) in enumerate(scenes)])
    assert response.status_code == 200, response.text
    body = response.json()
    MultiResultOut.model_validate(body)
    for result, (_, truth) in zip(body["results"], scenes, strict=True):
        _check_masks(result, truth)


def test_png_label_map_and_bad_mask_format() -> None:
    data, truth = _scene(0, 6)
    response = post_image(data, "image/jpeg", mask_format="png")
    assert response.status_code == 200, response.text
    body = response.json()
    label_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["label_map"]))))
    assert label_map.shape == truth.shape
    for p in body["predictions"]:
        assert "mask" not in p and p["area"] == int((label_map == p["class_id"]).sum())
        assert iou(label_map == p["class_id"], truth == p["class_id"]) >= 0.9
    refused = post_image(data, "image/jpeg", mask_format="svg")
    assert refused.status_code == 400 and "mask_format" in refused.json()["error"]["message"]
    misapplied = post_image(data, "image/jpeg", top_k="3")
    assert misapplied.status_code == 400
    assert "applies to classification" in misapplied.json()["error"]["message"]


def test_python_handle_returns_masks() -> None:
    handle = serve.get_app_handle("vision")
    data, truth = _scene(1, 8)
    result = handle.predict.remote(data, mask_format="rle").result()
    assert result.task == "segmentation"
    assert [p.label for p in result.predictions] == ["red", "green"]
    for p in result.predictions:
        mask = coco.decode({"size": p.mask["size"], "counts": p.mask["counts"].encode()}) > 0
        assert iou(mask, truth == p.class_id) >= 0.9
    many = handle.predict_many.remote([_scene(0)[0], b"not an image"]).result()
    assert many[0].task == "segmentation" and many[1].code == "unsupported_format"


def test_mask_rcnn_instances_over_http_in_displayed_pixels() -> None:
    """Mask R-CNN by name (random weights, so every candidate is kept): each instance's mask is
    the displayed image's size, its area is its mask's, and PNG ranks instances by score."""
    data, truth = _scene(0, 6)  # 800 x 200 displayed, stored rotated
    response = post_image(data, "image/jpeg", model=MASK_RCNN[0], score_threshold="0")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "instance_segmentation"
    assert ResultOut.model_validate(body).model_dump(exclude_none=True) == body
    assert 1 <= len(body["predictions"]) <= 3
    for p in body["predictions"]:
        rle = {"size": p["mask"]["size"], "counts": p["mask"]["counts"].encode()}
        mask = coco.decode(rle) > 0
        assert mask.shape == truth.shape and p["area"] == int(mask.sum())
    png = post_image(
        data, "image/jpeg", model=MASK_RCNN[0], score_threshold="0", mask_format="png"
    ).json()
    ranks = np.asarray(Image.open(io.BytesIO(base64.b64decode(png["label_map"]))))
    assert ranks.shape == truth.shape and ranks.max() <= len(png["predictions"])
