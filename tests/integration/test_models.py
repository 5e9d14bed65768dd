"""Several models in one application, as serve_config.yaml serves them: the shipped detector
(the default, always warm) and the shipped segmenter, which scales to zero and back.

Routing by name on /v1 and the handle API, per-model option validation, liveness apart from
readiness, and a model waking from zero for its first request and going back when idle.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from ray import serve

from deployments.errors import UnknownModel
from shapes.generate import generate
from tests.serving import BASE_URL, app_config, deploy, wait_until

DETECTOR, SEGMENTER = "shapes-detector", "shapes-segmenter"


@pytest.fixture(scope="module", autouse=True)
def two_models() -> None:
    # The shipped config, with the segmenter let go after 2 idle seconds instead of minutes.
    deploy(
        app_config(
            options={
                f"Model-{SEGMENTER}": {
                    "autoscaling_config": {
                        "min_replicas": 0,
                        "max_replicas": 1,
                        "target_ongoing_requests": 4,
                        "upscale_delay_s": 0,
                        "downscale_delay_s": 0,
                        # Metrics every second (the default is 10 s; the field is deprecated but
                        # the only knob Serve 2.58 reads): a quicker wake and a quicker sleep.
                        "metrics_interval_s": 1,
                        "look_back_period_s": 2,
                    }
                }
            }
        )
    )


def _models() -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{BASE_URL}/v1/models", timeout=10).json()
    return {m["name"]: m for m in body["models"]}


def _segmenter_state(state: str) -> bool:
    return _models()[SEGMENTER]["state"] == state


def _image(seed: int) -> bytes:
    return generate(seed, width=320, height=240, fmt="PNG", orientation=1).data


def test_both_models_are_listed_and_the_idle_one_is_at_zero_yet_ready() -> None:
    body = httpx.get(f"{BASE_URL}/v1/models", timeout=10).json()
    assert body["default_model"] == DETECTOR
    assert {m["name"]: m["task"] for m in body["models"]} == {
        DETECTOR: "detection",
        SEGMENTER: "segmentation",
    }
    wait_until(lambda: _segmenter_state("scaled_to_zero"), 60, "the segmenter to be at zero")
    models = _models()
    assert models[DETECTOR]["ready"] and models[DETECTOR]["replicas"] >= 1
    assert models[SEGMENTER]["ready"] and models[SEGMENTER]["replicas"] == 0
    # A model at zero does not make the service unready: its first request wakes it.
    ready = httpx.get(f"{BASE_URL}/v1/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["models"][SEGMENTER]["state"] == "scaled_to_zero"
    assert httpx.get(f"{BASE_URL}/v1/models/{SEGMENTER}/ready").status_code == 200
    assert httpx.get(f"{BASE_URL}/v1/health/live").json() == {"status": "alive"}


def test_each_name_reaches_its_own_model_and_the_default_is_the_detector() -> None:
    data = _image(11)
    default = httpx.post(
        f"{BASE_URL}/v1/predict", content=data, headers={"content-type": "image/png"}, timeout=60
    )
    named = httpx.post(
        f"{BASE_URL}/v1/models/{DETECTOR}/predict",
        content=data,
        headers={"content-type": "image/png"},
        timeout=60,
    )
    assert default.status_code == named.status_code == 200, (default.text, named.text)
    assert default.json()["task"] == "detection"
    assert default.json()["predictions"] == named.json()["predictions"]
    info = httpx.get(f"{BASE_URL}/v1/models/{DETECTOR}", timeout=30).json()
    assert (info["name"], info["task"]) == (DETECTOR, "detection")


def test_the_segmenter_wakes_for_requests_and_goes_back_to_zero_when_idle() -> None:
    wait_until(lambda: _segmenter_state("scaled_to_zero"), 60, "the segmenter to be at zero")
    # Both models at once: the sleeping one wakes (a replica loads its weights and warms up
    # first), and neither model's images travel in the other's bundles.
    paths = [f"/v1/models/{DETECTOR if i % 2 else SEGMENTER}/predict" for i in range(8)]

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=BASE_URL, timeout=120) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            p,
                            content=_image(20 + i),
                            params={"mask_format": "png"} if SEGMENTER in p else {},
                            headers={"content-type": "image/png"},
                        )
                        for i, p in enumerate(paths)
                    )
                )
            )

    responses = asyncio.run(send())
    assert [r.status_code for r in responses] == [200] * len(paths), [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert [b["task"] for b in bodies] == [
        "detection" if i % 2 else "segmentation" for i in range(len(paths))
    ]
    assert all("label_map" in b for b in bodies[::2])
    # The handle API routes by name as well (the segmenter is awake now).
    handle = serve.get_app_handle("vision")
    assert handle.predict.remote(_image(15), model=SEGMENTER).result().task == "segmentation"
    wait_until(lambda: _segmenter_state("scaled_to_zero"), 90, "the idle segmenter to scale down")
    assert httpx.get(f"{BASE_URL}/v1/health/ready", timeout=10).status_code == 200


def test_options_are_checked_by_the_named_models_task() -> None:
    r = httpx.post(
        f"{BASE_URL}/v1/models/{SEGMENTER}/predict",
        content=_image(13),
        params={"score_threshold": "0.5"},  # a detection option; the segmenter has none such
        headers={"content-type": "image/png"},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_option", r.text


def test_an_unknown_model_is_a_404_that_names_the_served_ones() -> None:
    for method, path in [
        ("POST", "/v1/models/nope/predict"),
        ("GET", "/v1/models/nope"),
        ("GET", "/v1/models/nope/ready"),
    ]:
        r = httpx.request(
            method,
            f"{BASE_URL}{path}",
            content=_image(14),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert r.status_code == 404, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "unknown_model" and DETECTOR in error["message"], path


def test_the_handle_api_takes_the_default_and_refuses_an_unknown_model() -> None:
    handle = serve.get_app_handle("vision")
    assert handle.predict.remote(_image(15)).result().task == "detection"
    with pytest.raises(UnknownModel, match="no model is served as 'nope'"):
        handle.predict.remote(_image(15), model="nope").result()
