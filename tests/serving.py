"""Deploy the real graph from `serve_config.yaml` (with per-test overrides) and talk to it."""

from __future__ import annotations

import asyncio
import copy
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import ray
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.schema import ServeDeploySchema

from tools.serve_process import load_config, serve_one_model, wait_for

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "http://127.0.0.1:8000"
GRPC_ADDRESS = "127.0.0.1:9000"  # serve_config.yaml grpc_options.port
METRICS_PORT = 8089  # Ray's Prometheus endpoint on the test cluster's node
APP = "vision"
ONE_MODEL = "the-model"  # what `app_config(model=...)` serves its one model as
T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.2
) -> T:
    """`tools.serve_process.wait_for`, failing with a `TimeoutError`."""
    return wait_for(check, timeout_s, what, every_s, error=TimeoutError)


def port_open(port: int) -> bool:
    """Whether something listens on `port` on loopback."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def replica_names(deployment: str) -> set[str]:
    """Actor names of the live replicas of one deployment of the app. A name ends in the replica's
    unique id, which is also the `replica` tag of the metrics it records."""
    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    return {
        n["name"]
        for n in ray.util.list_named_actors(all_namespaces=True)
        if n["name"].startswith(prefix)
    }


def wait_replaced(deployment: str, victim: str, count: int, timeout_s: float = 120) -> None:
    """Wait until Serve has replaced a killed replica (actor name `victim`): `count` live replicas
    of `deployment`, the victim not among them, and the app running. A test that kills a replica
    waits for this before it ends: Serve notices the death at its next health check, and a deploy
    sent before then fails on it ("A replica's health check failed")."""

    def replaced() -> bool:
        names = replica_names(deployment)
        return victim not in names and len(names) >= count

    wait_until(replaced, timeout_s, f"Serve to replace the killed {deployment} replica")
    wait_running(timeout_s)


def app_config(
    base: dict[str, Any] | None = None,
    *,
    model: dict[str, Any] | None = None,
    args: dict[str, Any] | None = None,
    user_configs: dict[str, dict[str, Any]] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`serve_config.yaml` (or `base`) with overrides, served on loopback only.

    `model` serves that one model (as `models: [{name: ONE_MODEL, model: ...}]`, the default) in
    place of the config's models, whose other deployments it drops; its deployment is `Model`.
    """
    config = copy.deepcopy(base if base is not None else load_config())
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": 8000}
    app = config["applications"][0]
    if model is not None:
        serve_one_model(app, model, ONE_MODEL)
    _merge(app["args"], args or {})
    deployments = {d["name"]: d for d in app["deployments"]}
    for name, user_config in (user_configs or {}).items():
        deployments[name]["user_config"] = {
            **deployments[name].get("user_config", {}),
            **user_config,
        }
    for name, extra in (options or {}).items():
        deployments[name].update(extra)
    return config


def model_app(
    name: str, version: str, model: dict[str, Any], user_config: dict[str, Any]
) -> dict[str, Any]:
    """A model application of the app: one version of one model, started and stopped alone
    (`graph.build_model`)."""
    return {
        "name": f"{name}-v{version}",
        "route_prefix": None,
        "import_path": "vision_serve.graph:build_model",
        "args": {"front": APP, "name": name, "version": version, "model": model},
        # One replica, stopped without the default 2 s waits: the tests unload and load them.
        "deployments": [
            {
                "name": "Model",
                "user_config": user_config,
                "num_replicas": 1,
                "graceful_shutdown_wait_loop_s": 0.2,
                "graceful_shutdown_timeout_s": 1,
            }
        ],
    }


SEGMENTER_DEPLOYMENT = "Model-shapes-segmenter"
# The classifier modules' limits (test_http checks them; test_batching deploys the same args so
# that it reuses test_http's replicas).
SMALL_LIMITS = {
    "max_body_bytes": 3_000_000,
    "max_image_bytes": 2_000_000,
    "max_pixels": 4_000_000,
    "max_images_per_request": 8,
}


def shipped_models_config(batch: int) -> dict[str, Any]:
    """serve_config.yaml's two shipped models, each batching `batch` images with a long wait (so
    batches fill from concurrent requests, not by timing luck) and the segmenter kept awake.

    test_shipped_detector.py and test_shipped_segmenter.py deploy exactly this, one after the
    other, so the second deploy changes nothing and costs nothing.
    """
    config = load_config()
    segmenter = next(
        d for d in config["applications"][0]["deployments"] if d["name"] == SEGMENTER_DEPLOYMENT
    )
    scaling = {**segmenter["autoscaling_config"], "min_replicas": 1}
    batching = {"max_batch_size": batch, "batch_wait_timeout_s": 1.0}
    return app_config(
        config,
        user_configs={"Model": batching, SEGMENTER_DEPLOYMENT: batching},
        options={SEGMENTER_DEPLOYMENT: {"autoscaling_config": scaling}},
    )


# The models of test_detection, test_segmentation, test_hostile_images and test_gpu_decode, one
# deploy for the four modules: the `colours` segmenter (the default model), and by name a
# torchvision detector, Mask R-CNN, an echo that resizes and centre-crops (as
# configs/resnet50_imagenet.yaml), and the shipped detector twice, decoding JPEGs in the Model
# (`gpu_decode`) and in the Preprocessor.
COLOURS_SEGMENTER = {"name": "tests.fixtures.models:colours"}
TORCHVISION_DETECTOR = (
    "detector",
    {
        "name": "fasterrcnn_mobilenet_v3_large_320_fpn",
        "weights": "none",
        "input_size": 320,
        # Random weights score everything low; keep every box so there is geometry to check.
        "kwargs": {"box_score_thresh": 0.0, "box_detections_per_img": 30},
    },
)
MASK_RCNN = (
    "mask-rcnn",
    {
        "name": "maskrcnn_resnet50_fpn",
        "weights": "none",
        "input_size": 160,
        "kwargs": {"box_score_thresh": 0.0, "box_detections_per_img": 3},
    },
)
RESIZE_CROP_ECHO = (
    "resize-crop",
    {
        "name": "tests.fixtures.models:echo",
        "weights": "none",
        "resize": "resize_crop",
        "input_size": 224,
        "resize_size": 232,
    },
)
DEVICE_DECODE, PILLOW_DECODE = "device-decode", "pillow-decode"  # the shipped detector twice


