"""Segmentation without Ray: masks back in displayed pixels, COCO RLE, PNG label maps, and the
torchvision segmentation models by name."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pycocotools.mask as coco
import pytest
import torch
from PIL import Image

from deployments import tasks
from deployments.items import ImageInfo, Meta, Options, RawOutput, Sample
from deployments.pixels.geometry import boxes_to_input, plan
from deployments.pixels.imaging import ResizeSpec, decode
from deployments.pixels.masks import NOT_SEEN, box_of, decode_rle, encode_rle, to_source
from deployments.runtime.inference import Runner
from deployments.runtime.model_source import resolve
from deployments.runtime.spec import ModelSpec
from deployments.tasks.segmentation import displayed_labels, map_geometry
from tests import settings
from tests.images import encode, rotated_jpeg, two_rectangles

SEMANTIC = tasks.get("segmentation")
INSTANCES = tasks.get("instance_segmentation")
LIMITS = settings.limits(max_image_bytes=1 << 24, max_pixels=1 << 26)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("seed", range(40))
def test_rle_is_cocos_own_encoding(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 50, 2))
    mask = rng.random((h, w)) < rng.random()
    if seed == 0:
        mask[:] = True
    rle = encode_rle(mask)
    reference = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle == {"size": [h, w], "counts": reference["counts"].decode()}
    assert (coco.decode({"size": rle["size"], "counts": rle["counts"].encode()}) == mask).all()
    assert (decode_rle(rle) == mask).all()


@pytest.mark.parametrize(
    ("mode", "size"),
    [("letterbox", (400, 100)), ("stretch", (90, 300)), ("resize_crop", (300, 200))],
)
def test_a_mask_maps_back_like_its_box(mode: str, size: tuple[int, int]) -> None:
    """A box drawn in model-input pixels comes back as a mask whose tight box is the box mapped
    back by the boxes' own inverse, to within one input pixel."""
    width, height = size
    geometry = plan(mode, width, height, 96, 96, resize_size=110)  # type: ignore[arg-type]
    shown_box = [width * 0.3, height * 0.35, width * 0.6, height * 0.65]
    x0, y0, x1, y1 = (round(v) for v in boxes_to_input([shown_box], geometry)[0])
    plane = np.zeros((96, 96), dtype=np.uint8)
    plane[y0:y1, x0:x1] = 1
    mask = to_source(plane, geometry, fill=0) == 1
    box = box_of(mask)
    assert box is not None
    one_input_pixel = np.array([1 / geometry.scale_x, 1 / geometry.scale_y] * 2) + 1
    assert np.all(np.abs(np.array(box) - np.array(shown_box)) <= one_input_pixel)


def test_pixels_cropped_away_are_marked_not_seen() -> None:
    geometry = plan("resize_crop", 300, 100, 96, 96, resize_size=96)  # crops the sides away
    shown = to_source(np.zeros((96, 96), dtype=np.uint8), geometry)
    assert shown.shape == (100, 300)
    seen_cols = np.flatnonzero((shown != NOT_SEEN).all(axis=0))
    assert shown[:, 0].tolist() == [NOT_SEEN] * 100 and len(seen_cols) == pytest.approx(100, abs=2)


def _colours_runner() -> tuple[Runner, Any]:
    spec = ModelSpec(name="tests.fixtures.models:colours")
    resolved = resolve(spec)
    return Runner.for_model(spec, resolved, torch.device("cpu")), resolved


def _segment(data: bytes, **options: Any) -> tuple[tuple[Any, ...], dict[str, Any], Meta]:
    runner, resolved = _colours_runner()
    resize = ResizeSpec("letterbox", resolved.input_width, resolved.input_height)
    done = decode(data, resize, LIMITS)
    meta = Meta("a", "req", done.image, done.geometry, Options.of(options))
    (raw,) = runner.run([Sample(meta=meta, pixels=done.pixels)])
    assert isinstance(raw, RawOutput)
    chosen = meta.options.over(settings.task_defaults(SEMANTIC).model_dump())
    predictions, extra = SEMANTIC.answer(raw.arrays, meta, resolved.labels, chosen)
    return predictions, extra, meta


@pytest.mark.parametrize("orientation", [1, 6, 8, 3])
def test_semantic_masks_come_back_in_displayed_pixels(orientation: int) -> None:
    upright, truth = two_rectangles(480, 120, red=(20, 10, 200, 100), green=(300, 30, 460, 90))
    data = encode(upright, "PNG") if orientation == 1 else rotated_jpeg(upright, orientation)
    predictions, extra, meta = _segment(data)
    assert (meta.image.width, meta.image.height) == (480, 120)
    assert extra == {}
    assert [p.label for p in predictions] == ["red", "green"]  # no background
    for p in predictions:
        mask = coco.decode({"size": p.mask["size"], "counts": p.mask["counts"].encode()}) > 0
        assert mask.shape == (120, 480)
        assert p.area == int(mask.sum()) and p.box == box_of(mask)
        assert iou(mask, truth == p.class_id) >= 0.9, p.label
        assert 0.5 < p.score <= 1.0


