"""The Open Inference Protocol with Triton's own clients, over HTTP and gRPC, against the shipped
detector: the same boxes as `/v1/predict`, several images in one infer, bad inputs answered in
the protocol's form with `/v1`'s codes while their neighbours succeed, a segmenter's masks,
readiness that stays false while a model warms up, and Triton's extensions: the model
configuration as deployed, statistics that count what was sent, the repository index. Then
KServe's own client (its Python SDK's v2 REST client) for readiness and infer.

One deploy for the module: serve_config.yaml's models, `colours` (a segmenter whose answer is
known for every pixel: tests/fixtures/models.py) in two versions, and `warming`, an echo model
whose replica finishes its constructor only once the test creates a file. Version "2" of
`colours` is the latest (what a request without a version gets); version "1" beside it is
`SwappedColours`, whose class ids for red and green are the other way round, so each answer shows
which version produced it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from shapes.evaluate_offline import EVAL_SEED_BASE
from shapes.generate import GeneratedImage, generate
from tests.images import encode, truncated_jpeg, two_rectangles
from tests.serving import (
    BASE_URL,
    GRPC_ADDRESS,
    ROOT,
    app_config,
    model_app,
    start,
    wait_running,
    wait_until,
)

MODEL, COLOURS, WARMING = "shapes-detector", "colours", "warming"
SIZES = [(437, 273), (640, 480), (300, 900), (1024, 256)]
MAX_IMAGES = 4  # the deploy's max_images_per_request, so "one too many" is cheap to send
# Not serve_config.yaml's, so the model configuration shows it reads the deployed user_config.
COLOURS_BATCHING = {"max_batch_size": 4, "batch_wait_timeout_s": 0.002}
# The older version's own application (`colours-v1`) and its own batching.
OLDER_BATCHING = {"max_batch_size": 2, "batch_wait_timeout_s": 0.0}
COLOURS_MODEL = {"name": "tests.fixtures.models:colours"}
SWAPPED = {**COLOURS_MODEL, "kwargs": {"swapped": True}}
MANAGEMENT_KEY = "manage-models-here"  # the Ingress's VISION_MANAGEMENT_KEY in this module


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oip") / "warm-up-may-finish"


@pytest.fixture(scope="module")
def started(gate: Path) -> dict[str, Any]:
    """The app deployed, its Ingress answering; `warming` still in its constructor."""
    config = app_config(args={"limits": {"max_images_per_request": MAX_IMAGES}})
    models = config["applications"][0]["args"]["models"]
    warming = {"name": "tests.fixtures.models:warming_echo", "weights": "none"}
    models.append({"name": WARMING, "model": {**warming, "kwargs": {"gate_file": str(gate)}}})
    deployments = config["applications"][0]["deployments"]
    batching = next(d for d in deployments if d["name"] == "Model")["user_config"]
    deployments.append({"name": f"Model-{WARMING}", "user_config": batching})
    ingress = next(d for d in deployments if d["name"] == "Ingress")
    ingress["ray_actor_options"] = {
        **ingress.get("ray_actor_options", {}),
        "runtime_env": {"env_vars": {"VISION_MANAGEMENT_KEY": MANAGEMENT_KEY}},
    }
    # `colours` in two versions, each its own model application (loaded and unloaded alone).
    config["applications"] += [
        model_app(COLOURS, "1", SWAPPED, OLDER_BATCHING),
        model_app(COLOURS, "2", COLOURS_MODEL, COLOURS_BATCHING),
    ]
    start(config)

    def detector_ready() -> bool:
        try:
            ready = httpx.get(f"{BASE_URL}/v2/models/{MODEL}/ready", timeout=30).status_code
            # `warming` is this config's alone: an Ingress that knows it is this deploy's, not
            # the one an earlier module deployed (it answers until it has drained).
            known = httpx.get(f"{BASE_URL}/v2/models/{WARMING}", timeout=30).status_code != 404
        except httpx.HTTPError:
            return False  # the proxy has no route to the app yet
        return ready == 200 and known

    wait_until(detector_ready, 180, "this deploy's Ingress and the detector", every_s=0.5)
    return config


@pytest.fixture(scope="module")
def oip_app(started: dict[str, Any], gate: Path) -> None:
    """Every model warm."""
    gate.touch()
    wait_running()


@pytest.fixture(scope="module")
def images() -> list[GeneratedImage]:
    return [
        generate(
            EVAL_SEED_BASE + 700_000 + i, width=w, height=h, fmt="JPEG", orientation=(1, 6)[i % 2]
        )
        for i, (w, h) in enumerate(SIZES)
    ]


@pytest.fixture(scope="module")
def v1_answers(oip_app: None, images: list[GeneratedImage]) -> list[dict[str, Any]]:
    answers = []
    for image in images:
        r = httpx.post(
            f"{BASE_URL}/v1/models/{MODEL}/predict",
            content=image.data,
            params={"score_threshold": 0.3},
            headers={"content-type": "image/jpeg"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


@pytest.fixture(scope="module")
def http() -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(BASE_URL.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc() -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(GRPC_ADDRESS)
    yield client
    client.close()


def _clients(
    transport: str, http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> tuple[Any, Any]:
    return (http, httpclient) if transport == "http" else (grpc, grpcclient)


def test_readiness_is_false_while_a_model_is_still_warming_up(
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    started: None,
    gate: Path,
) -> None:
    if gate.exists():
        pytest.skip("an earlier test let the warm-up finish")
    for client in (http, grpc):
        assert client.is_server_live()
        assert client.is_model_ready(MODEL)
        assert not client.is_model_ready(WARMING)
        assert not client.is_server_ready()
    for index in (_index(http), _index(grpc)):
        assert index[MODEL]["state"] == "READY"
        assert index[WARMING]["state"] == "UNAVAILABLE"
        assert index[WARMING]["reason"].startswith("warming")
    gate.touch()
    for client in (http, grpc):
        ready = client.is_model_ready
        wait_until(lambda r=ready: r(WARMING), 120, "the warmed-up model to be ready")
        wait_until(client.is_server_ready, 30, "the server to be ready")


def _input(module: Any, images: list[bytes], datatype: str = "BYTES") -> Any:
    tensor = module.InferInput("image", [len(images)], datatype)
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def _items(result: Any) -> list[dict[str, Any]]:
    response = result.get_response()
    if isinstance(response, dict):
        return json.loads(response["parameters"]["items"])
    return json.loads(response.parameters["items"].string_param)


def _per_image(result: Any) -> list[list[dict[str, Any]]]:
    """Each image's predictions, from the concatenated rows and `counts`."""
    counts = result.as_numpy("counts")
    cuts = np.cumsum(counts)[:-1]
    columns = {
        name: np.split(result.as_numpy(name), cuts)
        for name in ("boxes", "scores", "class_ids", "labels")
    }
    out = []
    for k in range(len(counts)):
        out.append(
            [
                {
                    "box": columns["boxes"][k][j].tolist(),
                    "score": float(columns["scores"][k][j]),
                    "class_id": int(columns["class_ids"][k][j]),
                    "label": columns["labels"][k][j].decode(),
                }
                for j in range(int(counts[k]))
            ]
        )
    return out


