"""Overload and deadlines: a burst far past capacity ends in 200, 503 or 504 for every request,
503s come back at once with Retry-After, deadlines give 504, and expired items never reach the
forward pass."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import numpy as np
import ray

from tests import images
from tests.fixtures.models import CONTROLLED_ECHO, GATE_NAMESPACE, Gate, colour_in
from tests.serving import BASE_URL, GRPC_ADDRESS, ONE_MODEL, app_config, deploy, wait_until

# Long enough that a 503 which waited for the deadline instead of shedding is told apart from a
# prompt one by a bound a loaded 2-core machine always meets.
TIMEOUT_S = 10.0
T = TypeVar("T")


def _small_queues() -> dict[str, Any]:
    single = {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 4}
    return app_config(
        model=CONTROLLED_ECHO,  # test_faults deploys it next: it keeps these replicas
        user_configs={"Model": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}},
        options={
            # The Ingress keeps serve_config.yaml's queue: on the HAProxy edge its replicas read
            # max_queued_requests once, at start (Serve 2.58 updates it in place only for callers),
            # so a small one here would outlive this module in test_faults.
            "Ingress": {"autoscaling_config": single},
            "Preprocessor": {
                "max_ongoing_requests": 4,
                "max_queued_requests": 4,
                "autoscaling_config": single,
            },
            "Model": {
                "max_ongoing_requests": 4,
                "max_queued_requests": 4,
                "autoscaling_config": single,
            },
            "Postprocessor": {"autoscaling_config": single},
        },
    )


async def _burst(bodies: list[bytes], timeout_s: float) -> list[tuple[httpx.Response, float]]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=60, limits=limits) as client:

        async def one(body: bytes) -> tuple[httpx.Response, float]:
            start = time.monotonic()
            r = await client.post(
                "/v1/predict",
                content=body,
                headers={"content-type": "image/png", "x-request-timeout-seconds": str(timeout_s)},
            )
            return r, time.monotonic() - start

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def _server_ms(response: httpx.Response) -> float:
    return float(response.headers["server-timing"].split("dur=")[1])


def test_a_burst_ten_times_capacity_ends_in_200_503_or_504(echo_control: Any) -> None:
    # Capacity: 4 + 4 queued at the Preprocessor, 4 + 4 queued at the Model: 16 items.
    deploy(_small_queues())
    ray.get(echo_control.set.remote(delay_s=0.1))
    colours = images.distinct_colours(160, seed=11)
    results = asyncio.run(_burst([images.solid_png(c, 32, 32) for c in colours], TIMEOUT_S))
    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 503, 504}, sorted(set(statuses))
    assert statuses.count(503) > 0, "nothing was shed: the burst did not exceed capacity"
    assert statuses.count(200) > 0
    for (r, seconds), colour in zip(results, colours, strict=True):
        if r.status_code == 200:
            assert colour_in(r.json()["predictions"]) == colour, "mis-joined"
        elif r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert seconds < TIMEOUT_S / 2, (
                f"a 503 took {seconds:.2f} s: it waited instead of shedding"
            )
        else:
            assert r.json()["error"]["code"] == "deadline_exceeded"


def _late_while_held(
    echo_control: Any, held: tuple[int, int, int], late_call: Callable[[], T]
) -> tuple[httpx.Response, T, list[tuple[int, ...]]]:
    """Hold the model on a first image (`held`), make `late_call` while it is held, then open it.
    Returns the first answer, what `late_call` returned, and every colour the model ran on."""
    gate_name = f"gate-{uuid.uuid4().hex[:8]}"
    gate = Gate.options(name=gate_name, namespace=GATE_NAMESPACE, lifetime="detached").remote()
    try:
        deploy(_small_queues())
        ray.get(echo_control.set.remote(gate=gate_name))

        async def scenario() -> tuple[httpx.Response, T]:
            async with httpx.AsyncClient(base_url=BASE_URL, timeout=60) as client:
                first = asyncio.create_task(
                    client.post(
                        "/v1/predict",
                        content=images.solid_png(held),
                        headers={"content-type": "image/png"},
                    )
                )
                await asyncio.to_thread(
                    wait_until, lambda: ray.get(gate.seen.remote()), 60, "the first batch"
                )
                late = await asyncio.to_thread(late_call)
                ray.get(gate.open.remote())
                return await first, late

        first, late = asyncio.run(scenario())
        seen = [tuple(c) for _, batch in ray.get(gate.seen.remote()) for c in batch]
        return first, late, seen
    finally:
        ray.kill(gate)


def test_deadline_gives_504_and_expired_items_never_reach_the_model(echo_control: Any) -> None:
    held, late = (10, 20, 30), (200, 100, 50)
    first, second, seen = _late_while_held(
        echo_control,
        held,
        lambda: httpx.post(
            f"{BASE_URL}/v1/predict",
            content=images.solid_png(late),
            headers={"content-type": "image/png", "x-request-timeout-seconds": "1"},
            timeout=60,
        ),
    )
    assert second.status_code == 504 and second.json()["error"]["code"] == "deadline_exceeded"
    # The fault this catches is a 504 held until the gated batch opens (60 s), not a late tick.
    assert _server_ms(second) < 10_000, "the 504 waited for the held batch, not its deadline"
    assert first.status_code == 200 and colour_in(first.json()["predictions"]) == held
    # Once the gate opened the model ran again, but never on the expired image.
    assert held in seen and late not in seen


def test_the_rpc_deadline_bounds_a_grpc_infer_and_its_item_never_reaches_the_model(
    echo_control: Any,
) -> None:
    """gRPC's own deadline (`client_timeout`), not the configured 30 s default, bounds the
    request: the service answers DEADLINE_EXCEEDED itself, before the client would give up, and
    the expired image is dropped unseen once the model runs again."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    held, late = (11, 22, 33), (210, 110, 55)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([images.solid_png(late)], dtype=np.object_))
    client = grpcclient.InferenceServerClient(GRPC_ADDRESS)

    def infer() -> InferenceServerException | None:
        try:
            client.infer(ONE_MODEL, [tensor], client_timeout=8.0)
        except InferenceServerException as exc:
            return exc
        return None

    try:
        first, error, seen = _late_while_held(echo_control, held, infer)
    finally:
        client.close()
    assert error is not None, "the gRPC infer was answered although the model was held"
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED", error
    # The service's own answer (its message), not the client's timer running out: the fault is
    # the configured 30 s default bounding the call instead.
    assert "deadline passed" in str(error.message()), error
    assert first.status_code == 200 and colour_in(first.json()["predictions"]) == held
    assert held in seen and late not in seen


def test_bad_timeout_header_is_400() -> None:
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=images.solid_png((1, 2, 3)),
        headers={"content-type": "image/png", "x-request-timeout-seconds": "soon"},
    )
    assert r.status_code == 400 and "x-request-timeout-seconds" in r.json()["error"]["message"]