def test_png_label_map_holds_the_same_masks() -> None:
    upright, truth = two_rectangles(200, 150, red=(10, 10, 90, 70), green=(120, 60, 190, 140))
    predictions, extra, _ = _segment(encode(upright, "PNG"), mask_format="png")
    label_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(extra["label_map"]))))
    assert label_map.shape == (150, 200)
    assert all(p.mask is None for p in predictions)
    for p in predictions:
        assert p.area == int((label_map == p.class_id).sum())
        assert iou(label_map == p.class_id, truth == p.class_id) >= 0.9


def _instances(n: int) -> tuple[dict[str, np.ndarray], Meta]:
    """`n` overlapping square instances in a 64 x 64 input, scores 0.9, 0.8, ..."""
    geometry = plan("letterbox", 128, 64, 64, 64)  # 64 x 32 content, 16 px padding
    masks = np.zeros((n, 64, 64), dtype=bool)
    boxes = []
    for i in range(n):
        x0, y0 = 4 + 8 * i, 20
        masks[i, y0 : y0 + 16, x0 : x0 + 16] = True
        boxes.append([x0, y0, x0 + 16, y0 + 16])
    arrays = {
        "boxes": np.array(boxes, dtype=np.float32),
        "scores": np.array([0.9 - 0.1 * i for i in range(n)], dtype=np.float32),
        "class_ids": np.arange(1, n + 1, dtype=np.int64),
        "masks": np.packbits(masks, axis=-1),
    }
    meta = Meta("a", "req", ImageInfo(128, 64, "PNG"), geometry, Options())
    return arrays, meta


def test_instances_keep_their_own_masks_above_the_threshold() -> None:
    arrays, meta = _instances(3)
    options = {"score_threshold": 0.75, "max_detections": 10, "mask_format": "rle"}
    predictions, extra = INSTANCES.answer(arrays, meta, ("bg", "a", "b", "c"), options)
    assert [p.label for p in predictions] == ["a", "b"] and extra == {}
    for p in predictions:
        mask = decode_rle(p.mask)  # type: ignore[arg-type]
        assert mask.shape == (64, 128) and p.area == int(mask.sum()) == 32 * 32
        assert box_of(mask) == pytest.approx(p.box)


def test_instance_png_gives_overlaps_to_the_better_score() -> None:
    arrays, meta = _instances(2)
    options = {"score_threshold": 0.0, "max_detections": 10, "mask_format": "png"}
    predictions, extra = INSTANCES.answer(arrays, meta, (), options)
    label_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(extra["label_map"]))))
    assert label_map.shape == (64, 128)
    first = decode_rle(encode_rle(label_map == 1))
    second = label_map == 2
    assert first.sum() == predictions[0].area and not (first & second).any()
    assert 0 < second.sum() < predictions[1].area  # the overlap went to the first


@pytest.mark.parametrize(
    ("name", "task", "kwargs"),
    [
        ("fcn_resnet50", "segmentation", {}),
        ("deeplabv3_mobilenet_v3_large", "segmentation", {}),
        ("lraspp_mobilenet_v3_large", "segmentation", {}),
        ("maskrcnn_resnet50_fpn", "instance_segmentation", {"box_score_thresh": 0.0}),
    ],
)
def test_torchvision_segmentation_models_by_name(
    name: str, task: str, kwargs: dict[str, Any]
) -> None:
    spec = ModelSpec(name=name, weights="none", input_size=128, num_classes=5, kwargs=kwargs)
    resolved = resolve(spec)
    assert resolved.task == task and resolved.resize == "letterbox"
    runner = Runner.for_model(spec, resolved, torch.device("cpu"))
    upright, _ = two_rectangles(200, 100, red=(10, 10, 60, 60), green=(100, 20, 180, 90))
    done = decode(encode(upright, "PNG"), ResizeSpec("letterbox", 128, 128), LIMITS)
    meta = Meta("a", "req", done.image, done.geometry, Options())
    (raw,) = runner.run([Sample(meta=meta, pixels=done.pixels)])
    assert isinstance(raw, RawOutput)
    the_task = tasks.get(task)
    chosen = settings.task_defaults(the_task).model_dump() | {"score_threshold": 0.0}
    chosen = {k: v for k, v in chosen.items() if k in the_task.defaults.model_fields}
    predictions, _ = the_task.answer(raw.arrays, meta, resolved.labels, chosen)
    for p in predictions:
        mask = decode_rle(p.mask)  # type: ignore[arg-type]
        assert mask.shape == (100, 200) and p.area == int(mask.sum())


def test_boundaries_land_between_input_pixels_at_displayed_resolution() -> None:
    """A 4:1 image seen 20x smaller: the class boundary is where the logits cross, to the
    displayed pixel, not on the 20-pixel input grid."""
    geometry = plan("letterbox", 640, 160, 32, 32)  # scale 0.05, content 32 x 8 at y 12..20
    centres = torch.arange(32, dtype=torch.float32) + 0.5
    ramp = (centres - 10.3).expand(32, 32)  # class 1 right of input x = 10.3: displayed x = 206
    logits = torch.stack([torch.zeros(32, 32), ramp])
    label_map, region = displayed_labels(logits, geometry)
    arrays = {"label_map": label_map, "region": region}
    shown = to_source(label_map, map_geometry(arrays, geometry))
    assert shown.shape == (160, 640)
    first_columns = {int(np.argmax(row == 1)) for row in shown}
    assert first_columns == {206}
