"""Model: gathers `Sample`s into micro-batches with `@serve.batch` and runs them on GPU or CPU."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.inference import Runner, pick_device
from deployments.models import ModelSpec, Resolved, load
from deployments.types import ItemError, ModelInfo, RawOutput, Sample

logger = logging.getLogger("ray.serve")


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
        device = pick_device()
        started = time.perf_counter()
        self._resolved = resolved
        self._runner = Runner(
            module=load(spec, resolved),
            task=resolved.task,
            device=device,
            mean=resolved.mean,
            std=resolved.std,
            max_top_k=spec.max_top_k,
        )
        self._batching = BatchingConfig()
        self._runner.warm_up([1], resolved.input_height, resolved.input_width)
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
            self._runner.warm_up([config.max_batch_size], *shape)
        self._batching = config
        logger.info("batching now %s", config.model_dump())

    async def predict(self, sample: Sample | ItemError) -> RawOutput | ItemError:
        """One item in, its `RawOutput` out; errors from earlier stages pass straight through."""
        if isinstance(sample, ItemError):
            return sample
        entered = time.perf_counter()
        raw = await self._batched(sample)
        if isinstance(raw, ItemError):
            return raw
        waited_ms = (time.perf_counter() - entered) * 1000.0 - raw.inference_ms
        return dataclasses.replace(raw, queue_ms=max(0.0, waited_ms))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, samples: list[Sample]) -> list[RawOutput | ItemError]:
        # Called with exactly one positional Sample per item; Serve hands us the list.
        return await asyncio.to_thread(self._runner.run, samples)

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
