"""A torchvision detector end to end: every shape and EXIF orientation is served, batched, with
its own displayed size and per-request options. Random weights make the boxes meaningless, so
box geometry is proven by the shipped detector's test (test_shipped_detector.py), whose ground
truth is known; the Postprocessor clips boxes, so "inside the image" would prove nothing here."""

from __future__ import annotations

import asyncio

import pytest

from tests import images
from tests.serving import (
    TORCHVISION_DETECTOR,
    deploy,
    model_zoo_config,
    post_image,
    post_many,
    predict_path,
)

DETECTOR = TORCHVISION_DETECTOR[0]  # served by name, beside test_segmentation's models
SIZES = [(640, 480), (480, 640), (1600, 400), (400, 1600), (97, 61), (2000, 1999)]


@pytest.fixture(scope="module", autouse=True)
def detector_app() -> None:
    deploy(model_zoo_config())


def _check_boxes(body: dict, width: int, height: int) -> int:
    assert body["task"] == "detection"
    assert (body["image"]["width"], body["image"]["height"]) == (width, height)
    for p in body["predictions"]:
        assert len(p["box"]) == 4 and 0.0 <= p["score"] <= 1.0 and p["label"]
    return len(body["predictions"])


def test_many_shapes_are_detected_in_batches_with_their_own_size() -> None:
    blobs = [images.jpeg(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    responses = asyncio.run(post_many(blobs, path=predict_path(DETECTOR)))
    total = 0
    for r, (w, h) in zip(responses, SIZES, strict=True):
        assert r.status_code == 200, r.text
        total += _check_boxes(r.json(), w, h)
    assert total > 0, "no boxes at all: nothing was checked"
    assert max(r.json()["batch_size"] for r in responses) > 1


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpegs_report_their_displayed_size(orientation: int) -> None:
    r = post_image(
        images.rotated_jpeg(images.picture(800, 300, seed=5), orientation), model=DETECTOR
    )
    assert r.status_code == 200
    assert r.json()["image"]["orientation"] == orientation
    _check_boxes(r.json(), 800, 300)


def test_detection_options_apply_per_request() -> None:
    data = images.jpeg(640, 480, seed=9)
    everything = post_image(data, model=DETECTOR).json()["predictions"]
    assert len(everything) > 3
    assert len(post_image(data, model=DETECTOR, max_detections=3).json()["predictions"]) == 3
    scores = [p["score"] for p in everything]
    assert (
        post_image(data, model=DETECTOR, score_threshold=min(1.0, max(scores) + 1e-6)).json()[
            "predictions"
        ]
        == []
    )
    assert len(
        post_image(data, model=DETECTOR, score_threshold=min(scores)).json()["predictions"]
    ) == len(scores)
    assert post_image(data, model=DETECTOR, top_k=3).status_code == 400
