"""How items are grouped on their way through the graph: Ray-free policy, unit-tested alone.

Two places group items, for two different costs:

- `Coalescer` (the Ingress): every Ray hop costs about as much CPU whatever it carries, so items
  that arrive while earlier bundles are in flight travel on together as one bundle. Nothing
  waits at low load: an item finds a free slot and goes at once. It waits only while
  `max_in_flight` bundles are already out, and only until one returns, `max_items` gather or
  `max_wait_s` passes. The last bound matters when the Model itself waits for a fuller batch
  (a long `batch_wait_timeout_s`): it must never wait for items that the Ingress is holding.
- `ForwardQueue` (the Model): `@serve.batch` gathers items, but forms its next batch while the
  current forward pass still runs, so passes taken as formed stay small under load. The queue
  holds everything gathered, and one pass at a time takes up to `max_batch_size` of it, skipping
  items whose callers have given up.

Both hand every item its own future, so one item's failure, cancellation or deadline never
touches its neighbours.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Groups concurrent `submit` calls into bundles for `send`, with no fixed wait.

    `send(items)` must return one result per item, in order; an exception it raises reaches
    every caller of that bundle. A bundle whose callers have all given up is cancelled.
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_items: int,
        max_in_flight: int,
        max_wait_s: float,
    ) -> None:
        if max_items < 1 or max_in_flight < 1:
            raise ValueError("max_items and max_in_flight must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        self._send = send
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self.max_wait_s = max_wait_s
        self._queue: collections.deque[tuple[T, asyncio.Future[R]]] = collections.deque()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.bundles_sent = 0
        self.items_sent = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, item: T) -> R:
        """The result for `item`, sent in a bundle with whatever else is waiting."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._pump()
        return await future

    def _pump(self, flush: bool = False) -> None:
        # A full bundle always goes; a partial one while a slot is free, or once it has waited
        # `max_wait_s` (`flush`).
        while self._queue and (
            flush or len(self._queue) >= self.max_items or len(self._in_flight) < self.max_in_flight
        ):
            bundle: list[tuple[T, asyncio.Future[R]]] = []
            while self._queue and len(bundle) < self.max_items:
                item, future = self._queue.popleft()
                if not future.done():  # a caller that gave up while queued is not sent
                    bundle.append((item, future))
            if not bundle:
                continue
            # A bundle belongs to no one caller: it runs in a fresh context, so request-scoped
            # context variables (a request id, say) of whoever triggered it do not leak into it.
            task = asyncio.get_running_loop().create_task(
                self._run(bundle), context=contextvars.Context()
            )
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
            self.bundles_sent += 1
            self.items_sent += len(bundle)

            for _, future in bundle:
                future.add_done_callback(self._abandon_if_all_gone(task, bundle))
        if self._queue and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._flush)
        elif not self._queue and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        self._timer = None
        self._pump(flush=True)

    @staticmethod
    def _abandon_if_all_gone(
        task: asyncio.Task[None], bundle: list[tuple[T, asyncio.Future[R]]]
    ) -> Callable[[object], None]:
        def check(_: object) -> None:
            if all(f.cancelled() for _, f in bundle) and not task.done():
                task.cancel()

        return check

    async def _run(self, bundle: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._send([item for item, _ in bundle])
            if len(results) != len(bundle):
                raise RuntimeError(f"{len(results)} results for a bundle of {len(bundle)} items")
        except asyncio.CancelledError:
            for _, future in bundle:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every caller must hear of it, never hang
            for _, future in bundle:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(bundle, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._pump()


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` in order, cut into lists of at most `size`."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class ForwardQueue(Generic[T, R]):
    """Items gathered for the model; one `run` at a time takes up to `max_batch_size` of them.

    `run(items)` is the forward pass: one result per item, in order. It runs wherever the
    caller's `run` offloads it; the queue only decides who goes in which pass.
    """

    def __init__(
        self, run: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch_size: int
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self._pending: collections.deque[tuple[T, asyncio.Future[R]]] = collections.deque()
        self._draining: asyncio.Task[None] | None = None
        # Called with the items about to enter a pass (to update queue-depth metrics, say).
        self.on_take: Callable[[list[T]], None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """Queue `items`; each gets a future for its result. Starts draining if idle."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            self._pending.append((item, future))
            futures.append(future)
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        return futures

    def take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """The next pass: up to `max_batch_size` items in arrival order, skipping abandoned ones."""
        chunk: list[tuple[T, asyncio.Future[R]]] = []
        while self._pending and len(chunk) < self.max_batch_size:
            item, future = self._pending.popleft()
            if not future.done():  # its caller gave up (deadline, disconnect)
                chunk.append((item, future))
        return chunk

    async def _drain(self) -> None:
        while self._pending:
            chunk = self.take()
            if not chunk:
                continue
            if self.on_take is not None:
                self.on_take([item for item, _ in chunk])
            try:
                outputs = await self._run([item for item, _ in chunk])
                if len(outputs) != len(chunk):
                    raise RuntimeError(f"{len(outputs)} outputs for a pass of {len(chunk)} items")
            except Exception as exc:  # an unexpected bug must reach every caller, not hang them
                logger.exception("forward pass failed outside the runner's own handling")
                for _, future in chunk:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), output in zip(chunk, outputs, strict=True):
                if not future.done():
                    future.set_result(output)
