"""Operations: custom metrics on Ray's metrics endpoint, the optional API key, and log lines
that name the request and the item."""

from __future__ import annotations

import asyncio
import glob
import math
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import images
from tests.fixtures.models import ECHO, colour_in
from tests.serving import (
    BASE_URL,
    GRPC_ADDRESS,
    METRICS_PORT,
    ONE_MODEL,
    app_config,
    deploy,
    post_image,
    post_many,
    replica_names,
    wait_until,
)

API_KEY = f"k-{uuid.uuid4().hex}"


def _sample(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else float("nan")


def _fresh_model(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the Model's actor options changed, so deploying it starts new Model replicas
    whose metrics hold this test's traffic only, whatever ran before."""
    model = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Model")
    env = model["ray_actor_options"].setdefault("runtime_env", {}).setdefault("env_vars", {})
    env["VISION_TEST_DEPLOY"] = uuid.uuid4().hex
    return config


def test_custom_metrics_reach_the_metrics_endpoint() -> None:
    before = replica_names("Model")
    deploy(
        _fresh_model(
            app_config(
                model=ECHO,
                user_configs={"Model": {"max_batch_size": 4, "batch_wait_timeout_s": 0.5}},
            )
        )
    )
    fresh = [name.rsplit("#", 1)[1] for name in replica_names("Model") - before]
    assert fresh, "the deploy started no new Model replica"
    colours = images.distinct_colours(12, seed=21)
    responses = asyncio.run(
        post_many([images.solid_png(c) for c in colours], content_type="image/png")
    )
    assert [colour_in(r.json()["predictions"]) for r in responses] == colours
    assert post_image(images.truncated_jpeg()).status_code == 422

    def model(text: str, name: str, **labels: str) -> float:
        """A metric summed over this test's Model replicas (0 where none has recorded it)."""
        found = [_sample(text, name, replica=replica, **labels) for replica in fresh]
        return sum(value for value in found if not math.isnan(value))

    def scraped() -> str | None:
        try:
            text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
        except httpx.TransportError:
            return None
        ready = model(text, "ray_vision_batch_wait_seconds_count") == 12  # one per image
        ready = ready and model(text, "ray_vision_batch_size_count") >= 1
        ready = ready and _sample(text, "ray_vision_items_total", outcome="corrupt_image") >= 1
        return text if ready and "ray_vision_model_queue_depth" in text else None

    text = wait_until(scraped, 90, "this test's Model metrics on Ray's endpoint", every_s=1.0)
    # 12 images in passes of at most 4: at least 3 passes, none above the bucket up to 4.5 (Ray
    # exports a histogram's sum from its buckets' midpoints, which the half-integer bounds make
    # the batch sizes themselves: the sum is the image count).
    batches = model(text, "ray_vision_batch_size_count")
    assert batches >= 3
    assert model(text, "ray_vision_batch_size_bucket", le="4.5") == batches
    assert model(text, "ray_vision_batch_size_sum") == 12
    served = {"model": ONE_MODEL, "version": "1"}  # every request metric names its model
    assert model(text, "ray_vision_batch_size_count", **served) == batches
    assert _sample(text, "ray_vision_items_total", outcome="ok", **served) >= 12  # at the Ingress
    assert _sample(text, "ray_vision_requests_total", **served) >= 13
    for stage in ("preprocess", "inference", "postprocess", "total"):
        assert _sample(text, "ray_vision_stage_latency_seconds_count", stage=stage, **served) >= 1
    total_s = _sample(text, "ray_vision_stage_latency_seconds_sum", stage="total")
    assert 0 < total_s / _sample(text, "ray_vision_stage_latency_seconds_count", stage="total") < 60
    assert not math.isnan(_sample(text, "ray_vision_model_queue_depth", **served)), "no queue depth"


def test_log_lines_about_an_item_name_its_request_and_item() -> None:
    request_id = f"log-{uuid.uuid4().hex}"
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=images.truncated_jpeg(),
        headers={"content-type": "image/jpeg", "x-request-id": request_id},
    )
    assert r.status_code == 422
    ok = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=images.solid_png((9, 9, 9)),
        headers={"content-type": "image/png", "x-request-id": request_id},
    )
    item_id = ok.json()["item_id"]

    def lines() -> list[str] | None:
        found = [
            line
            for path in glob.glob("/tmp/ray/session_*/logs/serve/replica_vision_*.log")
            for line in Path(path).read_text(errors="replace").splitlines()
            if request_id in line
        ]
        return found if any("rejected" in line for line in found) else None

    found = wait_until(lines, 30, "the Preprocessor's log line for the rejected item")
    rejected = [line for line in found if "rejected" in line]
    assert re.search(
        rf"request {request_id} item [0-9a-f]{{32}} rejected: the JPEG image", rejected[0]
    )
    # Serve's access line at the Ingress carries the request id. The inner stages are called once
    # per bundle, which may hold items of several requests: they log no access lines, and their
    # own lines name each item's request and item id, as the rejection above does.
    stages = {m.group(1) for line in found if (m := re.search(r"vision_(\w+) ", line))}
    assert "Ingress" in stages
    assert len(item_id) == 32