def _same_predictions(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in want]
    assert [p["class_id"] for p in got] == [p["class_id"] for p in want]
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], rtol=1e-5)
    np.testing.assert_allclose(
        np.array([p["box"] for p in got]).reshape(-1, 4),
        np.array([p["box"] for p in want]).reshape(-1, 4),
        atol=1e-3,
    )


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_each_image_gets_the_same_boxes_as_v1(
    transport: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    images: list[GeneratedImage],
    v1_answers: list[dict[str, Any]],
) -> None:
    client, module = _clients(transport, http, grpc)
    for k, (image, want) in enumerate(zip(images, v1_answers, strict=True)):
        result = client.infer(
            MODEL,
            [_input(module, [image.data])],
            request_id=f"{transport}-{k}",
            parameters={"score_threshold": 0.3},
        )
        assert len(want["predictions"]) >= 1
        _same_predictions(_per_image(result)[0], want["predictions"])
        (item,) = _items(result)
        assert {key: item[key] for key in ("width", "height", "orientation", "format")} == want[
            "image"
        ]
        response = result.get_response()
        assert (response["id"] if transport == "http" else response.id) == f"{transport}-{k}"


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_several_images_in_one_infer_each_answered_a_broken_one_apart(
    transport: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    images: list[GeneratedImage],
    v1_answers: list[dict[str, Any]],
) -> None:
    client, module = _clients(transport, http, grpc)
    sent = [images[0].data, truncated_jpeg(), images[2].data, b"not an image"]
    result = client.infer(MODEL, [_input(module, sent)], parameters={"score_threshold": 0.3})
    items = _items(result)
    assert [i.get("error", {}).get("status") for i in items] == [None, 422, None, 415]
    assert items[1]["error"]["code"] == "corrupt_image"
    assert items[3]["error"]["code"] == "unsupported_format"
    per_image = _per_image(result)
    assert [len(p) for p in per_image[1::2]] == [0, 0]
    _same_predictions(per_image[0], v1_answers[0]["predictions"])
    _same_predictions(per_image[2], v1_answers[2]["predictions"])


