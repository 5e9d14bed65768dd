"""gpu_decode end to end on a CPU replica: the same shipped detector served twice in one app,
once decoding JPEGs in the Model (`gpu_decode: true`) and once in the Preprocessor (Pillow, as
always), so each image's two answers can be compared over HTTP (tests.serving's DEVICE_DECODE and
PILLOW_DECODE, beside the other models of `model_zoo_config`).

Tolerances are the unit tier's (tests/unit/test_device_decode.py): the same objects, boxes within
1.5 model-input pixels, scores within 0.1; the image's metadata is identical.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from shapes.generate import generate
from tests import images, settings
from tests.serving import (
    BASE_URL,
    DEVICE_DECODE,
    PILLOW_DECODE,
    deploy,
    model_zoo_config,
    predict_path,
)

DEVICE, PILLOW = DEVICE_DECODE, PILLOW_DECODE
INPUT_SIDE = 384  # the shipped detector's letterbox input
# serve_config.yaml's threshold, asked for per request: the shared deploy keeps every detection,
# and the lowest-scored ones come and go with a decoder's rounding.
SHIPPED = {"score_threshold": settings.user_config("Postprocessor")["detection"]["score_threshold"]}


@pytest.fixture(scope="module", autouse=True)
def two_decoders_app() -> None:
    deploy(model_zoo_config())


async def _predict_each(path: str, bodies: list[tuple[bytes, str]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=120) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(path, content=b, params=SHIPPED, headers={"content-type": t})
                    for b, t in bodies
                )
            )
        )


def _answers(bodies: list[tuple[bytes, str]], model: str) -> list[dict[str, Any]]:
    responses = asyncio.run(_predict_each(predict_path(model), bodies))
    for r in responses:
        assert r.status_code == 200, r.text
    return [r.json() for r in responses]


def _assert_same_objects(device: dict[str, Any], pillow: dict[str, Any]) -> int:
    assert device["image"] == pillow["image"]  # size after orientation, format, orientation
    scale = INPUT_SIDE / max(device["image"]["width"], device["image"]["height"])
    mine, theirs = device["predictions"], pillow["predictions"]
    assert sorted(p["label"] for p in mine) == sorted(p["label"] for p in theirs)
    for p in theirs:

        def distance(q: dict[str, Any], p: dict[str, Any] = p) -> float:
            if q["label"] != p["label"]:
                return 1e9
            return float(np.abs(np.subtract(p["box"], q["box"])).max())

        q = min(mine, key=distance)
        assert distance(q) * scale < 1.5 and abs(p["score"] - q["score"]) < 0.1, (p, q)
    return len(theirs)


def test_jpeg_answers_equal_the_pillow_paths() -> None:
    scenes = [generate(seed, fmt="JPEG", orientation=(1, 3, 6, 8)[seed % 4]) for seed in range(8)]
    bodies = [(s.data, "image/jpeg") for s in scenes]
    compared = sum(
        _assert_same_objects(d, p)
        for d, p in zip(_answers(bodies, DEVICE), _answers(bodies, PILLOW), strict=True)
    )
    assert compared >= 8, "the scenes hold objects the detector finds"


def test_png_still_decodes_in_the_preprocessor() -> None:
    scenes = [generate(seed, fmt="PNG") for seed in range(20, 23)]
    bodies = [(s.data, "image/png") for s in scenes]
    for d, p in zip(_answers(bodies, DEVICE), _answers(bodies, PILLOW), strict=True):
        assert d["image"] == p["image"] and d["image"]["format"] == "PNG"
        assert [x["label"] for x in d["predictions"]] == [x["label"] for x in p["predictions"]]
        for x, y in zip(d["predictions"], p["predictions"], strict=True):
            np.testing.assert_allclose(x["box"], y["box"], atol=0.05)


def test_broken_jpegs_in_a_multipart_request_fail_alone() -> None:
    good = [generate(seed, fmt="JPEG").data for seed in (30, 31)]
    png = generate(32, fmt="PNG").data
    parts = [
        ("a.jpg", good[0], "image/jpeg"),
        ("cut.jpg", images.truncated_jpeg(), "image/jpeg"),  # refused by the Preprocessor
        ("c.png", png, "image/png"),
        # refused by the Model's decoder
        ("bad-table.jpg", images.bad_huffman_jpeg(), "image/jpeg"),
        ("d.jpg", good[1], "image/jpeg"),
    ]
    files = [("image", part) for part in parts]
    r = httpx.post(f"{BASE_URL}{predict_path(DEVICE)}", files=files, params=SHIPPED, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    for i, says in ((1, "end-of-image marker"), (3, "Huffman")):
        error = results[i]["error"]
        assert (error["status"], error["code"]) == (422, "corrupt_image")
        assert says in error["message"]
    alone = _answers([(good[0], "image/jpeg"), (png, "image/png"), (good[1], "image/jpeg")], DEVICE)
    for together, solo in zip([results[0], results[2], results[4]], alone, strict=True):
        assert "error" not in together
        assert together["image"] == solo["image"]
        labels = sorted(x["label"] for x in together["predictions"])
        assert labels == sorted(x["label"] for x in solo["predictions"])
