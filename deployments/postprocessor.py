"""Postprocessor: join each `RawOutput` to its `Meta` by item id and build the client's `Result`."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.errors import JoinMismatch
from deployments.metrics import StageMetrics
from deployments.predictions import detections, top_k
from deployments.types import ItemError, Meta, RawOutput, Result, Sample, Task

logger = logging.getLogger("ray.serve")


class OptionDefaults(BaseModel):
    """The Postprocessor's `user_config`: what a request gets for options it does not send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int = Field(5, ge=1)
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1)


def join(
    raw: RawOutput | ItemError,
    sample: Sample | ItemError,
    *,
    model: str,
    task: Task,
    labels: tuple[str, ...],
    defaults: OptionDefaults,
) -> Result | ItemError:
    """The client's answer for one item; raises `JoinMismatch` if the two halves disagree on id."""
    if isinstance(sample, ItemError):
        return sample
    if raw.item_id != sample.item_id:
        raise JoinMismatch(
            f"result for item {raw.item_id} met metadata of item {sample.item_id}; refusing to join"
        )
    if isinstance(raw, ItemError):
        return raw
    meta: Meta = sample.meta
    opts = meta.options
    if task == "classification":
        predictions = top_k(raw, labels, opts.top_k or defaults.top_k)
    else:
        threshold = opts.score_threshold
        predictions = detections(
            raw,
            meta.geometry,
            labels,
            defaults.score_threshold if threshold is None else threshold,
            opts.max_detections or defaults.max_detections,
        )
    return Result(
        request_id=meta.request_id,
        item_id=meta.item_id,
        model=model,
        task=task,
        image=meta.image,
        predictions=predictions,
        batch_size=raw.batch_size,
        timings_ms={
            "preprocess": round(meta.preprocess_ms, 3),
            "batch_wait": round(raw.queue_ms, 3),
            "inference": round(raw.inference_ms, 3),
        },
    )


@serve.deployment(max_ongoing_requests=64)
class Postprocessor:
    def __init__(self, model: str, task: Task, labels: tuple[str, ...]) -> None:
        self._model = model
        self._task = task
        self._labels = labels
        self._defaults = OptionDefaults()
        self._metrics = StageMetrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new option defaults.

        Args:
            user_config: `top_k`, `score_threshold`, `max_detections` (validated).
        """
        self._defaults = OptionDefaults.model_validate(user_config)

    async def __call__(
        self, raw: RawOutput | ItemError, sample: Sample | ItemError
    ) -> Result | ItemError:
        """Join one model result to its metadata (both arrive resolved from object references)."""
        start = time.perf_counter()
        out = join(
            raw,
            sample,
            model=self._model,
            task=self._task,
            labels=self._labels,
            defaults=self._defaults,
        )
        if isinstance(out, Result):
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            out.timings_ms["postprocess"] = round(elapsed_ms, 3)
            self._metrics.observe("postprocess", elapsed_ms)
        return out

    def ready(self) -> bool:
        return True
