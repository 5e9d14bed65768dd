"""The HTTP and Python-handle contract on a real graph: results, options, ids, every bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from ray import serve

from deployments import errors
from deployments.items import Result
from tests import images
from tests.serving import (
    BASE_URL,
    SMALL_LIMITS,
    app_config,
    deploy,
    post_image,
    post_many,
    post_multipart,
)

CLASSIFIER = {"name": "resnet18", "weights": "none", "seed": 0}


@pytest.fixture(scope="module", autouse=True)
def classifier_app() -> None:
    deploy(
        app_config(
            model=CLASSIFIER,
            args={"limits": SMALL_LIMITS},
            user_configs={"Model": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}},
        )
    )


def _top(result: dict[str, Any]) -> list[tuple[int, float]]:
    return [(p["class_id"], round(p["score"], 5)) for p in result["predictions"]]


def _typed_top(result: Result) -> list[tuple[int, float]]:
    return [(p.class_id, round(p.score, 5)) for p in result.predictions]


def test_single_image_returns_the_documented_result() -> None:
    r = post_image(images.jpeg(640, 480, seed=1), top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "request_id",
        "item_id",
        "model",
        "model_version",
        "task",
        "image",
        "predictions",
        "batch_size",
        "timings_ms",
    }
    assert (body["model"], body["task"]) == ("resnet18", "classification")
    assert body["model_version"] == "1"  # a models: entry without a version is served as "1"
    assert body["image"] == {"width": 640, "height": 480, "format": "JPEG", "orientation": 1}
    assert len(body["predictions"]) == 3
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert all(isinstance(p["label"], str) and p["label"] for p in body["predictions"])
    assert {"preprocess", "batch_wait", "inference", "postprocess", "total"} <= set(
        body["timings_ms"]
    )


def test_request_id_is_echoed_once_or_generated() -> None:
    data = images.jpeg(seed=2)
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=data,
        headers={"content-type": "image/jpeg", "x-request-id": "trace-42"},
    )
    assert r.headers.get_list("x-request-id") == ["trace-42"]
    assert r.json()["request_id"] == "trace-42"
    r = post_image(data)
    generated = r.headers.get_list("x-request-id")
    assert len(generated) == 1 and len(generated[0]) >= 16
    assert r.json()["request_id"] == generated[0]


def test_default_top_k_comes_from_the_postprocessor_config() -> None:
    assert len(post_image(images.jpeg(seed=3)).json()["predictions"]) == 5


def test_multipart_results_come_back_in_input_order() -> None:
    blobs = [images.jpeg(200 + 40 * i, 180 + 30 * i, seed=100 + i) for i in range(6)]
    solo = [_top(r.json()) for r in asyncio.run(post_many(blobs))]
    assert len({tuple(s) for s in solo}) == len(blobs), "images must give distinct answers"
    r = post_multipart([(f"{i}.jpg", b, "image/jpeg") for i, b in enumerate(blobs)])
    assert r.status_code == 200
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    got = [_top(item) for item in body["results"]]
    assert got == solo
    assert [item["image"]["width"] for item in body["results"]] == [200 + 40 * i for i in range(6)]


BAD_INPUTS = [
    ("zero bytes", b"", "image/jpeg", 400, "empty_image"),
    ("random bytes", images.random_bytes(), "application/octet-stream", 415, "unsupported_format"),
    ("text file", images.TEXT_FILE, "image/png", 415, "unsupported_format"),
    ("truncated jpeg", images.truncated_jpeg(), "image/jpeg", 422, "corrupt_image"),
    (
        "png with corrupt header chunk",
        images.png_bad_header_crc(),
        "image/png",
        422,
        "corrupt_image",
    ),
    ("png with corrupt data chunk", images.png_corrupt_data(), "image/png", 422, "corrupt_image"),
    ("decompression bomb", images.decompression_bomb(), "image/png", 413, "too_many_pixels"),
    (
        "over the pixel limit",
        images.decompression_bomb(3000, 2000),
        "image/png",
        413,
        "too_many_pixels",
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "ctype", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_image_gets_its_status_and_a_message(
    name: str, data: bytes, ctype: str, status: int, code: str
) -> None:
    r = post_image(data, content_type=ctype)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code
    assert len(body["error"]["message"]) > 20
    assert body["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("name", "data", "ctype", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_image_fails_alone_among_good_neighbours(
    name: str, data: bytes, ctype: str, status: int, code: str
) -> None:
    good = [images.jpeg(300, 200, seed=200 + i) for i in range(4)]
    expected = [_top(r.json()) for r in asyncio.run(post_many(good))]
    assert len({tuple(e) for e in expected}) == len(good), "images must give distinct answers"
    parts = [
        ("a.jpg", good[0], "image/jpeg"),
        ("b.jpg", good[1], "image/jpeg"),
        ("bad", data, ctype),
        ("c.jpg", good[2], "image/jpeg"),
        ("d.jpg", good[3], "image/jpeg"),
    ]
    r = post_multipart(parts)
    assert r.status_code == 200
    results = r.json()["results"]
    assert results[2]["error"]["code"] == code and results[2]["error"]["status"] == status
    assert [_top(x) for i, x in enumerate(results) if i != 2] == expected


ODD_BUT_VALID = [
    ("16-bit png", images.png16_gray()[0], (64, 48), "PNG", 1),
    ("palette png", images.palette_png(), (96, 64), "PNG", 1),
    ("cmyk jpeg", images.cmyk_jpeg(), (96, 64), "JPEG", 1),
    ("grayscale jpeg", images.gray_jpeg(), (96, 64), "JPEG", 1),
    ("rgba png", images.rgba_png(), (96, 64), "PNG", 1),
    ("animated gif", images.animated_gif()[0], (80, 60), "GIF", 1),
    ("multi-page tiff", images.multipage_tiff()[0], (80, 60), "TIFF", 1),
    ("exif 3", images.rotated_jpeg(images.picture(300, 200, 1), 3), (300, 200), "JPEG", 3),
    ("exif 6", images.rotated_jpeg(images.picture(300, 200, 1), 6), (300, 200), "JPEG", 6),
    ("exif 8", images.rotated_jpeg(images.picture(300, 200, 1), 8), (300, 200), "JPEG", 8),
]


@pytest.mark.parametrize(
    ("name", "data", "size", "fmt", "orientation"), ODD_BUT_VALID, ids=[v[0] for v in ODD_BUT_VALID]
)
def test_odd_but_valid_images_are_served(
    name: str, data: bytes, size: tuple[int, int], fmt: str, orientation: int
) -> None:
    r = post_image(data, content_type="application/octet-stream")
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {
        "width": size[0],
        "height": size[1],
        "format": fmt,
        "orientation": orientation,
    }


def test_exif_rotated_copies_answer_like_the_upright_image() -> None:
    upright = images.picture(300, 200, seed=1)
    reference = _top(post_image(images.encode(upright, "JPEG", quality=95)).json())
    for orientation in (3, 6, 8):
        got = _top(post_image(images.rotated_jpeg(upright, orientation)).json())
        assert [c for c, _ in got[:1]] == [c for c, _ in reference[:1]], orientation


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("text/plain", 415), ("application/json", 415), ("application/x-www-form-urlencoded", 415)],
)
def test_wrong_content_type_is_415(content_type: str, status: int) -> None:
    r = post_image(images.jpeg(), content_type=content_type)
    assert r.status_code == status
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert "image/" in r.json()["error"]["message"]


def test_limits_on_body_and_image_count_are_413() -> None:
    r = post_image(b"\xff\xd8\xff" + b"\0" * 3_100_000)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
    r = post_multipart([(f"{i}.jpg", images.jpeg(32, 32, seed=i), "image/jpeg") for i in range(9)])
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("top_k=0", "top_k"),
        ("top_k=abc", "top_k"),
        ("top_k=1000", "top_k"),
        ("topk=3", "topk"),
        ("score_threshold=0.5", "score_threshold"),
        ("max_detections=5", "max_detections"),
    ],
)
def test_bad_options_are_400_naming_the_parameter(query: str, name: str) -> None:
    r = httpx.post(
        f"{BASE_URL}/v1/predict?{query}",
        content=images.jpeg(),
        headers={"content-type": "image/jpeg"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_option"
    assert name in r.json()["error"]["message"]


def test_malformed_multipart_is_400() -> None:
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 400
    r = httpx.post(
        f"{BASE_URL}/v1/predict", files=[("file", ("a.jpg", images.jpeg(), "image/jpeg"))]
    )
    assert r.status_code == 400 and "'file'" in r.json()["error"]["message"]


def test_health_model_and_docs() -> None:
    health = httpx.get(f"{BASE_URL}/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = httpx.get(f"{BASE_URL}/v1/model").json()
    assert (info["model"], info["task"], len(info["labels"])) == (
        "resnet18",
        "classification",
        1000,
    )
    assert info["input_size"] == {"width": 224, "height": 224}
    assert info["batching"] == {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}
    assert info["device"] == "cpu" and info["version"] == "1"
    assert httpx.get(f"{BASE_URL}/docs").status_code == 200
    spec = httpx.get(f"{BASE_URL}/openapi.json").json()
    assert {"/v1/predict", "/v1/health", "/v1/model"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


def test_python_handle_returns_the_typed_result() -> None:
    handle = serve.get_app_handle("vision")
    data = images.jpeg(320, 240, seed=7)
    result = handle.predict.remote(data, top_k=2, request_id="py-1").result()
    assert isinstance(result, Result)
    assert result.request_id == "py-1" and len(result.predictions) == 2
    assert _top(post_image(data, top_k=2).json()) == _typed_top(result)


@pytest.mark.parametrize(
    ("data", "kwargs", "error"),
    [
        (images.truncated_jpeg(), {}, errors.CorruptImage),
        (images.TEXT_FILE, {}, errors.UnsupportedFormat),
        (b"", {}, errors.EmptyImage),
        (images.jpeg(), {"top_k": 0}, errors.InvalidOption),
        (images.jpeg(), {"score_threshold": 0.3}, errors.InvalidOption),
    ],
)
def test_python_handle_raises_catchable_typed_errors(
    data: bytes, kwargs: dict[str, Any], error: type[errors.VisionError]
) -> None:
    handle = serve.get_app_handle("vision")
    with pytest.raises(error) as caught:
        handle.predict.remote(data, **kwargs).result()
    assert isinstance(caught.value, errors.ClientError)
    assert caught.value.status == error.status


def test_python_handle_many_keeps_order_and_isolates_errors() -> None:
    handle = serve.get_app_handle("vision")
    blobs = [images.jpeg(seed=300), images.truncated_jpeg(), images.jpeg(seed=301)]
    alone = [_typed_top(handle.predict.remote(blobs[i]).result()) for i in (0, 2)]
    assert alone[0] != alone[1], "images must give distinct answers"
    out = handle.predict_many.remote(blobs).result()
    assert isinstance(out[0], Result) and isinstance(out[2], Result)
    assert [_typed_top(out[0]), _typed_top(out[2])] == alone
    assert out[1].code == "corrupt_image" and out[1].status == 422


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nowhere", 404, "not_found"),
        ("GET", "/nowhere", 404, "not_found"),
        ("GET", "/v1/predict", 405, "method_not_allowed"),
        ("DELETE", "/v1/models", 405, "method_not_allowed"),
    ],
)
def test_unknown_routes_and_methods_answer_in_the_v1_error_shape(
    method: str, path: str, status: int, code: str
) -> None:
    r = httpx.request(method, f"{BASE_URL}{path}", headers={"x-request-id": "lost-1"})
    assert r.status_code == status, r.text
    assert r.json() == {
        "error": {"code": code, "message": r.json()["error"]["message"]},
        "request_id": "lost-1",
    }
    assert path in r.json()["error"]["message"]
    if status == 405:
        assert "POST" in r.headers["allow"] or "GET" in r.headers["allow"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/nowhere", 404),
        ("GET", "/v2/models/the-model/trace/setting", 404),  # Triton's extensions not offered
        ("POST", "/v2/systemsharedmemory/status", 404),
        ("GET", "/v2/models/the-model/infer", 405),
    ],
)
def test_unknown_oip_routes_answer_in_the_oip_error_shape(
    method: str, path: str, status: int
) -> None:
    r = httpx.request(method, f"{BASE_URL}{path}")
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert path in body["error"]
