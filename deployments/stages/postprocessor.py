"""Postprocessor: join a bundle's `RawOutput`s to their `Meta`s by item id, build each `Result`.

What a result holds is the task's business (`deployments.tasks`): this stage checks the join,
applies each item's options over the deployment's defaults and times the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from ray import serve

from deployments import tasks
from deployments.errors import JoinMismatch
from deployments.flow.catalogue import ModelAnswers
from deployments.items import Bundle, ItemError, Meta, RawOutput, Result, Sample, of_version
from deployments.metrics import StageMetrics
from deployments.tasks import Task
from deployments.tracing import OFF, Tracing

logger = logging.getLogger("ray.serve")
_UNCONFIGURED = (
    "this Postprocessor replica got no user_config: a Serve config must set its deployment's "
    "user_config (one section of option defaults per task), as serve_config.yaml does"
)


def _same_item(raw: RawOutput | ItemError, sample: Sample | ItemError) -> None:
    if raw.item_id != sample.item_id:
        raise JoinMismatch(
            f"result for item {raw.item_id} met metadata of item {sample.item_id}; refusing to join"
        )


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
    _same_item(raw, sample)
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
        model_version=raw.model_version,
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
    models: Mapping[tuple[str, str], ModelAnswers],
    defaults: Mapping[str, BaseModel],
    tracing: Tracing = OFF,
) -> tuple[Result | ItemError, ...]:
    """`join` for every item of a bundle, in its order, each by its own model and version
    (`models`: by name and version): the version that produced its output, else the one it was
    sent to (`Meta.version`). A count or id mismatch raises."""
    if len(outputs) != len(bundle.items):
        raise JoinMismatch(
            f"{len(outputs)} model outputs met a bundle of {len(bundle.items)} items; "
            "refusing to join"
        )
    joined: list[Result | ItemError] = []
    for raw, sample in zip(outputs, bundle.items, strict=True):
        if isinstance(sample, Sample):
            served = _answers_for(models, sample.meta, raw)
            task = tasks.get(served.task)
            with tracing.join(raw, sample):
                joined.append(
                    join(
                        raw,
                        sample,
                        model=served.source,
                        task=task,
                        labels=served.labels,
                        defaults=defaults[task.name],
                    )
                )
        else:  # an earlier stage's error passes through in its place
            _same_item(raw, sample)
            joined.append(sample)
    return tuple(joined)


def _answers_for(
    models: Mapping[tuple[str, str], ModelAnswers], meta: Meta, raw: RawOutput | ItemError
) -> ModelAnswers:
    produced = raw.model_version if isinstance(raw, RawOutput) else ""
    return models.get((meta.model, produced)) or of_version(models, meta.model, meta.version)


@serve.deployment
class Postprocessor:
    def __init__(self) -> None:
        # Every task's defaults: any model may come to be served (a model application).
        self._tasks = [tasks.get(name) for name in tasks.REGISTRY]
        # The option defaults come from the user_config, which Serve applies (`reconfigure`)
        # before the replica takes a request; without one, its first health check fails it.
        self._defaults: dict[str, BaseModel] | None = None
        self._metrics = StageMetrics()
        self._tracing = Tracing.from_env("Postprocessor")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new option defaults.

        Args:
            user_config: one section per task, e.g. `detection: {score_threshold: 0.5}`; every
                task's section is validated, each model's own task's applies to it.
        """
        self._defaults = {t.name: tasks.defaults_for(t, user_config) for t in self._tasks}

    async def __call__(
        self,
        outputs: Sequence[RawOutput | ItemError],
        bundle: Bundle,
        answers: Mapping[tuple[str, str], ModelAnswers],
    ) -> tuple[Result | ItemError, ...]:
        """Join a bundle's model outputs to its metadata, item by item, in the bundle's order.

        Both arrive resolved from object references; `answers` is every version of the
        bundle's model (each output names the version that produced it), from the Ingress.
        A count or id that does not match is a bug upstream: `JoinMismatch` is raised and
        nothing is joined.
        """
        start = time.perf_counter()
        defaults = self._configured()
        joined = join_bundle(
            outputs, bundle, models=answers, defaults=defaults, tracing=self._tracing
        )
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        per_item_ms = round(elapsed_ms / max(1, len(joined)), 3)
        for out, sample in zip(joined, bundle.items, strict=True):
            if isinstance(out, Result) and isinstance(sample, Sample):
                out.timings_ms["postprocess"] = per_item_ms
                self._metrics.observe(
                    "postprocess", per_item_ms / 1000.0, sample.meta.model, out.model_version
                )
        return joined

    def _configured(self) -> dict[str, BaseModel]:
        if self._defaults is None:
            raise RuntimeError(_UNCONFIGURED)
        return self._defaults

    def check_health(self) -> None:
        """Healthy once the user_config's option defaults are applied."""
        self._configured()

    def ready(self) -> bool:
        return True
