"""Poison inputs without Ray: the quarantine, and the caller's retry policy over a fake graph in
which some bytes kill whichever replica holds them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from ray.exceptions import RayActorError

from deployments.flow.caller import Caller
from deployments.flow.poison import Quarantine, Retries, content_hash
from deployments.items import ImageInfo, Item, ItemError, Options, Result
from deployments.settings import Bundles
from tests import settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quarantine_refuses_until_the_ttl_passes() -> None:
    clock = Clock()
    quarantine = Quarantine(ttl_s=600, max_entries=10, clock=clock)
    digest = content_hash(b"poison")
    assert quarantine.refused_for(digest) is None
    quarantine.add(digest)
    clock.now += 100
    assert quarantine.refused_for(digest) == pytest.approx(500)
    clock.now += 500
    assert quarantine.refused_for(digest) is None and len(quarantine) == 0


def test_quarantine_is_bounded_and_forgets_the_oldest_first() -> None:
    clock = Clock()
    quarantine = Quarantine(ttl_s=600, max_entries=3, clock=clock)
    for n in range(5):
        clock.now += 1
        quarantine.add(str(n))
    assert len(quarantine) == 3
    assert [quarantine.refused_for(str(n)) is not None for n in range(5)] == [0, 0, 1, 1, 1]
    quarantine.add("2")  # seen again: refused for a full ttl from now, and youngest
    quarantine.add("5")
    assert quarantine.refused_for("3") is None and quarantine.refused_for("2") is not None


def test_retries_stop_for_good() -> None:
    retries = Retries()
    assert retries.allow()
    retries.stop()
    assert not retries.allow()


class Response:
    """Stands in for a `DeploymentResponse`: awaitable once, cancellable."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def cancel(self) -> None:
        pass

    async def _to_object_ref(self) -> Response:
        return self  # the fake's stand-in for the reference handed to the later calls

    def __await__(self) -> Any:
        return self.value.__await__() if asyncio.iscoroutine(self.value) else _done(self.value)


def _done(value: Any) -> Any:
    async def done() -> Any:
        return value

    return done().__await__()


class FakeGraph:
    """Preprocessor, Model and Postprocessor at once: a call dies (as a replica would) when it
    holds any `poison` bytes; otherwise every item gets a `Result` named after its bytes."""

    def __init__(self, poison: set[bytes]) -> None:
        self.poison = poison
        self.calls: list[list[bytes]] = []
        self.deaths = 0
        self.in_flight = 0
        self.most_in_flight_after_a_death = 0

    def options(self, **_: Any) -> FakeGraph:
        return self

    def remote(self, *args: Any) -> Response:
        if len(args) < 3:  # Preprocessor or Model: pass the items along
            return Response(args[0])
        items: Sequence[Item] = args[1].value
        return Response(self._post(list(items)))

    async def _post(self, items: list[Item]) -> tuple[Result, ...]:
        self.calls.append([i.data for i in items])
        self.in_flight += 1
        if self.deaths:
            self.most_in_flight_after_a_death = max(
                self.most_in_flight_after_a_death, self.in_flight
            )
        try:
            await asyncio.sleep(0.01)  # the time a stage holds a bundle, so calls overlap
            if any(i.data in self.poison for i in items):
                self.deaths += 1
                raise RayActorError()
            return tuple(_result(i) for i in items)
        finally:
            self.in_flight -= 1


def _result(item: Item) -> Result:
    return Result(
        request_id=item.request_id,
        item_id=item.item_id,
        model="fake",
        task="classification",
        image=ImageInfo(1, 1, item.data.decode()),
        predictions=(),
        batch_size=1,
    )


def _items(names: list[str]) -> list[Item]:
    return [Item(f"id-{n}-{i}", "req", n.encode(), Options()) for i, n in enumerate(names)]


def _caller(graph: FakeGraph, bundles: Bundles | None = None) -> Caller:
    return Caller(
        graph,  # type: ignore[arg-type]
        settings.catalogue({("", ""): graph}),
        graph,  # type: ignore[arg-type]
        bundles or settings.bundles(),
        settings.poison(quarantine_ttl_s=600, max_quarantined=100),
    )


def _codes(answers: Sequence[Result | ItemError]) -> list[str]:
    return [a.code if isinstance(a, ItemError) else a.image.format for a in answers]


def test_a_poison_input_kills_two_then_is_refused_and_its_neighbours_are_answered() -> None:
    graph = FakeGraph(poison={b"bad"})
    caller = _caller(graph)

    async def scenario() -> tuple[list[Result | ItemError], list[Result | ItemError]]:
        first = await caller.many(_items(["a", "b", "c", "bad"]))
        again = await caller.many(_items(["bad", "d"]))
        return first, again

    first, again = asyncio.run(scenario())
    assert _codes(first) == ["a", "b", "c", "overloaded"]
    assert "refused for 600 s" in first[3].message  # type: ignore[union-attr]
    assert graph.deaths == 2
    assert _codes(again) == ["poison_image", "d"]
    assert graph.deaths == 2, "the quarantined image reached a replica again"
    assert "crashed the service twice" in again[0].message  # type: ignore[union-attr]


def test_a_request_full_of_poison_stops_retrying_after_its_first_double_failure() -> None:
    poison = [f"bad{n}" for n in range(64)]
    graph = FakeGraph(poison={p.encode() for p in poison})
    answers = asyncio.run(_caller(graph).many(_items(poison)))
    assert set(_codes(answers)) == {"overloaded"}
    # 8 bundles of 8 die once each; one solo retry dies; the other 63 are not retried.
    assert graph.deaths == 8 + 1
    skipped = [a for a in answers if "was not retried" in a.message]  # type: ignore[union-attr]
    assert len(skipped) == 63


def test_solo_retries_run_one_at_a_time_so_a_poison_dies_alone() -> None:
    graph = FakeGraph(poison={b"bad"})
    # One bundle in flight: "x" goes alone, the next three wait for it and travel together.
    caller = _caller(graph, settings.bundles(max_items=8, max_in_flight=1, max_wait_s=1.0))

    async def scenario() -> list[Result | ItemError]:
        return list(await asyncio.gather(*(caller.one(i) for i in _items(["x", "bad", "a", "b"]))))

    answers = asyncio.run(scenario())
    # Coalesced single images are separate requests: each is retried, the poison alone dies.
    assert _codes(answers) == ["x", "overloaded", "a", "b"]
    assert graph.calls[:2] == [[b"x"], [b"bad", b"a", b"b"]]
    assert sorted(graph.calls[2:]) == [[b"a"], [b"b"], [b"bad"]]
    assert graph.deaths == 2
    assert graph.most_in_flight_after_a_death == 1, "solo retries overlapped"


def test_in_one_request_the_items_after_a_double_failure_are_not_retried() -> None:
    graph = FakeGraph(poison={b"bad"})
    answers = asyncio.run(_caller(graph).many(_items(["a", "bad", "b"])))
    # Retried in input order: "a" is answered, "bad" dies alone, "b" is not risked.
    assert _codes(answers) == ["a", "overloaded", "overloaded"]
    assert "was not retried" in answers[2].message  # type: ignore[union-attr]
    assert graph.deaths == 2
