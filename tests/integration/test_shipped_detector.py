"""The shipped shapes detector through the default config: right boxes in original pixels.

A mixed-up join (one image's result paired with another's metadata) or a wrong inverse of the
letterbox / EXIF rotation shows here as a wrong answer, because the true boxes are known.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from shapes.evaluate_offline import EVAL_SEED_BASE
from shapes.generate import GeneratedImage, generate
from shapes.metrics import iou
from tests.serving import BASE_URL, app_config, deploy, load_config, post_many

# Held-out seeds (training never sees them); sizes mix tiny, huge, portrait, landscape and 4:1.
SIZES = [
    (64, 64), (96, 300), (640, 480), (480, 640), (1024, 256), (256, 1024), (800, 800),
    (1600, 900), (333, 1000), (2048, 1536), (120, 90), (1000, 250), (700, 1400), (1280, 720),
    (150, 600), (1800, 1800), (500, 375), (375, 500), (900, 300), (64, 256),
]  # fmt: skip
ORIENTATIONS = (3, 6, 8)
BATCH = 8


def _images() -> list[GeneratedImage]:
    out = []
    for i in range(40):
        width, height = SIZES[i % len(SIZES)]
        seed = EVAL_SEED_BASE + 500_000 + i
        if i % 4 == 0:  # every fourth a JPEG stored rotated with an EXIF orientation tag
            out.append(
                generate(
                    seed, width=width, height=height, fmt="JPEG", orientation=ORIENTATIONS[i % 3]
                )
            )
        elif i % 4 == 1:
            out.append(generate(seed, width=width, height=height, fmt="PNG", orientation=1))
        else:
            out.append(generate(seed, width=width, height=height, fmt="JPEG", orientation=1))
    return out


@pytest.fixture(scope="module")
def shipped_app() -> None:
    config = load_config()
    model = config["applications"][0]["args"]["model"]
    assert model["name"] == "shapes.model:build_detector", "the default config serves the detector"
    # A long wait: batches fill to BATCH from concurrent requests rather than by timing luck.
    deploy(
        app_config(user_configs={"Model": {"max_batch_size": BATCH, "batch_wait_timeout_s": 1.0}})
    )


def _best_iou(truth_label: str, truth_box: Any, predictions: list[dict[str, Any]]) -> float:
    return max(
        (iou(tuple(p["box"]), truth_box) for p in predictions if p["label"] == truth_label),
        default=0.0,
    )


def test_boxes_match_ground_truth_in_original_pixels_under_batching(shipped_app: None) -> None:
    images = _images()
    assert {im.orientation for im in images} >= {3, 6, 8}
    headers = [
        {"content-type": f"image/{im.fmt.lower()}", "x-request-id": f"shape-{k}"}
        for k, im in enumerate(images)
    ]
    responses = asyncio.run(post_many([im.data for im in images], headers=headers))
    matched = total = predicted = spurious = 0
    for k, (image, r) in enumerate(zip(images, responses, strict=True)):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["request_id"] == f"shape-{k}"
        assert (body["image"]["width"], body["image"]["height"]) == (image.width, image.height)
        assert body["image"]["orientation"] == image.orientation
        preds = body["predictions"]
        for truth in image.objects:
            total += 1
            matched += _best_iou(truth.label, truth.box, preds) >= 0.5
        predicted += len(preds)
        spurious += sum(
            max((iou(tuple(p["box"]), t.box) for t in image.objects if t.label == p["label"]),
                default=0.0) < 0.5
            for p in preds
        )  # fmt: skip
    assert max(r.json()["batch_size"] for r in responses) == BATCH, "no full batch formed"
    assert matched >= 0.95 * total, f"only {matched} of {total} objects found with IoU >= 0.5"
    assert spurious <= 0.05 * predicted, f"{spurious} of {predicted} predictions match nothing"


def test_model_endpoint_describes_the_detector(shipped_app: None) -> None:
    info = httpx.get(f"{BASE_URL}/v1/model").json()
    assert info["task"] == "detection"
    assert info["labels"] == ["circle", "square", "triangle"]