def _status(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), caught.value.message()


@pytest.mark.parametrize(
    ("transport", "case", "expected", "words"),
    [
        ("http", "wrong datatype", "400", "datatype BYTES"),
        ("grpc", "wrong datatype", "StatusCode.INVALID_ARGUMENT", "datatype BYTES"),
        ("http", "unknown model", "404", "not served"),
        ("grpc", "unknown model", "StatusCode.NOT_FOUND", "not served"),
        ("http", "too many images", "413", "max_images_per_request"),
        ("grpc", "too many images", "StatusCode.RESOURCE_EXHAUSTED", "max_images_per_request"),
        ("http", "one broken image", "422", "truncated"),
        ("grpc", "one broken image", "StatusCode.INVALID_ARGUMENT", "truncated"),
        ("http", "bad option", "400", "score_threshold"),
        ("grpc", "bad option", "StatusCode.INVALID_ARGUMENT", "score_threshold"),
    ],
)
def test_bad_requests_get_protocol_errors_with_v1_codes(
    transport: str,
    case: str,
    expected: str,
    words: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    images: list[GeneratedImage],
    oip_app: None,
) -> None:
    client, module = _clients(transport, http, grpc)
    good = images[0].data
    calls = {
        "wrong datatype": lambda: client.infer(MODEL, [_uint8_input(module)]),
        "unknown model": lambda: client.infer("resnet", [_input(module, [good])]),
        "too many images": lambda: client.infer(MODEL, [_input(module, [good] * (MAX_IMAGES + 1))]),
        "one broken image": lambda: client.infer(MODEL, [_input(module, [truncated_jpeg()])]),
        "bad option": lambda: client.infer(
            MODEL, [_input(module, [good])], parameters={"score_threshold": 2.5}
        ),
    }
    status, message = _status(calls[case])
    assert status == expected
    assert words in message


def _uint8_input(module: Any) -> Any:
    pixels = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    tensor = module.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return tensor


