"""The statistics every replica keeps (`tally.Tally`), brought together in one place.

Counts are born in two deployments: the Ingress knows what each image's client got (success or
fail, and the stage timings its `Result` carries), the Model knows its forward passes. Both may
run several replicas, and a stats request reaches only one Ingress replica, so no replica's own
counts are the answer. Each replica sends its whole tally (cumulative, so a lost or repeated send
changes nothing) to one small actor per application, `StatsBoard`, at most every
`PUSH_EVERY_S` and only when something changed: nothing is sent per request. The Ingress
that answers a stats request sends its own first, then asks the board for the sum.

The board is a named, detached Ray actor (no CPU, on the head node) that the first replica to
report creates. It outlives redeploys, so counts run from its start, as Triton's run from the
server's; a replica that stops takes at most its last `PUSH_EVERY_S` of counts with it. If the
board is lost it is created again, and every live replica's next send restores its whole tally.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import ray

from deployments.flow.caller import Caller
from deployments.flow.tally import Counts, ModelKey, Tally, merged
from deployments.items import Item, ItemError, Result

logger = logging.getLogger("ray.serve")
PUSH_EVERY_S = 0.5
HEAD_NODE = "node:__internal_head__"  # the resource only the head node has
BOARD_PREFIX = "oip-stats-"

__all__ = ["PUSH_EVERY_S", "CountedCaller", "Reporter", "StatsBoard"]


class StatsBoard:
    """Every replica's latest tally; the sums on request."""

    def __init__(self) -> None:
        self._snapshots: dict[str, dict[ModelKey, dict[str, Any]]] = {}

    def report(self, replica: str, snapshot: dict[ModelKey, dict[str, Any]]) -> None:
        self._snapshots[replica] = snapshot

    def totals(self) -> dict[ModelKey, dict[str, Any]]:
        """By served model and version, the sum over every replica that reported."""
        return {key: c.as_data() for key, c in merged(self._snapshots.values()).items()}


_BoardActor: Any = ray.remote(StatsBoard)


class Reporter:
    """Sends one replica's `Tally` to its application's board, in the background."""

    def __init__(self, tally: Tally, app: str, replica: str) -> None:
        self._tally = tally
        self._name = BOARD_PREFIX + app
        self._replica = replica
        self._board: Any = None
        self._sent = 0  # the tally's version last sent
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sending (idempotent; needs the replica's event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self._found()  # at once: the first replica's creates it, which takes a while
                await self.push()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                if not failing:  # once per outage, not twice a second
                    logger.warning("statistics not sent to %s (retrying): %r", self._name, exc)
                failing = True
                self._board = None  # found again (or created) next time
            else:
                failing = False
            await asyncio.sleep(PUSH_EVERY_S)

    async def push(self) -> None:
        """Send the tally if it changed since the last send."""
        version = self._tally.version
        if version == self._sent:
            return
        board = await self._found()
        await board.report.remote(self._replica, self._tally.snapshot())
        self._sent = version

    async def totals(self) -> dict[ModelKey, Counts]:
        """Every replica's counts summed, by served model and version (this replica's sent
        first)."""
        try:
            await self.push()
            data = await (await self._found()).totals.remote()
        except Exception:
            self._board = None
            raise
        return {key: Counts.from_data(d) for key, d in data.items()}

    async def _found(self) -> Any:
        if self._board is None:
            # Creating or finding a named actor blocks on the cluster's control store.
            self._board = await asyncio.to_thread(self._get_or_create)
        return self._board

    def _get_or_create(self) -> Any:
        return _BoardActor.options(
            name=self._name,
            namespace=ray.get_runtime_context().namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            # On the head node, as Ray's own state actors are: a live actor keeps its node from
            # scaling in, so anywhere else it would pin an autoscaled (GPU) node for good.
            resources={HEAD_NODE: 0.001},
            max_restarts=-1,
        ).remote()


class CountedCaller(Caller):
    """The `Caller`, counting every image it answers into the Ingress replica's `Tally`."""

    def __init__(
        self, *args: Any, tally: Tally, reporter: Reporter | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._tally = tally
        self._reporter = reporter

    async def one(self, item: Item, trace: str | None = None) -> Result | ItemError:
        started = time.perf_counter()
        answer = await super().one(item, trace)
        self._count(item, [answer], started)
        return answer

    async def many(
        self, items: Sequence[Item | ItemError], trace: str | None = None
    ) -> list[Result | ItemError]:
        started = time.perf_counter()
        answers = await super().many(items, trace)
        first = next((i for i in items if isinstance(i, Item)), None)
        if first is not None:  # one request is one model version's
            self._count(first, answers, started)
        return answers

    def _count(self, item: Item, answers: Sequence[Result | ItemError], started: float) -> None:
        """Counted under the version the request was sent to."""
        if not item.model:
            return  # a one-model graph's own tests send items of no name
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self._tally.answered((item.model, item.version), answers, elapsed_ms)
        if self._reporter is not None:
            self._reporter.start()
