"""Model: gathers `Sample`s from bundles into micro-batches and runs them on GPU or CPU."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from ray import serve

from deployments.flow.batching import ForwardQueue, chunks
from deployments.flow.stats import Reporter
from deployments.flow.tally import Tally
from deployments.items import Bundle, ItemError, ModelInfo, RawOutput, Sample
from deployments.metrics import ModelMetrics
from deployments.runtime.inference import Runner, pick_device
from deployments.runtime.spec import ModelSpec, Resolved
from deployments.settings import Batching
from deployments.tracing import Tracing

logger = logging.getLogger("ray.serve")
HEALTH_FORWARD_EVERY_S = 30.0
_UNCONFIGURED = (
    "this Model replica got no user_config: a Serve config must set its deployment's "
    "user_config (max_batch_size, batch_wait_timeout_s), as serve_config.yaml does"
)


@serve.deployment
class Model:
    def __init__(
        self,
        spec: ModelSpec,
        resolved: Resolved,
        served_as: str,
        version: str,
        front: str | None = None,
    ) -> None:
        """`served_as`: the model's name in the routes (`models:` in the Serve config);
        `version`: the version these weights are served as, which every answer names;
        `front`: the application whose Ingress routes it, for a model application (its
        statistics are counted there), None when bound into that application."""
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
        self._metrics = ModelMetrics(served_as, version)
        # Forward passes counted for the OIP statistics (`deployments.flow.stats`).
        context = serve.get_replica_context()
        self._tally = Tally()
        replica = f"{context.app_name}#{context.deployment}#{context.replica_id.unique_id}"
        self._reporter = Reporter(self._tally, front or context.app_name, replica)
        self._tracing = Tracing.from_env("Model")
        self._runner = Runner.for_model(
            spec, resolved, device, on_batch=self._record_batch, tracing=self._tracing
        )
        # Set by `reconfigure` from the deployment's user_config, which Serve applies before the
        # replica takes a request; without one, the first health check fails the replica.
        self._batching: Batching | None = None
        self._waiting: set[str] = set()  # item ids in predict() not yet handed to a forward pass
        # Items gathered by @serve.batch wait here for the one forward pass at a time (its batch
        # size, too, is the user_config's, set in `reconfigure`).
        self._queue: ForwardQueue[Sample, RawOutput | ItemError] = ForwardQueue(self._forward, 1)
        self._queue.on_take = self._taken
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
        """Apply a new `Batching` (validated; a bad or missing value fails the update, not
        requests). The first one is applied before the replica serves.

        Args:
            user_config: `max_batch_size` and `batch_wait_timeout_s`.
        """
        config = Batching.model_validate(user_config)
        batcher: Any = self._batched  # Serve attaches the setters to the wrapper it returns
        batcher.set_max_batch_size(config.max_batch_size)
        batcher.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._queue.max_batch_size = config.max_batch_size
        # The batch size a replica last ran (`__init__` warmed batch 1) is warm; a new one is not.
        warm = self._batching.max_batch_size if self._batching is not None else 1
        if config.max_batch_size != warm:
            shape = (self._resolved.input_height, self._resolved.input_width)
            self._forward_thread.submit(
                self._runner.warm_up, [config.max_batch_size], *shape
            ).result()
        self._batching = config
        logger.info("batching now %s", config.model_dump())

    async def predict(self, bundle: Bundle) -> tuple[RawOutput | ItemError, ...]:
        """A bundle in, one `RawOutput` or `ItemError` per item out, in the bundle's order.

        Errors from earlier stages pass straight through. The samples go to `@serve.batch` in
        chunks of at most `max_batch_size` images (it counts images, not calls), so one forward
        pass may hold items from several bundles and a big bundle spreads over several passes.
        """
        entered = time.perf_counter()
        self._reporter.start()
        samples = [s for s in bundle.items if isinstance(s, Sample)]
        ids = [s.item_id for s in samples]
        self._waiting.update(ids)
        self._metrics.queue_depth.set(len(self._waiting))
        self._tracing.waiting(samples)
        try:
            gathered = await asyncio.gather(
                *(
                    self._batched(tuple(part))
                    for part in chunks(samples, self._configured().max_batch_size)
                )
            )
            futures = [f for part in gathered for f in part]
            try:
                outputs = await asyncio.gather(*futures)
            except asyncio.CancelledError:
                for future in futures:  # frees their places in the forward queue
                    future.cancel()
                raise
        finally:
            self._waiting.difference_update(ids)  # also when cancelled before its batch ran
            self._tracing.waited(ids)
        answers = iter(outputs)  # one per sample, in order; the Postprocessor checks ids
        return tuple(
            self._waited(next(answers), entered) if isinstance(item, Sample) else item
            for item in bundle.items
        )

    def _waited(self, raw: RawOutput | ItemError, entered: float) -> RawOutput | ItemError:
        """`raw` with the time its item spent here before its forward pass (and the metric)."""
        if isinstance(raw, ItemError):
            return raw
        waited_ms = max(0.0, (time.perf_counter() - entered) * 1000.0 - raw.inference_ms)
        self._metrics.batch_wait.observe(waited_ms / 1000.0)
        return dataclasses.replace(raw, queue_ms=waited_ms, model_version=self._metrics.version)

    # max_batch_size and batch_wait_timeout_s are the user_config's (`reconfigure`).
    @serve.batch(batch_size_fn=lambda parts: sum(len(p) for p in parts))
    async def _batched(
        self, parts: list[tuple[Sample, ...]]
    ) -> list[list[asyncio.Future[RawOutput | ItemError]]]:
        """Gather: called with exactly one positional tuple of Samples; Serve hands us the list.

        Serve forms its next batch while the previous one still runs, from whatever arrived in
        `batch_wait_timeout_s` (0 by default: what is there); awaiting the forward pass here would
        leave those batches tiny, queued behind it. So each item gets a future at once, and the
        `ForwardQueue` runs one pass at a time over up to `max_batch_size` of everything gathered
        meanwhile: an idle Model runs an item at once, a busy one batches what queued during its
        pass (work-conserving batching).
        """
        return [self._queue.put(part) for part in parts]

    def _configured(self) -> Batching:
        if self._batching is None:
            raise RuntimeError(_UNCONFIGURED)
        return self._batching

    async def _forward(self, samples: list[Sample]) -> list[RawOutput | ItemError]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._forward_thread, self._runner.run, samples)

    def _taken(self, samples: list[Sample]) -> None:
        self._waiting.difference_update(s.item_id for s in samples)
        self._metrics.queue_depth.set(len(self._waiting))

    def _record_batch(self, items: int, ms: float) -> None:
        self._last_forward = time.monotonic()
        self._metrics.batch_size.observe(items)
        self._metrics.observe("inference", ms / 1000.0, self._metrics.model, self._metrics.version)
        self._tally.executed((self._metrics.model, self._metrics.version), items, ms)

    async def check_health(self) -> None:
        """Healthy when the batch loop is alive and the model has run a forward pass lately.

        An idle replica proves it with a one-item forward pass; a busy one already has.
        """
        self._configured()  # a replica without its user_config fails its first check
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
            max_batch_size=self._configured().max_batch_size,
            batch_wait_timeout_s=self._configured().batch_wait_timeout_s,
            replica=serve.get_replica_context().replica_id.unique_id,
            version=self._metrics.version,
        )

    def ready(self) -> bool:
        return True
