"""Autoscaling, proven locally: under load the Model scales out, the autoscaler adds GPU nodes for
it, every request is answered and joined right, and afterwards replicas and nodes scale back.

Runs Ray's fake multi-node provider: a head without GPUs and a node type declaring one logical
GPU, minimum 0. The timeline (replicas and nodes per second) is written as JSON for
`scripts/plot_autoscaling.py`, which draws the PNG in the README.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from tests import images
from tests.fixtures.models import colour_in
from tests.serving import BASE_URL, ROOT, app_config, deploy, fixed_replicas, wait_until
from tests.system.fake_cluster import FakeAutoscalingCluster

pytestmark = pytest.mark.system
TIMELINE = Path(
    os.environ.get("VISION_AUTOSCALING_TIMELINE", ROOT / "artifacts" / "autoscaling_timeline.json")
)
MAX_MODEL_REPLICAS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAutoscalingCluster]:
    fake = FakeAutoscalingCluster(
        tmp_path_factory.mktemp("fake-cluster"),
        head_cpus=6,
        gpu_node={"CPU": 1, "GPU": 1},
        max_gpu_nodes=MAX_MODEL_REPLICAS,
    )
    fake.start(env={"PYTHONPATH": str(ROOT)})
    try:
        yield fake
    finally:
        serve.shutdown()
        fake.stop()


class Timeline:
    """Samples a Model deployment's replicas and the GPU nodes every half second from a thread."""

    def __init__(self, deployment: str = "Model") -> None:
        self.deployment = deployment
        self.points: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.marks: dict[str, float] = {}
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return round(time.monotonic() - self._start, 2)

    def mark(self, name: str) -> None:
        self.marks[name] = self.now()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                status = serve.status().applications.get("vision")
                gpu_nodes = sum(
                    1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0
                )
            except Exception as exc:  # noqa: BLE001 - a missed sample, not a stopped timeline
                self.errors.append(repr(exc))
                continue
            model = status.deployments.get(self.deployment) if status else None
            replicas = (model.replica_states or {}).get("RUNNING", 0) if model else 0
            self.points.append(
                {"t": self.now(), "model_replicas": replicas, "gpu_nodes": gpu_nodes}
            )

    def latest(self) -> dict[str, Any]:
        return self.points[-1] if self.points else {"model_replicas": 0, "gpu_nodes": 0}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


SECOND = "second"  # a model beside the default one, on GPU nodes only while it has work


