"""Micro-batching under concurrency: real batches form, nothing is swapped, a bad image stays
alone, and batch settings change live without a restart.

The classifier tests run first, on test_http's args, and the echo tests last, on test_client's,
so that neither needs a restart of every replica (conftest.MODULE_ORDER)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np

from tests import images
from tests.fixtures.models import ECHO, colour_in
from tests.serving import (
    BASE_URL,
    SMALL_LIMITS,
    app_config,
    deploy,
    fixed_replicas,
    load_config,
    post_image,
    post_many,
)

CLASSIFIER = {"name": "resnet18", "weights": "none", "seed": 0}
LONG_WAIT_S = 2.0


def _deploy(max_batch_size: int, wait_s: float, model: dict[str, Any] = CLASSIFIER) -> None:
    deploy(
        app_config(
            model=model,
            args={"limits": SMALL_LIMITS} if model is CLASSIFIER else None,
            # One Model replica, so that batches form from everything in flight. An update keeps
            # the replica count autoscaling reached under the previous module's load.
            options={"Model": fixed_replicas(1)},
            user_configs={
                "Model": {"max_batch_size": max_batch_size, "batch_wait_timeout_s": wait_s},
                "Postprocessor": {"classification": {"top_k": 10}},
            },
        )
    )


def _model_info() -> dict[str, Any]:
    info: dict[str, Any] = httpx.get(f"{BASE_URL}/v1/model").json()
    return info


def _answers(responses: list[httpx.Response]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for r in responses:
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        out.append(
            (np.array([p["class_id"] for p in preds]), np.array([p["score"] for p in preds]))
        )
    return out


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return bool(a[0][0] == b[0][0] and np.allclose(a[1][:5], b[1][:5], atol=1e-4))


def _colours(responses: list[httpx.Response]) -> list[tuple[int, int, int] | None]:
    return [colour_in(r.json()["predictions"]) for r in responses]


def test_concurrent_images_batch_and_each_gets_its_own_answer() -> None:
    blobs = [images.jpeg(160 + 23 * i, 120 + 17 * (47 - i), seed=1000 + i) for i in range(48)]
    _deploy(max_batch_size=1, wait_s=0.0)
    solo_responses = [asyncio.run(post_many([b]))[0] for b in blobs]
    assert {r.json()["batch_size"] for r in solo_responses} == {1}
    solo = _answers(solo_responses)
    # The images are told apart by the model, so a swap between two of them would show.
    for i in range(len(blobs)):
        assert sum(_same(solo[i], solo[j]) for j in range(len(blobs))) == 1, (
            f"image {i} is not distinctive"
        )

    _deploy(max_batch_size=8, wait_s=LONG_WAIT_S)
    batched_responses = asyncio.run(post_many(blobs))
    batched = _answers(batched_responses)
    sizes = [r.json()["batch_size"] for r in batched_responses]
    # Images arrive in bundles of up to 8 and a pass takes up to 8 of whatever has gathered, so
    # the first pass may start short; passes must still be full or nearly so.
    assert max(sizes) == 8 and sum(sizes) / len(sizes) >= 6, f"batches did not form: {sizes}"
    for i, (got, want) in enumerate(zip(batched, solo, strict=True)):
        matches = [j for j in range(len(blobs)) if _same(got, solo[j])]
        assert matches == [i], f"image {i} got the answer of {matches}"
        assert _same(got, want)
    widths = [r.json()["image"]["width"] for r in batched_responses]
    assert widths == [160 + 23 * i for i in range(48)]


def test_a_corrupt_image_in_a_batch_fails_alone() -> None:
    _deploy(max_batch_size=8, wait_s=LONG_WAIT_S, model=ECHO)
    colours = images.distinct_colours(7, seed=2000)
    good = [images.solid_png(c, 256, 192) for c in colours]
    bodies = [*good[:3], images.truncated_jpeg(), *good[3:]]
    responses = asyncio.run(post_many(bodies, content_type="application/octet-stream"))
    assert responses[3].status_code == 422
    assert responses[3].json()["error"]["code"] == "corrupt_image"
    ok = [r for i, r in enumerate(responses) if i != 3]
    assert [r.status_code for r in ok] == [200] * 7
    assert _colours(ok) == colours, "an image got another image's answer"
    # The seven good ones filled one forward pass together; the bad one never entered it.
    assert {r.json()["batch_size"] for r in ok} == {7}


def test_invalid_batch_settings_are_refused_with_a_message_naming_them() -> None:
    # On the echo: Serve tries a replica three times before it calls the deploy failed, and an
    # echo replica starts in 1.4 s less than the classifier's (no torchvision).
    config = app_config(model=ECHO, user_configs={"Model": {"max_batch_size": 0}})
    try:
        deploy(config, timeout_s=60)
    except RuntimeError as failed:
        assert "max_batch_size" in str(failed)
    else:
        raise AssertionError("a max_batch_size of 0 was accepted")
    _deploy(max_batch_size=4, wait_s=0.01, model=ECHO)
    r = asyncio.run(post_many([images.solid_png((40, 80, 120))], content_type="image/png"))[0]
    assert r.status_code == 200 and colour_in(r.json()["predictions"]) == (40, 80, 120), r.text


def test_reconfigure_changes_batch_size_live_without_restart() -> None:
    _deploy(max_batch_size=4, wait_s=LONG_WAIT_S, model=ECHO)
    before = _model_info()
    colours = images.distinct_colours(16, seed=3000)
    blobs = [images.solid_png(c, 200, 150) for c in colours]
    responses = asyncio.run(post_many(blobs, content_type="image/png"))
    assert _colours(responses) == colours
    assert max(r.json()["batch_size"] for r in responses) == 4

    _deploy(max_batch_size=16, wait_s=LONG_WAIT_S, model=ECHO)
    after = _model_info()
    assert after["replica"] == before["replica"], "the Model replica was restarted"
    assert after["batching"] == {"max_batch_size": 16, "batch_wait_timeout_s": LONG_WAIT_S}
    responses = asyncio.run(post_many(blobs, content_type="image/png"))
    assert _colours(responses) == colours
    sizes_at_16 = [r.json()["batch_size"] for r in responses]
    assert max(sizes_at_16) > 4, f"batch size did not grow: {sizes_at_16}"


def test_an_idle_model_runs_a_lone_image_at_once_and_the_wait_is_an_upper_bound() -> None:
    # serve_config.yaml's batch_wait_timeout_s: 0, work-conserving. A lone image on an idle
    # Model goes into a pass at once; a long wait is what those who set one get. The bounds are
    # far apart (the faults they catch: a fixed wait of seconds, or no wait at all).
    def lone_wait_ms(colour: tuple[int, int, int]) -> float:
        r = post_image(images.solid_png(colour, 64, 48), "image/png")
        assert r.status_code == 200 and colour_in(r.json()["predictions"]) == colour, r.text
        assert r.json()["batch_size"] == 1
        return float(r.json()["timings_ms"]["batch_wait"])

    default_wait = load_config()["applications"][0]["deployments"]
    model = next(d for d in default_wait if d["name"] == "Model")
    assert model["user_config"]["batch_wait_timeout_s"] == 0.0
    _deploy(max_batch_size=8, wait_s=0.0, model=ECHO)
    colours = images.distinct_colours(4, seed=4000)
    waits = [lone_wait_ms(c) for c in colours[:2]]
    assert min(waits) < 1000, f"an idle Model held a lone image for {waits} ms"
    _deploy(max_batch_size=8, wait_s=LONG_WAIT_S, model=ECHO)
    waits = [lone_wait_ms(c) for c in colours[2:]]
    assert min(waits) >= 0.9 * LONG_WAIT_S * 1000, f"the configured wait was not kept: {waits}"
