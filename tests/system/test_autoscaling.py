"""Autoscaling, proven locally, on one cluster timeline: a second model wakes from zero onto a
new GPU node, then under load the default Model scales out and the autoscaler adds GPU nodes for
it; then a GPU node that hosts a Model replica is lost under that load; every request is
answered and joined right, and afterwards replicas and nodes scale back while a trickle of
requests goes on, losing none.

Runs Ray's fake multi-node provider: a head without GPUs and a node type declaring one logical
GPU, minimum 0. The timeline (replicas and nodes per half second) is written as JSON for
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

from tests import images, settings
from tests.fixtures.models import colour_in
from tests.serving import (
    BASE_URL,
    ROOT,
    app_config,
    deploy,
    fixed_replicas,
    port_open,
    wait_until,
)
from tests.system.fake_cluster import FakeAutoscalingCluster

pytestmark = pytest.mark.system
TIMELINE = Path(
    os.environ.get("VISION_AUTOSCALING_TIMELINE", ROOT / "artifacts" / "autoscaling_timeline.json")
)
MAX_MODEL_REPLICAS = 3
SECOND = "second"  # a model beside the default one, on a GPU node only while it has work
# Metrics every second, not Serve's 10 s (a deprecated field, the one Serve 2.58 reads), so
# Serve decides to scale within a second or two of the load changing.
FAST_METRICS = {"metrics_interval_s": 1, "look_back_period_s": 2}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAutoscalingCluster]:
    fake = FakeAutoscalingCluster(
        tmp_path_factory.mktemp("fake-cluster"),
        head_cpus=6,
        gpu_node={"CPU": 1, "GPU": 1},
        max_gpu_nodes=MAX_MODEL_REPLICAS + 1,  # the default Model's replicas and the second's
    )
    # Serve's Python proxy here, not serve.env's HAProxy: the fake nodes share one machine, and
    # an HAProxy per node would each bind 8000 (on a real cluster every node has its own).
    fake.start(env={"PYTHONPATH": str(ROOT), "RAY_SERVE_ENABLE_HA_PROXY": "0"})
    try:
        yield fake
    finally:
        fake.stop()  # ends the cluster's processes; its workers exit once their raylet has
        wait_until(lambda: not port_open(8000), 60, "the cluster's HTTP proxy to exit")


class Timeline:
    """Samples both models' running replicas and the GPU nodes every half second from a thread."""

    def __init__(self) -> None:
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
            self.points.append(
                {
                    "t": self.now(),
                    "model_replicas": _running(status, "Model"),
                    "second_replicas": _running(status, f"Model-{SECOND}"),
                    "gpu_nodes": gpu_nodes,
                }
            )

    def latest(self) -> dict[str, Any]:
        return self.points[-1] if self.points else {}

    def at(self, **counts: int) -> bool:
        latest = self.latest()
        return bool(latest) and all(latest[k] == v for k, v in counts.items())

    def most(self, key: str) -> int:
        return max((int(p[key]) for p in self.points), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _model_replica_nodes() -> list[str]:
    """The node of each live replica of the default Model, from the GCS's actor table (the
    state API would need the dashboard, which this cluster runs without)."""
    from ray._private import state

    return [
        a["Address"]["NodeID"]
        for a in state.actors().values()
        if a["State"] == "ALIVE" and "#Model#" in a["Name"]
    ]


def _running(status: Any, deployment: str) -> int:
    d = status.deployments.get(deployment) if status else None
    return int((d.replica_states or {}).get("RUNNING", 0)) if d else 0


ECHO = "tests.fixtures.models:echo"


def _config() -> dict[str, Any]:
    """The default Model on GPU nodes, 1 to 3 replicas, with forward passes slow enough that 16
    images in flight need 3; a second model on GPU nodes, 0 to 1 replica; the CPU stages held at
    one replica each on the head, so none spreads onto a GPU node and keeps it."""
    gpu = {"num_cpus": 0, "num_gpus": 1}
    config = app_config(
        model={"name": ECHO, "weights": "none", "kwargs": {"delay_s": 0.25}},
        user_configs={"Model": {"max_batch_size": 4, "batch_wait_timeout_s": 0.05}},
        options={
            **{s: fixed_replicas(1) for s in ("Ingress", "Preprocessor", "Postprocessor")},
            "Model": {
                "ray_actor_options": gpu,
                "max_ongoing_requests": 8,
                "autoscaling_config": {
                    "min_replicas": 1,
                    "max_replicas": MAX_MODEL_REPLICAS,
                    # Ongoing requests at the Model are bundles: 16 single images in flight
                    # travel as about 3 of them.
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 1,
                    "downscale_delay_s": 3,
                    **FAST_METRICS,
                },
            },
        },
    )
    # One proxy, on the head. The fake nodes share one machine and one address, so a proxy per
    # node would share port 8000 (SO_REUSEPORT) and a lost node would take the requests its
    # proxy held: on a real cluster that is the loss of an edge (README, "Failures a client can
    # see"), not of the Model replica this test loses.
    config["proxy_location"] = "HeadOnly"
    app = config["applications"][0]
    app["args"]["models"].append({"name": SECOND, "model": {"name": ECHO, "weights": "none"}})
    app["deployments"].insert(
        2,
        {
            "name": f"Model-{SECOND}",
            "user_config": settings.user_config("Model"),  # serve_config.yaml's batching
            "ray_actor_options": gpu,
            "max_ongoing_requests": 8,
            "autoscaling_config": {
                "min_replicas": 0,
                "max_replicas": 1,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": 0,
                **FAST_METRICS,
            },
        },
    )
    return config


def _post(client: httpx.AsyncClient, path: str, colour: tuple[int, int, int]) -> Any:
    return client.post(
        path, content=images.solid_png(colour, 16, 16), headers={"content-type": "image/png"}
    )


def test_models_scale_from_zero_and_out_onto_new_gpu_nodes_and_back(
    cluster: FakeAutoscalingCluster,
) -> None:
    timeline = Timeline()
    try:
        deploy(_config(), timeout_s=240)
        timeline.mark("deployed")
        wait_until(
            lambda: timeline.at(model_replicas=1, second_replicas=0, gpu_nodes=1),
            120,
            f"one GPU node, for the default Model, and none for the second ({timeline.latest()})",
            every_s=0.5,
        )

        # 1. The second model wakes from zero onto a new GPU node.
        timeline.mark("second_start")
        colours = images.distinct_colours(12, seed=41)

        async def wake() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=BASE_URL, timeout=240) as client:
                path = f"/v1/models/{SECOND}/predict"
                return list(await asyncio.gather(*(_post(client, path, c) for c in colours)))

        started = time.monotonic()
        responses = asyncio.run(wake())
        cold_s = time.monotonic() - started
        timeline.mark("second_end")
        assert [r.status_code for r in responses] == [200] * len(colours), responses[0].text
        assert [colour_in(r.json()["predictions"]) for r in responses] == colours
        # Serve's status catches up with the replica that answered within a sample or two.
        wait_until(
            lambda: timeline.most("second_replicas") == 1 and timeline.most("gpu_nodes") == 2,
            30,
            f"the second model's replica on a second GPU node ({timeline.errors})",
            every_s=0.5,
        )

        # 2. Under load the default Model scales out, a new GPU node for each replica.
        answers: list[tuple[int, tuple[int, int, int]]] = []
        stop = threading.Event()

        async def load(concurrency: int, seed: int, stop: threading.Event, pause_s: float) -> None:
            pending = iter(images.distinct_colours(2000, seed=seed))
            async with httpx.AsyncClient(base_url=BASE_URL, timeout=120) as client:

                async def worker() -> None:
                    for colour in pending:
                        if stop.is_set():
                            return
                        r = await _post(client, "/v1/predict", colour)
                        ok = r.status_code == 200 and colour_in(r.json()["predictions"]) == colour
                        answers.append((r.status_code if ok else -r.status_code, colour))
                        await asyncio.sleep(pause_s)

                await asyncio.gather(*(worker() for _ in range(concurrency)))

        driver = threading.Thread(target=lambda: asyncio.run(load(16, 31, stop, 0.0)))
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
                every_s=0.5,
            )
            timeline.mark("scaled_out")
            wait_until(
                lambda: len(answers) >= 100, 120, "load on the scaled-out Model", every_s=0.5
            )

            # 3. Under the same load, a GPU node that hosts a Model replica is lost: its raylet
            # and agents SIGKILLed, a machine that vanishes. Every request is still answered
            # (the Ingress resends what the lost replica held), and the Model is back to its
            # replicas, on nodes that are alive, while the load runs on.
            victim = _model_replica_nodes()[0]
            timeline.mark("node_lost")
            lost_at = time.monotonic()
            assert cluster.lose_node(victim) > 0, "no process of the node to lose"
            wait_until(
                lambda: (
                    victim not in _model_replica_nodes()
                    and len(_model_replica_nodes()) == MAX_MODEL_REPLICAS
                    and timeline.latest()["model_replicas"] == MAX_MODEL_REPLICAS
                ),
                180,
                f"the Model's replicas back on live nodes ({timeline.latest()})",
                every_s=0.5,
            )
            recovered_s = time.monotonic() - lost_at
            timeline.mark("node_recovered")
            answered = len(answers)
            wait_until(
                lambda: len(answers) >= answered + 50, 120, "load after the node loss", every_s=0.5
            )
        finally:
            stop.set()
            driver.join(120)
        timeline.mark("load_end")

        # 4. Both scale back under a trickle of requests (one at a time, 4 a second), which must
        # lose nothing: the default Model to its one replica, the second to zero, and the
        # autoscaler removes every GPU node but the default Model's.
        under_load = len(answers)
        trickle_stop = threading.Event()
        trickle = threading.Thread(
            target=lambda: asyncio.run(load(1, 37, trickle_stop, 0.25)), daemon=True
        )
        trickle.start()
        try:
            wait_until(
                lambda: timeline.at(model_replicas=1, second_replicas=0, gpu_nodes=1),
                240,
                f"replicas and GPU nodes to scale back ({timeline.latest()})",
                every_s=0.5,
            )
        finally:
            trickle_stop.set()
            trickle.join(120)
        timeline.mark("scaled_in")
        trickled = len(answers) - under_load
    finally:
        timeline.stop()
        TIMELINE.parent.mkdir(parents=True, exist_ok=True)
        TIMELINE.write_text(
            json.dumps(
                {"points": timeline.points, "marks": timeline.marks, "requests": len(answers)},
                indent=1,
            )
        )

    failed = [a for a in answers if a[0] != 200]
    assert answers and failed == [], (
        f"{len(failed)} of {len(answers)} requests failed or were mis-joined"
    )
    assert trickled >= 10, f"only {trickled} requests trickled in while replicas scaled in"
    assert timeline.most("model_replicas") == MAX_MODEL_REPLICAS
    assert timeline.most("second_replicas") == 1
    print(
        f"cold start onto a new (fake) GPU node: {cold_s:.1f} s; a lost node's Model replica "
        f"back on a live node {recovered_s:.1f} s after the loss; {trickled} requests during "
        f"the scale-in; marks {timeline.marks}"
    )