def model_zoo_config() -> dict[str, Any]:
    """The default model `COLOURS_SEGMENTER`, and `TORCHVISION_DETECTOR`, `MASK_RCNN`,
    `RESIZE_CROP_ECHO`, `DEVICE_DECODE` and `PILLOW_DECODE` by their names, each batching as its
    tests need; the Postprocessor keeps every detection (random weights score low); one
    Preprocessor replica, whose memory test_hostile_images watches.

    test_detection.py, test_segmentation.py, test_hostile_images.py and test_gpu_decode.py deploy
    exactly this, one after the other, so the later deploys change nothing and cost nothing (a
    deploy of other `args` restarts every replica after a build, about 12 s here).
    """
    models = load_config()["applications"][0]["args"]["models"]
    shipped = next(m["model"] for m in models if m["name"] == "shapes-detector")
    config = app_config(
        model=COLOURS_SEGMENTER,
        user_configs={
            "Model": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05},
            "Postprocessor": {"detection": {"score_threshold": 0.0, "max_detections": 30}},
        },
        options={"Preprocessor": fixed_replicas(1)},
    )
    app = config["applications"][0]
    model = next(d for d in app["deployments"] if d["name"] == "Model")
    for (name, spec), batching in (
        (TORCHVISION_DETECTOR, {"max_batch_size": 4, "batch_wait_timeout_s": 0.2}),
        # One image per pass: the start-up warm-up of a pass of 8 is the costliest part.
        (MASK_RCNN, {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}),
        (RESIZE_CROP_ECHO, {}),
        ((DEVICE_DECODE, {**shipped, "gpu_decode": True}), {}),
        ((PILLOW_DECODE, shipped), {}),
    ):
        app["args"]["models"].append({"name": name, "model": spec})
        user_config = {**model["user_config"], **batching}
        app["deployments"].append({"name": f"Model-{name}", "user_config": user_config})
    return config


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> None:
    """Nested mappings merge key by key (`limits: {max_body_bytes: ...}` keeps the other limits)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def fixed_replicas(replicas: int) -> dict[str, Any]:
    """Deployment options that hold a stage at exactly `replicas` (the faults tests kill them)."""
    return {
        "autoscaling_config": {
            "min_replicas": replicas,
            "max_replicas": replicas,
            "target_ongoing_requests": 8,
        }
    }


def deploy(config: dict[str, Any], timeout_s: float = 180) -> None:
    """Apply a config the way `serve run <config>` does, then wait for the app to run."""
    start(config)
    wait_running(timeout_s)


def start(config: dict[str, Any]) -> None:
    """Apply a config the way `serve run <config>` does, without waiting for it."""
    schema = ServeDeploySchema.model_validate(config)
    # Serve starts once per test session, with the first deploy's options: every config carries
    # serve_config.yaml's grpc_options, so the gRPC proxy is up whichever module deploys first.
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=schema.grpc_options.model_dump(),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema)


def wait_running(timeout_s: float = 180) -> None:
    """Wait until the app runs with every deployment healthy; a failed deploy raises at once."""

    def running() -> bool:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "DEPLOY_FAILED":
            details = "; ".join(
                f"{name}: {d.message}" for name, d in status.deployments.items() if d.message
            )
            raise RuntimeError(f"deploy failed: {status.message} {details}")
        healthy = status is not None and status.status == "RUNNING"
        return healthy and _all_updated(status)

    try:
        wait_until(running, timeout_s, f"app {APP!r} to run", every_s=0.5)
    except TimeoutError as timeout:
        raise TimeoutError(f"{timeout}; status: {serve.status().applications.get(APP)}") from None


def _all_updated(status: Any) -> bool:
    return all(d.status == "HEALTHY" for d in status.deployments.values())


async def post_many(
    bodies: Iterable[bytes],
    path: str = "/v1/predict",
    content_type: str = "image/jpeg",
    headers: Iterable[dict[str, str]] | None = None,
) -> list[httpx.Response]:
    """POST every body at once, one request each; responses in input order.

    `headers`, one dict per body, add to (or override) the content type for that request.
    """
    bodies = list(bodies)
    extra = list(headers) if headers is not None else [{}] * len(bodies)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=120, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(path, content=b, headers={"content-type": content_type, **h})
                    for b, h in zip(bodies, extra, strict=True)
                )
            )
        )


def post_image(
    data: bytes, content_type: str = "image/jpeg", model: str | None = None, **params: Any
) -> httpx.Response:
    """POST one image to `/v1/predict`, or to `model`'s route where one is named."""
    return httpx.post(
        f"{BASE_URL}{predict_path(model)}",
        content=data,
        params=params,
        headers={"content-type": content_type},
        timeout=120,
    )


def predict_path(model: str | None = None) -> str:
    return "/v1/predict" if model is None else f"/v1/models/{model}/predict"


def post_multipart(
    images: list[tuple[str, bytes, str]], model: str | None = None, **params: Any
) -> httpx.Response:
    files = [("image", (name, data, ctype)) for name, data, ctype in images]
    return httpx.post(f"{BASE_URL}{predict_path(model)}", files=files, params=params, timeout=120)
