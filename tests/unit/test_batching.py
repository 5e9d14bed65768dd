"""The grouping policy, without Ray: bundles at the Ingress, forward passes in the Model."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from deployments.flow.batching import Coalescer, ForwardQueue, chunks


class Downstream:
    """A stand-in for the graph: records each bundle and holds it until the test releases it."""

    def __init__(self) -> None:
        self.bundles: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.cancelled: list[list[int]] = []

    async def send(self, items: list[int]) -> list[str]:
        self.bundles.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(list(items))
            raise
        return [f"answer-{i}" for i in items]

    def release(self, index: int) -> None:
        self.gates[index].set()


async def settle() -> None:
    for _ in range(5):  # let scheduled tasks and callbacks run; nothing here waits on time
        await asyncio.sleep(0)


def test_chunks_keep_order_and_cap_size() -> None:
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunks([], 3) == []


def test_a_lone_item_goes_at_once() -> None:
    async def scenario() -> None:
        down = Downstream()
        coalescer = Coalescer(down.send, max_items=8, max_in_flight=2, max_wait_s=60)
        task = asyncio.create_task(coalescer.submit(1))
        await settle()
        assert down.bundles == [[1]]  # sent without waiting for company
        down.release(0)
        assert await task == "answer-1"
        assert coalescer.in_flight == 0

    asyncio.run(scenario())


def test_items_coalesce_while_bundles_are_in_flight_and_each_gets_its_own_answer() -> None:
    async def scenario() -> None:
        down = Downstream()
        coalescer = Coalescer(down.send, max_items=4, max_in_flight=2, max_wait_s=60)
        tasks = [asyncio.create_task(coalescer.submit(i)) for i in range(11)]
        await settle()
        # Two slots: 0 and 1 go alone; 2..5 fill a bundle, which always goes; 6..9 too.
        assert down.bundles == [[0], [1], [2, 3, 4, 5], [6, 7, 8, 9]]
        assert coalescer.queued == 1  # 10 waits: four bundles are out, full ones count too
        for i in range(3):
            down.release(i)
            await settle()
            assert down.bundles[-1] == ([10] if i == 2 else [6, 7, 8, 9])
        for i in range(3, 5):
            down.release(i)
        answers = await asyncio.gather(*tasks)
        assert answers == [f"answer-{i}" for i in range(11)]

    asyncio.run(scenario())


def test_a_failed_bundle_fails_only_its_own_callers() -> None:
    async def scenario() -> None:
        async def send(items: list[int]) -> Sequence[str]:
            await asyncio.sleep(0)
            if 3 in items:
                raise RuntimeError("bundle with 3 broke")
            return [str(i) for i in items]

        coalescer = Coalescer(send, max_items=2, max_in_flight=1, max_wait_s=60)
        results = await asyncio.gather(
            *(coalescer.submit(i) for i in range(5)), return_exceptions=True
        )
        failed = [i for i, r in enumerate(results) if isinstance(r, RuntimeError)]
        assert 3 in failed and len(failed) <= 2  # 3 and at most its one bundle neighbour
        assert all(results[i] == str(i) for i in range(5) if i not in failed)

    asyncio.run(scenario())


def test_a_caller_that_gives_up_while_queued_is_never_sent() -> None:
    async def scenario() -> None:
        down = Downstream()
        coalescer = Coalescer(down.send, max_items=8, max_in_flight=1, max_wait_s=60)
        first = asyncio.create_task(coalescer.submit(1))
        await settle()
        quitter = asyncio.create_task(coalescer.submit(2))
        stayer = asyncio.create_task(coalescer.submit(3))
        await settle()
        quitter.cancel()
        await settle()
        down.release(0)
        await settle()
        assert down.bundles == [[1], [3]]
        down.release(1)
        assert (await first, await stayer) == ("answer-1", "answer-3")

    asyncio.run(scenario())


def test_a_bundle_whose_callers_all_gave_up_is_cancelled() -> None:
    async def scenario() -> None:
        down = Downstream()
        coalescer = Coalescer(down.send, max_items=8, max_in_flight=1, max_wait_s=60)
        blocker = asyncio.create_task(coalescer.submit(0))
        await settle()
        tasks = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2)]
        await settle()
        down.release(0)
        await blocker
        await settle()
        assert down.bundles == [[0], [1, 2]]
        tasks[0].cancel()
        await settle()
        assert down.cancelled == []  # one caller still waits for it
        tasks[1].cancel()
        await settle()
        assert down.cancelled == [[1, 2]]
        assert coalescer.in_flight == 0

    asyncio.run(scenario())


def test_a_waiting_item_goes_after_max_wait_even_with_no_free_slot() -> None:
    async def scenario() -> None:
        down = Downstream()
        coalescer = Coalescer(down.send, max_items=8, max_in_flight=1, max_wait_s=0.02)
        blocker = asyncio.create_task(coalescer.submit(0))
        await settle()
        started = asyncio.get_running_loop().time()
        late = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2)]
        deadline = started + 5.0
        while len(down.bundles) < 2:  # poll: the bound under test is a time
            assert asyncio.get_running_loop().time() < deadline, "the waiting items never went"
            await asyncio.sleep(0.005)
        waited = asyncio.get_running_loop().time() - started
        assert down.bundles == [[0], [1, 2]]
        assert 0.015 <= waited < 1.0
        down.release(0)
        down.release(1)
        assert await asyncio.gather(blocker, *late) == ["answer-0", "answer-1", "answer-2"]

    asyncio.run(scenario())


def test_limits_must_be_positive() -> None:
    async def send(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(send, max_items=0, max_in_flight=1, max_wait_s=60)
    with pytest.raises(ValueError, match="negative"):
        Coalescer(send, max_items=1, max_in_flight=1, max_wait_s=-1)


class Forward:
    def __init__(self) -> None:
        self.passes: list[list[str]] = []
        self.gate = asyncio.Event()

    async def run(self, items: list[str]) -> list[str]:
        self.passes.append(list(items))
        await self.gate.wait()
        return [f"out-{i}" for i in items]


def test_the_forward_queue_fills_passes_from_everything_gathered() -> None:
    async def scenario() -> None:
        forward = Forward()
        queue: ForwardQueue[str, str] = ForwardQueue(forward.run, max_batch_size=3)
        first = queue.put(["a"])
        await settle()
        assert forward.passes == [["a"]]  # the first pass starts at once
        later = queue.put(["b", "c"]) + queue.put(["d", "e"])  # gathered while "a" runs
        forward.gate.set()
        results = await asyncio.gather(*first, *later)
        assert forward.passes == [["a"], ["b", "c", "d"], ["e"]]
        assert results == ["out-a", "out-b", "out-c", "out-d", "out-e"]

    asyncio.run(scenario())


def test_the_forward_queue_skips_abandoned_items_and_max_size_is_live() -> None:
    async def scenario() -> None:
        forward = Forward()
        queue: ForwardQueue[str, str] = ForwardQueue(forward.run, max_batch_size=2)
        taken: list[list[str]] = []
        queue.on_take = taken.append
        running = queue.put(["a"])
        await settle()
        waiting = queue.put(["b", "c", "d"])
        waiting[0].cancel()
        queue.max_batch_size = 3
        forward.gate.set()
        await asyncio.gather(*running, *waiting[1:])
        assert taken == [["a"], ["c", "d"]]
        assert len(queue) == 0

    asyncio.run(scenario())


def test_a_bug_in_the_forward_pass_reaches_every_item_of_that_pass() -> None:
    async def scenario() -> None:
        async def broken(items: list[str]) -> list[str]:
            raise RuntimeError("bug")

        queue: ForwardQueue[str, str] = ForwardQueue(broken, max_batch_size=4)
        futures = queue.put(["a", "b"])
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(scenario())