@pytest.fixture(scope="module")
def keyed_app(tmp_path_factory: pytest.TempPathFactory) -> None:
    # As a mounted Kubernetes Secret would be: the key in a file, only its path in the config.
    key_file = tmp_path_factory.mktemp("secret") / "api_key"
    key_file.write_text(API_KEY + "\n")
    env = {"env_vars": {"VISION_API_KEY_FILE": str(key_file)}}
    deploy(
        app_config(
            model=ECHO,
            options={"Ingress": {"ray_actor_options": {"num_cpus": 0.2, "runtime_env": env}}},
        )
    )


@pytest.mark.usefixtures("keyed_app")
def test_api_key_is_required_when_configured() -> None:
    data = images.solid_png((1, 2, 3))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": API_KEY}):
        r = httpx.post(
            f"{BASE_URL}/v1/predict", content=data, headers={"content-type": "image/png", **headers}
        )
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized" and API_KEY not in r.text
    assert httpx.get(f"{BASE_URL}/v1/model").status_code == 401
    good = {"authorization": f"Bearer {API_KEY}"}
    r = httpx.post(
        f"{BASE_URL}/v1/predict", content=data, headers={"content-type": "image/png", **good}
    )
    assert r.status_code == 200
    assert httpx.get(f"{BASE_URL}/v1/model", headers=good).status_code == 200
    assert httpx.get(f"{BASE_URL}/v1/health").status_code == 200  # probes stay open


@pytest.mark.usefixtures("keyed_app")
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_api_key_guards_the_open_inference_protocol_too(transport: str) -> None:
    module: Any = httpclient if transport == "http" else grpcclient
    address = BASE_URL.removeprefix("http://") if transport == "http" else GRPC_ADDRESS
    refused = "401" if transport == "http" else "StatusCode.UNAUTHENTICATED"
    client = module.InferenceServerClient(address)
    image = module.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([images.solid_png((7, 8, 9))], dtype=np.object_))
    for headers in ({}, {"authorization": "Bearer wrong"}):
        for call in (
            lambda h=headers: client.infer(ONE_MODEL, [image], headers=h),
            lambda h=headers: client.get_model_metadata(ONE_MODEL, headers=h),
            lambda h=headers: client.get_server_metadata(headers=h),
        ):
            with pytest.raises(InferenceServerException) as caught:
                call()
            assert str(caught.value.status()) == refused
            assert API_KEY not in str(caught.value)
    assert client.is_server_live() and client.is_server_ready()  # probes stay open
    assert client.is_model_ready(ONE_MODEL)
    good = {"authorization": f"Bearer {API_KEY}"}
    labels = client.infer(ONE_MODEL, [image], headers=good).as_numpy("labels")
    assert [v.decode() for v in labels[:3]] == ["r007", "g008", "b009"]
    client.close()


@pytest.mark.usefixtures("keyed_app")
def test_the_api_key_never_reaches_the_logs() -> None:
    request_id = f"leak-{uuid.uuid4().hex}"
    for key in (API_KEY, API_KEY + "z"):  # accepted, then refused: both are logged by Serve
        httpx.post(
            f"{BASE_URL}/v1/predict",
            content=images.solid_png((4, 5, 6)),
            headers={
                "content-type": "image/png",
                "authorization": f"Bearer {key}",
                "x-request-id": request_id,
            },
        )

    def this_request_logged() -> dict[str, bytes] | None:
        logs = {
            path: Path(path).read_bytes()
            for path in glob.glob("/tmp/ray/session_*/logs/**/*", recursive=True)
            if Path(path).is_file()
        }
        mention = [p for p, data in logs.items() if request_id.encode() in data]
        # Only the Ingress sees the header: its log must be among the files scanned.
        return logs if any("replica_vision_Ingress_" in p for p in mention) else None

    logs = wait_until(this_request_logged, 30, f"log lines naming request {request_id}")
    leaked = [path for path, data in logs.items() if API_KEY.encode() in data]
    assert leaked == []