def test_http_errors_are_the_protocols_json(oip_app: None) -> None:
    r = httpx.post(f"{BASE_URL}/v2/models/nope/infer", content=b"{}", timeout=30)
    assert r.status_code == 404
    assert list(r.json()) == ["error"]
    assert MODEL in r.json()["error"]  # it names the models there are
    r = httpx.get(f"{BASE_URL}/v2/models/{MODEL}/versions/2/ready", timeout=30)
    assert r.status_code == 404
    r = httpx.post(f"{BASE_URL}/v2/models/{MODEL}/infer", content=b"{not json", timeout=30)
    assert r.status_code == 400
    assert "malformed" in r.json()["error"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_health_and_metadata(
    transport: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    oip_app: None,
) -> None:
    client, _ = _clients(transport, http, grpc)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    meta = (
        client.get_model_metadata(MODEL, as_json=True)
        if transport == "grpc"
        else (client.get_model_metadata(MODEL))
    )
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["boxes"]["datatype"] == "FP32"
    assert [int(d) for d in outputs["boxes"]["shape"]] == [-1, 4]
    assert meta["inputs"][0]["name"] == "image"
    server = (
        client.get_server_metadata(as_json=True)
        if transport == "grpc"
        else (client.get_server_metadata())
    )
    extensions = {"binary_tensor_data", "model_configuration", "statistics", "model_repository"}
    assert extensions <= set(server["extensions"])


def test_segmenter_masks_are_v1s_over_both_transports(
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    oip_app: None,
) -> None:
    picture = Image.new("RGB", (160, 90), "white")
    picture.paste((255, 0, 0), (10, 20, 60, 70))  # red: class 1, 50 x 50 pixels
    picture.paste((0, 255, 0), (100, 5, 150, 25))  # green: class 2, 50 x 20
    data = encode(picture, "PNG")

    def v1(mask_format: str) -> dict[str, Any]:
        r = httpx.post(
            f"{BASE_URL}/v1/models/{COLOURS}/predict",
            content=data,
            params={"mask_format": mask_format},
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return r.json()

    rle = v1("rle")
    result = http.infer(COLOURS, [_input(httpclient, [data])], parameters={"mask_format": "rle"})
    masks = [json.loads(m) for m in result.as_numpy("masks")]
    assert masks == [p["mask"] for p in rle["predictions"]]
    assert result.as_numpy("areas").tolist() == [p["area"] for p in rle["predictions"]]
    assert result.as_numpy("areas").tolist() == [2500, 1000]
    assert result.get_output("label_maps") is None
    png = v1("png")
    result = grpc.infer(COLOURS, [_input(grpcclient, [data])], parameters={"mask_format": "png"})
    assert result.as_numpy("label_maps")[0].decode() == png["label_map"]
    assert result.get_output("masks") is None
    labels = [v.decode() for v in result.as_numpy("labels")]
    assert labels == [p["label"] for p in png["predictions"]] == ["red", "green"]


# --- several versions of one model -----------------------------------------------------------

# The class id of red in each version's answer: "2" (the latest) is `Colours`, "1" is
# `SwappedColours`; a request that names no version gets the latest.
RED_CLASS = {"1": 2, "2": 1, "": 1}


def _red_green() -> bytes:
    picture = Image.new("RGB", (160, 90), "white")
    picture.paste((255, 0, 0), (10, 20, 60, 70))
    picture.paste((0, 255, 0), (100, 5, 150, 25))
    return encode(picture, "PNG")


def _oip_answer(client: Any, module: Any, data: bytes, version: str) -> tuple[str, dict[str, int]]:
    """The version an infer names, and each label's class id."""
    result = client.infer(COLOURS, [_input(module, [data])], model_version=version)
    response = result.get_response()
    named = response["model_version"] if isinstance(response, dict) else response.model_version
    labels = [v.decode() for v in result.as_numpy("labels")]
    return named, dict(zip(labels, result.as_numpy("class_ids").tolist(), strict=True))


@pytest.mark.parametrize("version", ["1", "2", ""])
def test_two_versions_of_one_model_each_answer_their_own_requests(
    version: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    oip_app: None,
) -> None:
    data = _red_green()
    want = {"red": RED_CLASS[version], "green": 3 - RED_CLASS[version]}
    answered = version or "2"  # none named: the latest
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        assert _oip_answer(client, module, data, version) == (answered, want)
        assert client.is_model_ready(COLOURS, version)
    path = f"/v1/models/{COLOURS}" + (f"/versions/{version}" if version else "") + "/predict"
    r = httpx.post(
        f"{BASE_URL}{path}", content=data, headers={"content-type": "image/png"}, timeout=60
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == answered
    assert {p["label"]: p["class_id"] for p in body["predictions"]} == want


def test_versions_are_listed_configured_apart_and_an_unknown_one_is_404(
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    oip_app: None,
) -> None:
    assert http.get_model_metadata(COLOURS)["versions"] == ["1", "2"]
    older, latest = _config(http, COLOURS, "1"), _config(http, COLOURS)
    assert int(older["max_batch_size"]) == OLDER_BATCHING["max_batch_size"]
    assert int(latest["max_batch_size"]) == COLOURS_BATCHING["max_batch_size"]
    assert older["parameters"]["input_size"]["string_value"] == "64x64"  # its own input
    assert latest["parameters"]["input_size"]["string_value"] == "96x96"
    data = _red_green()
    for path in (
        f"/v2/models/{COLOURS}/versions/3/infer",
        f"/v1/models/{COLOURS}/versions/3/predict",
    ):
        r = httpx.post(f"{BASE_URL}{path}", content=data, timeout=30)
        assert r.status_code == 404, r.text
        assert "its versions are 1, 2" in r.text
    inputs = [_input(grpcclient, [data])]
    status, message = _status(lambda: grpc.infer(COLOURS, inputs, model_version="3"))
    assert status == "StatusCode.NOT_FOUND" and "its versions are 1, 2" in message


# --- Triton's extensions ------------------------------------------------------------------------


def _index(client: Any) -> dict[str, dict[str, Any]]:
    """The repository index by model name and version ("name" for version "1", "name/v" for
    any other), as either client returns it."""
    if isinstance(client, httpclient.InferenceServerClient):
        models = client.get_model_repository_index()
    else:
        models = client.get_model_repository_index(as_json=True)["models"]
    return {m["name"] + ("" if m["version"] == "1" else f"/{m['version']}"): m for m in models}


def _config(client: Any, name: str, version: str = "") -> dict[str, Any]:
    if isinstance(client, httpclient.InferenceServerClient):
        return dict(client.get_model_config(name, version))
    return dict(client.get_model_config(name, version, as_json=True)["config"])


def _stats(client: Any, name: str = "") -> dict[str, dict[str, Any]]:
    """Statistics by model name; gRPC's JSON writes 64-bit counts as strings and leaves zeros
    out, so every count is read with `_count`."""
    if isinstance(client, httpclient.InferenceServerClient):
        found = client.get_inference_statistics(name)
    else:
        found = client.get_inference_statistics(name, as_json=True)
    return {s["name"]: s for s in found["model_stats"]}


def _count(entry: dict[str, Any], *path: str) -> int:
    value: Any = entry
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return int(value or 0)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_model_config_is_tritons_and_says_how_each_model_is_deployed(
    transport: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    oip_app: None,
) -> None:
    client, _ = _clients(transport, http, grpc)
    detector = _config(client, MODEL)
    assert detector["name"] == MODEL
    assert int(detector["max_batch_size"]) == 8  # serve_config.yaml's Model user_config
    (image,) = detector["input"]
    assert (image["name"], image["data_type"]) == ("image", "TYPE_STRING")
    metadata = client.get_model_metadata(
        MODEL, **({"as_json": True} if transport == "grpc" else {})
    )
    assert [o["name"] for o in detector["output"]] == [o["name"] for o in metadata["outputs"]]
    (group,) = detector["instance_group"]
    assert group["kind"] in ("KIND_CPU", "KIND_GPU") and int(group["count"]) >= 1
    colours = _config(client, COLOURS)
    assert int(colours["max_batch_size"]) == COLOURS_BATCHING["max_batch_size"]
    batching = colours["dynamic_batching"]
    assert int(batching["max_queue_delay_microseconds"]) == 2000  # batch_wait_timeout_s 0.002
    assert [int(b) for b in batching["preferred_batch_size"]] == [4]
    assert _config(client, MODEL, "1") == detector


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_statistics_count_the_images_sent_and_the_broken_one_as_a_fail(
    transport: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    images: list[GeneratedImage],
    oip_app: None,
) -> None:
    # `warming` (the echo model) gets no other infer in this module, so its counts before are
    # settled: counts reach the statistics up to half a second after they happen.
    client, module = _clients(transport, http, grpc)
    before = _stats(client, WARMING)[WARMING]
    client.infer(WARMING, [_input(module, [i.data for i in images[:3]])])  # 3 in one request
    client.infer(WARMING, [_input(module, [images[3].data])])
    result = client.infer(WARMING, [_input(module, [images[0].data, b"not an image"])])
    assert [i.get("error", {}).get("status") for i in _items(result)] == [None, 415]

    def delta(entry: dict[str, Any], *path: str) -> int:
        return _count(entry, *path) - _count(before, *path)

    def settled() -> dict[str, Any] | None:
        # The Ingress counts answers, the Model its forward passes: wait for both.
        now = _stats(client, WARMING)[WARMING]
        done = delta(now, "inference_stats", "fail", "count") >= 1
        return now if done and delta(now, "inference_count") >= 5 else None

    after = wait_until(settled, 30, "the statistics to count the infers")
    assert delta(after, "inference_count") == 5  # every good image, through a forward pass
    assert delta(after, "execution_count") >= 1
    assert delta(after, "inference_stats", "success", "count") == 5
    assert delta(after, "inference_stats", "fail", "count") == 1
    assert delta(after, "inference_stats", "compute_infer", "count") == 5
    assert delta(after, "inference_stats", "success", "ns") > 0
    passes = sum(_count(b, "compute_infer", "count") for b in after["batch_stats"])
    assert passes == _count(after, "execution_count")
    images_run = sum(
        int(b["batch_size"]) * _count(b, "compute_infer", "count") for b in after["batch_stats"]
    )
    assert images_run == _count(after, "inference_count")
    assert _count(after, "last_inference") >= _count(before, "last_inference")
    assert _count(after, "last_inference") > 0
    every = _stats(client)  # no name: every served model
    assert set(every) == {MODEL, "shapes-segmenter", WARMING, COLOURS}


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_repository_index_lists_every_model_and_management_needs_its_own_key(
    transport: str,
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    oip_app: None,
) -> None:
    client, _ = _clients(transport, http, grpc)
    index = _index(client)
    assert set(index) == {MODEL, "shapes-segmenter", WARMING, COLOURS, f"{COLOURS}/2"}
    assert {m["state"] for m in index.values()} == {"READY"}
    expected = "401" if transport == "http" else "StatusCode.UNAUTHENTICATED"
    for headers in (None, {"authorization": "Bearer not-the-key"}):
        for call in (client.load_model, client.unload_model):
            status, message = _status(lambda c=call, h=headers: c(COLOURS, headers=h))
            assert status == expected
            assert "management key" in message
    assert set(_index(client)) == set(index)  # nothing changed


def _replicas() -> set[str]:
    """Every Serve replica of the cluster, by actor name (it ends in the replica's id)."""
    return {
        n["name"]
        for n in ray.util.list_named_actors(all_namespaces=True)
        if n["name"].startswith("SERVE_REPLICA::")
    }


def _of(app: str, replicas: set[str]) -> set[str]:
    return {r for r in replicas if r.startswith(f"SERVE_REPLICA::{app}#")}


def test_models_come_and_go_under_load_and_nothing_else_restarts(
    started: dict[str, Any],
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    oip_app: None,
) -> None:
    """While a client sends to the models already served, one request after another: a `serve
    deploy` of the config with one model application more, a model loaded with its config over
    gRPC, then both unloaded over HTTP. Every request is answered, and no replica but those of
    the two models starts or stops. (Loading a parked model back is `Repository`'s unit test.)"""
    key = {"authorization": f"Bearer {MANAGEMENT_KEY}"}
    before = _replicas()
    config = copy.deepcopy(started)
    config["applications"].append(model_app("late", "1", COLOURS_MODEL, COLOURS_BATCHING))
    codes: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=BASE_URL, timeout=60) as client:
            while not stop.is_set():
                for model in (MODEL, COLOURS):
                    r = client.post(
                        f"/v1/models/{model}/predict",
                        content=_red_green(),
                        headers={"content-type": "image/png"},
                    )
                    codes.append(r.status_code)

    senders = [threading.Thread(target=traffic)]
    for sender in senders:
        sender.start()
    try:
        start(config)  # as `serve deploy`: the whole config, one application more
        wait_until(lambda: http.is_model_ready("late"), 120, "the model added by config")
        added = {"version": "5", "model": COLOURS_MODEL}
        grpc.load_model("added", headers=key, config=json.dumps(added))
        assert http.is_model_ready("added", "5")
        result = http.infer("added", [_input(httpclient, [_red_green()])])
        assert result.get_response()["model_version"] == "5"
        during = _replicas()
        new = _of("late-v1", during) | _of("vision-added-v5", during)
        assert len(new) == 2 and during - new == before
        for name in ("late", "added"):
            http.unload_model(name, headers=key)
        sent = len(codes)
        wait_until(lambda: len(codes) >= sent + 8, 60, "requests after the unloads")
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert codes and set(codes) == {200}, sorted(set(codes))
    # Nothing else started or stopped (the two models' replicas stop once drained).
    assert _replicas() - new == before
    index = _index(grpc)
    assert (index["late"]["state"], index["late"]["reason"]) == ("UNAVAILABLE", "unloaded")
    assert index["added/5"]["state"] == "UNAVAILABLE"
    status, _ = _status(lambda: http.infer("late", [_input(httpclient, [_red_green()])]))
    assert status == "404"
    # Code or files the deployed config does not name are refused, before anything starts.
    evil = {"model": {"name": "os:system", "weights": "none"}}
    status, message = _status(lambda: grpc.load_model("evil", headers=key, config=json.dumps(evil)))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "factory" in message


def test_extensions_answer_unknown_models_and_versions_in_the_protocols_shape(
    oip_app: None,
) -> None:
    for path in (f"/v2/models/{MODEL}/versions/2/config", "/v2/models/nope/stats"):
        r = httpx.get(f"{BASE_URL}{path}", timeout=30)
        assert r.status_code == 404
        assert list(r.json()) == ["error"]


# --- KServe's Python SDK ------------------------------------------------------------------------

KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"  # `make setup` builds it
# (width, height, red box, green box), boxes as (x0, y0, x1, y1) with exclusive ends: the first
# scales by 0.6 into the model's 96 pixels and the second not at all, so every edge stays on a
# pixel boundary and each mask's area and box are exact.
SCENES = [
    (160, 90, (10, 20, 60, 70), (100, 5, 150, 25)),
    (96, 96, (8, 40, 40, 88), (50, 10, 90, 30)),
]


def _kserve_sdk(calls: list[dict[str, Any]]) -> list[Any]:
    """What KServe's SDK answers to `calls` (tests/integration/kserve_sdk_calls.py, run in its
    own venv: it cannot share a process with tritonclient's gRPC modules)."""
    if not KSERVE_PYTHON.exists():
        pytest.skip(f"{KSERVE_PYTHON} is missing: `make setup` builds it")
    done = subprocess.run(
        [str(KSERVE_PYTHON), str(Path(__file__).with_name("kserve_sdk_calls.py"))],
        input=json.dumps({"base_url": BASE_URL, "calls": calls}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results: list[Any] = json.loads(done.stdout)
    return results


def test_kserves_sdk_client_reads_readiness_and_each_images_answer(
    oip_app: None, tmp_path: Path
) -> None:
    paths = []
    for k, (width, height, red, green) in enumerate(SCENES):
        picture, _ = two_rectangles(width, height, red=red, green=green)
        paths.append(tmp_path / f"scene-{k}.png")
        paths[-1].write_bytes(encode(picture, "PNG"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(truncated_jpeg())
    scenes, one_broken = [str(p) for p in paths], [str(paths[0]), str(broken)]
    live, ready, detector, colours, unknown, both, with_broken, alone = _kserve_sdk(
        [
            {"call": "is_server_live"},
            {"call": "is_server_ready"},
            {"call": "is_model_ready", "model": MODEL},
            {"call": "is_model_ready", "model": COLOURS},
            {"call": "is_model_ready", "model": "nope"},
            {"call": "infer", "model": COLOURS, "images": scenes, "request_id": "kserve-1"},
            # Binary outputs: the SDK splits the body at Inference-Header-Content-Length.
            {
                "call": "infer",
                "model": COLOURS,
                "images": one_broken,
                "parameters": {"binary_data_output": True},
            },
            {"call": "infer", "model": COLOURS, "images": [str(broken)]},
        ]
    )
    assert (live, ready, detector, colours, unknown) == (True, True, True, True, False)

    assert (both["id"], both["model_name"]) == ("kserve-1", COLOURS)
    outputs = {name: o["data"] for name, o in both["outputs"].items()}
    assert outputs["counts"] == [2, 2]
    assert outputs["labels"] == ["red", "green"] * 2
    areas = [(x1 - x0) * (y1 - y0) for scene in SCENES for x0, y0, x1, y1 in scene[2:]]
    assert outputs["areas"] == areas == [2500, 1000, 1536, 800]
    boxes = [list(box) for scene in SCENES for box in scene[2:]]
    np.testing.assert_allclose(outputs["boxes"], boxes)
    items = json.loads(both["parameters"]["items"])
    assert [(i["width"], i["height"]) for i in items] == [s[:2] for s in SCENES]

    items = json.loads(with_broken["parameters"]["items"])
    assert "error" not in items[0]
    assert (items[1]["error"]["code"], items[1]["error"]["status"]) == ("corrupt_image", 422)
    outputs = {name: o["data"] for name, o in with_broken["outputs"].items()}
    assert outputs["counts"] == [2, 0]
    assert outputs["labels"] == ["red", "green"]
    assert outputs["areas"] == areas[:2]

    assert alone["status"] == 422
    assert "truncated" in alone["message"]
