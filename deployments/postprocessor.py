"""Postprocessor: join a bundle's `RawOutput`s to their `Meta`s by item id, build each `Result`.

What a result holds is the task's business (`deployments.tasks`): this stage checks the join,
applies each item's options over the deployment's defaults and times the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from ray import serve

from deployments import tasks
from deployments.errors import JoinMismatch
from deployments.metrics import StageMetrics
from deployments.tasks import Task
from deployments.types import Bundle, ItemError, Meta, RawOutput, Result, Sample

logger = logging.getLogger("ray.serve")


def join(
    raw: RawOutput | ItemError,
    sample: Sample | ItemError,
    *,
    model: str,
    task: Task,
    labels: tuple[str, ...],
    defaults: BaseModel,
) -> Result | ItemError:
    """The client's answer for one item; raises `JoinMismatch` if the two halves disagree on id."""
    if raw.item_id != sample.item_id:
        raise JoinMismatch(
            f"result for item {raw.item_id} met metadata of item {sample.item_id}; refusing to join"
        )
    if isinstance(sample, ItemError):
        return sample
    if isinstance(raw, ItemError):
        return raw
    meta: Meta = sample.meta
    options = meta.options.over(defaults.model_dump())
    predictions, extra = task.answer(raw.arrays, meta, labels, options)
    return Result(
        request_id=meta.request_id,
        item_id=meta.item_id,
        model=model,
        task=task.name,
        image=meta.image,
        predictions=predictions,
        batch_size=raw.batch_size,
        timings_ms={
            "preprocess": round(meta.preprocess_ms, 3),
            "batch_wait": round(raw.queue_ms, 3),
            "inference": round(raw.inference_ms, 3),
        },
        extra=extra,
    )


def join_bundle(
    outputs: Sequence[RawOutput | ItemError],
    bundle: Bundle,
    *,
    model: str,
    task: Task,
    labels: tuple[str, ...],
    defaults: BaseModel,
) -> tuple[Result | ItemError, ...]:
    """`join` for every item of a bundle, in its order; a count or id mismatch raises."""
    if len(outputs) != len(bundle.items):
        raise JoinMismatch(
            f"{len(outputs)} model outputs met a bundle of {len(bundle.items)} items; "
            "refusing to join"
        )
    return tuple(
        join(raw, sample, model=model, task=task, labels=labels, defaults=defaults)
        for raw, sample in zip(outputs, bundle.items, strict=True)
    )


@serve.deployment
class Postprocessor:
    def __init__(self, model: str, task: str, labels: tuple[str, ...]) -> None:
        self._model = model
        self._task = tasks.get(task)
        self._labels = labels
        self._defaults = self._task.defaults()
        self._metrics = StageMetrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new option defaults.

        Args:
            user_config: one section per task, e.g. `detection: {score_threshold: 0.5}`; every
                section is validated, the model's own task's applies.
        """
        self._defaults = tasks.defaults_for(self._task, user_config)

    async def __call__(
        self, outputs: Sequence[RawOutput | ItemError], bundle: Bundle
    ) -> tuple[Result | ItemError, ...]:
        """Join a bundle's model outputs to its metadata, item by item, in the bundle's order.

        Both arrive resolved from object references. A count or id that does not match is a
        bug upstream: `JoinMismatch` is raised and nothing is joined.
        """
        start = time.perf_counter()
        joined = join_bundle(
            outputs,
            bundle,
            model=self._model,
            task=self._task,
            labels=self._labels,
            defaults=self._defaults,
        )
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        per_item_ms = round(elapsed_ms / max(1, len(joined)), 3)
        for out in joined:
            if isinstance(out, Result):
                out.timings_ms["postprocess"] = per_item_ms
                self._metrics.observe("postprocess", per_item_ms)
        return joined

    def ready(self) -> bool:
        return True