def test_a_second_model_scales_from_zero_onto_a_gpu_node_and_back(
    cluster: FakeAutoscalingCluster,
) -> None:
    # The CPU stages held at one replica each, so none spreads onto the GPU node and keeps it.
    config = app_config(
        model={"name": "tests.fixtures.models:echo", "weights": "none"},
        options={s: fixed_replicas(1) for s in ("Ingress", "Preprocessor", "Postprocessor")},
    )
    app = config["applications"][0]
    app["args"]["models"].append(
        {"name": SECOND, "model": {"name": "tests.fixtures.models:echo", "weights": "none"}}
    )
    app["deployments"].insert(
        2,
        {
            "name": f"Model-{SECOND}",
            "ray_actor_options": {"num_cpus": 0, "num_gpus": 1},
            "max_ongoing_requests": 8,
            "autoscaling_config": {
                "min_replicas": 0,
                "max_replicas": 1,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": 0,
                # Metrics every second, not Serve's 10 s (a deprecated field, the one Serve
                # 2.58 reads): it decides to wake and to sleep within a second or two.
                "metrics_interval_s": 1,
                "look_back_period_s": 2,
            },
        },
    )
    deploy(config, timeout_s=240)
    timeline = Timeline(f"Model-{SECOND}")
    try:
        wait_until(
            lambda: (
                timeline.latest()["gpu_nodes"] == 0 and timeline.latest()["model_replicas"] == 0
            ),
            120,
            "no GPU node and no replica of the second model",
            every_s=1.0,
        )
        timeline.mark("at_zero")
        colours = images.distinct_colours(12, seed=41)

        async def send() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=BASE_URL, timeout=240) as client:
                return list(
                    await asyncio.gather(
                        *(
                            client.post(
                                f"/v1/models/{SECOND}/predict",
                                content=images.solid_png(c, 16, 16),
                                headers={"content-type": "image/png"},
                            )
                            for c in colours
                        )
                    )
                )

        started = time.monotonic()
        responses = asyncio.run(send())
        timeline.mark("answered")
        cold_s = time.monotonic() - started
        assert [r.status_code for r in responses] == [200] * len(colours), responses[0].text
        assert [colour_in(r.json()["predictions"]) for r in responses] == colours
        # Serve's status catches up with the replica that answered within a sample or two.
        wait_until(
            lambda: timeline.latest()["model_replicas"] == 1,
            30,
            f"the second model's replica in Serve's status ({timeline.errors})",
            every_s=0.5,
        )
        assert max(p["gpu_nodes"] for p in timeline.points) == 1, "it woke on one new GPU node"
        wait_until(
            lambda: (
                timeline.latest()["model_replicas"] == 0 and timeline.latest()["gpu_nodes"] == 0
            ),
            180,
            "the second model and its GPU node to scale back to zero",
            every_s=1.0,
        )
        timeline.mark("back_at_zero")
        # The default model answered throughout on the head; it never needed a GPU.
        r = httpx.post(
            f"{BASE_URL}/v1/predict",
            content=images.solid_png(colours[0], 16, 16),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert r.status_code == 200 and colour_in(r.json()["predictions"]) == colours[0]
    finally:
        timeline.stop()
    print(f"cold start onto a new (fake) GPU node: {cold_s:.1f} s; marks {timeline.marks}")


def test_model_scales_out_onto_new_gpu_nodes_and_back(cluster: FakeAutoscalingCluster) -> None:
    timeline = Timeline()
    deploy(
        app_config(
            model={
                "name": "tests.fixtures.models:echo",
                "weights": "none",
                "kwargs": {"delay_s": 0.25},
            },
            user_configs={"Model": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05}},
            options={
                "Model": {
                    "ray_actor_options": {"num_cpus": 0, "num_gpus": 1},
                    "max_ongoing_requests": 8,
                    "autoscaling_config": {
                        "min_replicas": 1,
                        "max_replicas": MAX_MODEL_REPLICAS,
                        # Ongoing requests at the Model are bundles: 16 single images in
                        # flight travel as about 3 of them.
                        "target_ongoing_requests": 1,
                        "upscale_delay_s": 2,
                        "downscale_delay_s": 8,
                        "look_back_period_s": 12,
                    },
                }
            },
        ),
        timeout_s=240,
    )
    timeline.mark("deployed")
    assert timeline.latest()["gpu_nodes"] <= 1

    colours = images.distinct_colours(2000, seed=31)
    answers: list[tuple[int, tuple[int, int, int]]] = []
    stop = threading.Event()

    async def load(concurrency: int) -> None:
        pending = iter(colours)
        async with httpx.AsyncClient(base_url=BASE_URL, timeout=120) as client:

            async def worker() -> None:
                for colour in pending:
                    if stop.is_set():
                        return
                    r = await client.post(
                        "/v1/predict",
                        content=images.solid_png(colour, 16, 16),
                        headers={"content-type": "image/png"},
                    )
                    ok = r.status_code == 200 and colour_in(r.json()["predictions"]) == colour
                    answers.append((r.status_code if ok else -r.status_code, colour))

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    driver = threading.Thread(target=lambda: asyncio.run(load(16)))
    timeline.mark("load_start")
    driver.start()
    try:
        wait_until(
            lambda: (
                timeline.latest()["model_replicas"] >= MAX_MODEL_REPLICAS
                and timeline.latest()["gpu_nodes"] >= MAX_MODEL_REPLICAS
            ),
            240,
            "the Model to scale out onto new GPU nodes",
            every_s=1.0,
        )
        timeline.mark("scaled_out")
        wait_until(lambda: len(answers) >= 100, 120, "load on the scaled-out Model", every_s=1.0)
    finally:
        stop.set()
        driver.join(120)
    timeline.mark("load_end")

    try:
        wait_until(
            lambda: (
                timeline.latest()["model_replicas"] == 1 and timeline.latest()["gpu_nodes"] == 1
            ),
            240,
            "replicas and GPU nodes to scale back down",
            every_s=1.0,
        )
        timeline.mark("scaled_in")
    finally:
        timeline.stop()
        TIMELINE.parent.mkdir(parents=True, exist_ok=True)
        TIMELINE.write_text(
            json.dumps(
                {"points": timeline.points, "marks": timeline.marks, "requests": len(answers)},
                indent=1,
            )
        )

    assert answers, "no request was answered"
    failed = [a for a in answers if a[0] != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} requests failed or were mis-joined"
    assert max(p["model_replicas"] for p in timeline.points) == MAX_MODEL_REPLICAS
