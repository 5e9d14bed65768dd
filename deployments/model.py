"""Model: gathers `Sample`s into micro-batches with `@serve.batch` and runs them on GPU or CPU."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.inference import Runner, pick_device
from deployments.metrics import ModelMetrics
from deployments.models import ModelSpec, Resolved, load
from deployments.types import ItemError, ModelInfo, RawOutput, Sample

logger = logging.getLogger("ray.serve")
HEALTH_FORWARD_EVERY_S = 30.0


class BatchingConfig(BaseModel):
    """The Model's `user_config`: hot knobs, applied by `reconfigure` without a restart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(8, ge=1, le=512)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)


@serve.deployment(max_ongoing_requests=64)
class Model:
    def __init__(self, spec: ModelSpec, resolved: Resolved) -> None:
        if spec.torch_threads is not None:
            torch.set_num_threads(spec.torch_threads)
        # Every forward pass (warm-up and health checks included) runs on this one thread, so
        # two never share the model or the device at once, and one OpenMP team serves them all.
        threads = torch.get_num_threads()
        self._forward_thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="forward",
            initializer=torch.set_num_threads,
            initargs=(threads,),
        )
        device = pick_device()
        started = time.perf_counter()
        self._resolved = resolved
        self._metrics = ModelMetrics()
        self._runner = Runner(
            module=load(spec, resolved),
            task=resolved.task,
            device=device,
            mean=resolved.mean,
            std=resolved.std,
            max_top_k=spec.max_top_k,
            on_batch=self._record_batch,
        )
        self._batching = BatchingConfig()
        self._waiting: set[str] = set()  # item ids in predict() not yet handed to a forward pass
        # Batches gathered by @serve.batch wait here for the one forward pass at a time (see
        # `_batched`); `_forwarding` is the task that drains it, alive while anything is queued.
        self._pending: collections.deque[tuple[Sample, asyncio.Future[RawOutput | ItemError]]]
        self._pending = collections.deque()
        self._forwarding: asyncio.Task[None] | None = None
        shape = (resolved.input_height, resolved.input_width)
        self._forward_thread.submit(self._runner.warm_up, [1], *shape).result()
        self._last_forward = time.monotonic()
        logger.info(
            "model %s (%s, weights %s) ready on %s in %.1f s; torch threads %d",
            resolved.name,
            resolved.task,
            resolved.weights,
            device,
            time.perf_counter() - started,
            torch.get_num_threads(),
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new `BatchingConfig` (validated; a bad value fails the update, not requests).

        Args:
            user_config: `max_batch_size` and `batch_wait_timeout_s`.
        """
        config = BatchingConfig.model_validate(user_config)
        batcher: Any = self._batched  # Serve attaches the setters to the wrapper it returns
        batcher.set_max_batch_size(config.max_batch_size)
        batcher.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        if config.max_batch_size != self._batching.max_batch_size:
            shape = (self._resolved.input_height, self._resolved.input_width)
            self._forward_thread.submit(
                self._runner.warm_up, [config.max_batch_size], *shape
            ).result()
        self._batching = config
        logger.info("batching now %s", config.model_dump())

    async def predict(self, sample: Sample | ItemError) -> RawOutput | ItemError:
        """One item in, its `RawOutput` out; errors from earlier stages pass straight through."""
        if isinstance(sample, ItemError):
            return sample
        entered = time.perf_counter()
        self._waiting.add(sample.item_id)
        self._metrics.queue_depth.set(len(self._waiting))
        try:
            raw = await (await self._batched(sample))
        finally:
            self._waiting.discard(sample.item_id)  # also when cancelled before its batch ran
        if isinstance(raw, ItemError):
            return raw
        waited_ms = (time.perf_counter() - entered) * 1000.0 - raw.inference_ms
        waited_ms = max(0.0, waited_ms)
        self._metrics.batch_wait.observe(waited_ms)
        return dataclasses.replace(raw, queue_ms=waited_ms)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, samples: list[Sample]) -> list[asyncio.Future[RawOutput | ItemError]]:
        """Gather: called with exactly one positional Sample per item; Serve hands us the list.

        Serve forms its next batch while the previous one still runs, from whatever arrived in
        `batch_wait_timeout_s`; awaiting the forward pass here would leave those batches tiny,
        queued behind it. So each item gets a future at once, and one forward pass at a time
        takes up to `max_batch_size` of everything gathered meanwhile (`_drain`).
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[RawOutput | ItemError]] = []
        for sample in samples:
            future: asyncio.Future[RawOutput | ItemError] = loop.create_future()
            self._pending.append((sample, future))
            futures.append(future)
        if self._forwarding is None or self._forwarding.done():
            self._forwarding = asyncio.create_task(self._drain())
        return futures

    async def _drain(self) -> None:
        """Run forward passes over the gathered items until none are left."""
        while self._pending:
            chunk: list[tuple[Sample, asyncio.Future[RawOutput | ItemError]]] = []
            while self._pending and len(chunk) < self._batching.max_batch_size:
                sample, future = self._pending.popleft()
                if not future.cancelled():  # its caller gave up (deadline, disconnect)
                    chunk.append((sample, future))
            if not chunk:
                continue
            self._waiting.difference_update(s.item_id for s, _ in chunk)
            self._metrics.queue_depth.set(len(self._waiting))
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._forward_thread, self._runner.run, [s for s, _ in chunk]
                )
            except Exception as exc:  # an unexpected bug must reach every caller, not hang them
                logger.exception("forward pass failed outside the runner's own handling")
                for _, future in chunk:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), output in zip(chunk, outputs, strict=True):
                if not future.done():
                    future.set_result(output)

    def _record_batch(self, items: int, ms: float) -> None:
        self._last_forward = time.monotonic()
        self._metrics.batch_size.observe(items)
        self._metrics.observe("inference", ms)

    async def check_health(self) -> None:
        """Healthy when the batch loop is alive and the model has run a forward pass lately.

        An idle replica proves it with a one-item forward pass; a busy one already has.
        """
        batcher: Any = self._batched
        alive = getattr(batcher, "_is_batching_task_alive", None)  # Serve's own probe, if present
        if alive is not None and not await alive():
            raise RuntimeError("the batching loop has died")
        if time.monotonic() - self._last_forward < HEALTH_FORWARD_EVERY_S:
            return
        shape = (self._resolved.input_height, self._resolved.input_width)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._forward_thread, self._runner.warm_up, [1], *shape)
        self._last_forward = time.monotonic()

    def describe(self) -> ModelInfo:
        r = self._resolved
        return ModelInfo(
            name=r.name,
            task=r.task,
            labels=r.labels,
            input_width=r.input_width,
            input_height=r.input_height,
            resize=r.resize,
            weights=r.weights,
            device=str(self._runner.device),
            max_batch_size=self._batching.max_batch_size,
            batch_wait_timeout_s=self._batching.batch_wait_timeout_s,
            replica=serve.get_replica_context().replica_id.unique_id,
        )

    def ready(self) -> bool:
        return True
