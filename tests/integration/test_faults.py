"""Faults under load: a replica killed while it holds a batch, a batch-wide out-of-memory error,
and a replica stopped while it holds a batch. Clients see the right answer, or a clear 503.

Every test deploys `CONTROLLED_ECHO` (as test_overload does before it) and sets the fault through
its `Control` actor, so no test restarts the app's replicas to change the model's behaviour."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from deployments.transports import handle_retry
from tests import images
from tests.fixtures.models import CONTROLLED_ECHO, GATE_NAMESPACE, Gate, colour_in
from tests.serving import (
    app_config,
    deploy,
    fixed_replicas,
    post_many,
    replica_names,
    wait_replaced,
    wait_until,
)

# For a stage whose replica a test kills: Serve notices the death at its next health check and
# only then replaces the replica (`wait_replaced`); a change of period reconfigures, no restart.
NOTICED_AT_ONCE = {"health_check_period_s": 1}


def _correct(response: httpx.Response, colour: tuple[int, int, int]) -> bool:
    """A 200 whose answer names `colour`: every image sent in one test has its own colour."""
    return response.status_code == 200 and colour_in(response.json()["predictions"]) == colour


class Background:
    """Send requests from a thread so the test can act while they are in flight."""

    def __init__(self, bodies: list[bytes], content_type: str = "image/png") -> None:
        self.responses: list[httpx.Response] = []
        self._thread = threading.Thread(target=self._run, args=(bodies, content_type))
        self._thread.start()

    def _run(self, bodies: list[bytes], content_type: str) -> None:
        self.responses = asyncio.run(post_many(bodies, content_type=content_type))

    def join(self, timeout_s: float = 120) -> list[httpx.Response]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "requests hung"
        return self.responses


@pytest.fixture
def gate() -> Iterator[tuple[str, Any]]:
    name = f"gate-{uuid.uuid4().hex[:8]}"
    handle = Gate.options(name=name, namespace=GATE_NAMESPACE, lifetime="detached").remote()
    try:
        yield name, handle
    finally:
        ray.get(handle.open.remote())
        ray.kill(handle)


def test_batch_wide_out_of_memory_is_retried_in_smaller_batches(echo_control: Any) -> None:
    deploy(
        app_config(
            model=CONTROLLED_ECHO,
            options={"Model": fixed_replicas(1)},  # the batches under test form in one replica
            user_configs={"Model": {"max_batch_size": 8, "batch_wait_timeout_s": 1.0}},
        )
    )
    ray.get(echo_control.set.remote(oom_above=2))
    colours = images.distinct_colours(8, seed=1)
    responses = asyncio.run(
        post_many([images.solid_png(c) for c in colours], content_type="image/png")
    )
    assert all(_correct(r, c) for r, c in zip(responses, colours, strict=True))
    assert max(r.json()["batch_size"] for r in responses) <= 2


def test_batches_fill_while_the_model_is_busy_even_with_a_short_wait(echo_control: Any) -> None:
    # Serve forms its next batch during the current forward pass from whatever arrived within
    # `batch_wait_timeout_s`; the Model must still run full batches of what queued meanwhile.
    deploy(
        app_config(
            model=CONTROLLED_ECHO,
            options={"Model": fixed_replicas(1)},  # the batches under test form in one replica
            user_configs={"Model": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005}},
        )
    )
    ray.get(echo_control.set.remote(delay_s=0.15))
    colours = images.distinct_colours(64, seed=4)
    responses = asyncio.run(
        post_many([images.solid_png(c) for c in colours], content_type="image/png")
    )
    pairs = zip(responses, colours, strict=True)
    wrong = [(r.status_code, r.text[:200]) for r, c in pairs if not _correct(r, c)]
    assert not wrong, wrong
    sizes = [r.json()["batch_size"] for r in responses]
    assert max(sizes) == 8
    assert sum(sizes) / len(sizes) >= 0.9 * 8, sorted(sizes)


def test_model_replica_killed_holding_a_batch_its_items_are_retried(
    gate: tuple[str, Any], echo_control: Any
) -> None:
    name, handle = gate
    deploy(
        app_config(
            model=CONTROLLED_ECHO,
            options={"Model": {**fixed_replicas(2), **NOTICED_AT_ONCE}},
            user_configs={"Model": {"max_batch_size": 4, "batch_wait_timeout_s": 0.2}},
        )
    )
    ray.get(echo_control.set.remote(gate=name))
    colours = images.distinct_colours(8, seed=2)
    load = Background([images.solid_png(c) for c in colours])
    entries = wait_until(
        lambda: ray.get(handle.seen.remote()), 60, "a batch to enter a forward pass"
    )
    victim, held = entries[0]
    # The gate is shut, so the victim is still inside the forward pass with these images.
    held_colours = {(r, g, b) for r, g, b in held}
    assert held_colours and held_colours <= set(colours), held
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)  # mid-forward-pass
    ray.get(handle.open.remote())
    responses = load.join()
    for response, colour in zip(responses, colours, strict=True):
        if colour in held_colours:
            assert _correct(response, colour), ("a held item was not retried", response.text)
        elif response.status_code == 503:  # allowed only with a clear message
            assert response.json()["error"]["code"] == "overloaded"
            assert response.headers["retry-after"]
        else:
            assert _correct(response, colour), (response.status_code, response.text)
    # ... and each of them went through a forward pass again, on a replica that is not the victim.
    after = ray.get(handle.seen.remote())
    again = {(r, g, b) for replica, batch in after if replica != victim for r, g, b in batch}
    assert held_colours <= again, (held_colours, again)
    wait_replaced("Model", victim, 2)


def test_preprocessor_replica_killed_under_load() -> None:
    deploy(
        app_config(
            model=CONTROLLED_ECHO,
            options={"Preprocessor": {**fixed_replicas(2), **NOTICED_AT_ONCE}},
        )
    )
    colours = images.distinct_colours(48, seed=3)
    bodies = [images.solid_png(c, 1600, 1200) for c in colours]  # big enough to keep decoders busy
    load = Background(bodies)
    names = sorted(replica_names("Preprocessor"))
    assert len(names) == 2
    victim = ray.get_actor(names[0], namespace="serve")
    # Killed only once it holds requests (Serve's own per-replica count), so the kill hits work.
    wait_until(
        lambda: ray.get(victim.get_num_ongoing_requests.remote()) >= 2,
        60,
        "the Preprocessor replica to hold requests",
        every_s=0.02,
    )
    ray.kill(victim, no_restart=True)
    responses = load.join()
    ok = 0
    for response, colour in zip(responses, colours, strict=True):
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded"
        else:
            assert _correct(response, colour), (response.status_code, response.text)
            ok += 1
    assert ok >= len(colours) - 2, f"only {ok} of {len(colours)} succeeded"
    wait_replaced("Preprocessor", names[0], 2)


def _ingress_replicas() -> list[tuple[str, Any]]:
    return [(n, ray.get_actor(n, namespace="serve")) for n in sorted(replica_names("Ingress"))]


def test_an_ingress_replica_sigkilled_holding_requests_and_calls_loses_none(
    gate: tuple[str, Any], echo_control: Any
) -> None:
    """HTTP: serve.env's retry policy and scripts/haproxy-edge's body buffering make HAProxy send
    a request whose Ingress replica died to the other one. Handle calls: `handle_retry.call`
    sends them again, with their request ids."""
    name, handle = gate
    deploy(
        app_config(
            model=CONTROLLED_ECHO,
            options={"Ingress": {**fixed_replicas(2), **NOTICED_AT_ONCE}},
            user_configs={"Model": {"max_batch_size": 4, "batch_wait_timeout_s": 0.2}},
        )
    )
    ray.get(echo_control.set.remote(gate=name))  # every call stays inside the graph until opened
    ingresses = _ingress_replicas()
    assert len(ingresses) == 2

    def holding() -> list[int]:
        return ray.get([r.get_num_ongoing_requests.remote() for _, r in ingresses])

    colours = images.distinct_colours(22, seed=5)
    app = serve.get_app_handle("vision")
    with ThreadPoolExecutor(6) as pool:
        calls = [
            pool.submit(
                handle_retry.call,
                app,
                "predict",
                images.solid_png(c),
                request_id=f"handle-{i}",
                timeout_s=90,
            )
            for i, c in enumerate(colours[:6])
        ]

        def all_calls_held() -> list[int] | None:
            counts = holding()
            return counts if sum(counts) >= 6 else None

        # The victim is a replica that holds handle calls (the handle may not know the second
        # replica yet, and send them all to one) ...
        before = wait_until(all_calls_held, 60, "the Ingress replicas to hold the calls", 0.05)
        v = 0 if before[0] >= before[1] else 1
        victim_name, victim = ingresses[v]
        held = Background([images.solid_png(c) for c in colours[6:14]])

        def victim_holds_requests_too() -> bool:
            counts = holding()
            return counts[v] > before[v] and sum(counts) >= 14

        # ... and HTTP requests (HAProxy balances them by its own connections: 4 and 4).
        wait_until(victim_holds_requests_too, 60, "the victim to hold HTTP requests", 0.05)
        pid = ray.get(victim.__ray_call__.remote(lambda _: os.getpid()))
        os.kill(pid, signal.SIGKILL)  # it holds handle calls and HTTP requests
        # Sent while HAProxy may still list the dead replica: refused connections are resent too.
        after = Background([images.solid_png(c) for c in colours[14:]])
        ray.get(handle.open.remote())
        results = [c.result(timeout=120) for c in calls]
    for i, (result, colour) in enumerate(zip(results, colours[:6], strict=True)):
        assert result.request_id == f"handle-{i}", "a resent call keeps its request id"
        assert colour_in(result.to_dict()["predictions"]) == colour
    responses = held.join() + after.join()
    wrong = [
        (c, r.status_code, r.text[:200])
        for r, c in zip(responses, colours[6:], strict=True)
        if not _correct(r, c)
    ]
    assert not wrong, wrong
    wait_replaced("Ingress", victim_name, 2)


def test_stopping_a_replica_drains_the_batch_it_holds(
    gate: tuple[str, Any], echo_control: Any
) -> None:
    name, handle = gate
    deploy(
        app_config(
            model=CONTROLLED_ECHO,
            user_configs={"Model": {"max_batch_size": 4, "batch_wait_timeout_s": 0.2}},
        )
    )
    ray.get(echo_control.set.remote(gate=name))
    colours = images.distinct_colours(3, seed=4)
    load = Background([images.solid_png(c) for c in colours])
    entries = wait_until(
        lambda: ray.get(handle.seen.remote()), 60, "a batch to enter a forward pass"
    )
    held = {(r, g, b) for _, batch in entries for r, g, b in batch}
    assert held and held <= set(colours), entries  # the gate holds them in the forward pass
    serve.delete("vision", _blocking=False)  # graceful: replicas finish what they hold first
    ray.get(handle.open.remote())
    responses = load.join()
    assert all(_correct(r, c) for r, c in zip(responses, colours, strict=True))
