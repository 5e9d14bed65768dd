"""One request, one model version, without Ray: while a rollout runs, a request's bundles can meet
old and new Model replicas; the caller sends the items of the minority version again, and answers
503 for any it cannot bring to one version, so no answer mixes versions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from deployments.flow.caller import Caller
from deployments.items import Item, ItemError, Options, Result
from tests import settings
from tests.unit.test_poison import Response, _result


class RollingGraph:
    """The three stages at once; each bundle is answered by one replica, whose version is the
    next of `versions` (the last one repeats), as replicas of a rollout are picked per call."""

    def __init__(self, versions: Sequence[str]) -> None:
        self._versions: Iterator[str] = iter(versions)
        self._last = versions[-1]
        self.calls: list[tuple[str, int]] = []  # (version, items) per bundle

    def options(self, **_: Any) -> RollingGraph:
        return self

    def remote(self, *args: Any) -> Response:
        if len(args) < 3:
            return Response(args[0])
        items: Sequence[Item] = args[1].value
        version = next(self._versions, self._last)
        self.calls.append((version, len(items)))
        return Response(tuple(replace(_result(i), model_version=version) for i in items))


def _run(graph: RollingGraph, images: int) -> list[Result | ItemError]:
    caller = Caller(
        graph,  # type: ignore[arg-type]
        settings.catalogue({("", ""): graph}),
        graph,  # type: ignore[arg-type]
        settings.bundles(max_items=4),
        settings.poison(quarantine_ttl_s=600, max_quarantined=100),
    )
    items = [Item(f"id-{i}", "req", f"img{i}".encode(), Options()) for i in range(images)]
    return asyncio.run(caller.many(items))


def _versions(answers: Sequence[Result | ItemError]) -> list[str]:
    return [a.model_version if isinstance(a, Result) else a.code for a in answers]


def test_one_version_throughout_sends_nothing_again() -> None:
    graph = RollingGraph(["1"])
    answers = _run(graph, 8)
    assert _versions(answers) == ["1"] * 8
    assert graph.calls == [("1", 4), ("1", 4)]


def test_the_minority_versions_items_are_sent_again_until_all_agree() -> None:
    # 12 images in three bundles: the old replica answers two of them, the new one the third;
    # the third's four are sent again and meet the old replica too.
    graph = RollingGraph(["1", "1", "2", "1"])
    answers = _run(graph, 12)
    assert _versions(answers) == ["1"] * 12
    assert graph.calls == [("1", 4), ("1", 4), ("2", 4), ("1", 4)]
    assert [a.image.format for a in answers] == [f"img{i}" for i in range(12)]  # type: ignore[union-attr]


def test_a_tie_keeps_the_higher_version() -> None:
    graph = RollingGraph(["1", "2", "2"])
    answers = _run(graph, 8)
    assert _versions(answers) == ["2"] * 8
    assert graph.calls == [("1", 4), ("2", 4), ("2", 4)]


def test_items_that_never_agree_get_503_and_no_answer_mixes_versions() -> None:
    # The first bundle meets a new replica, the next two old ones: the request keeps "1" (two
    # bundles to one), and the new bundle's items, sent again three times, meet "2" each time.
    graph = RollingGraph(["2", "1", "1", "2", "2", "2"])
    answers = _run(graph, 12)
    assert _versions(answers) == ["overloaded"] * 4 + ["1"] * 8
    assert len(graph.calls) == 3 + 3
    assert "version changed" in answers[0].message  # type: ignore[union-attr]
