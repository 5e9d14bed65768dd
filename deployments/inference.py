"""Run one micro-batch through the model: the plain, Ray-free core of the Model deployment.

Pixels arrive as uint8 HWC; they are stacked per shape, moved to the device as uint8 (a quarter of
the float bytes) and normalised there. A failure of a whole forward pass (out of memory, say) is
retried on halves before any item is failed, and then only the item that still fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from deployments import tasks
from deployments.errors import DeadlineExceeded, InferenceFailed
from deployments.geometry import plan_stretch
from deployments.model_source import ModelSpec, Resolved, load
from deployments.tasks import Arrays, Task
from deployments.tracing import OFF, Tracing
from deployments.types import Geometry, ItemError, RawOutput, Sample

logger = logging.getLogger("ray.serve")


def pick_device() -> torch.device:
    """CUDA when this replica was given a GPU, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Runner:
    module: nn.Module
    resolved: Resolved  # the task, normalisation and candidates kept come from here
    device: torch.device
    # Called once per forward pass with (items, milliseconds), for metrics.
    on_batch: Callable[[int, float], None] | None = field(default=None, repr=False)
    tracing: Tracing = field(default=OFF, repr=False)  # a span per forward pass
    task: Task = field(init=False, repr=False)

    @classmethod
    def for_model(
        cls,
        spec: ModelSpec,
        resolved: Resolved,
        device: torch.device | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        tracing: Tracing = OFF,
    ) -> Runner:
        """The runner for a configured model: its weights loaded, its normalisation and top-k."""
        return cls(
            module=load(spec, resolved),
            resolved=resolved,
            device=device or pick_device(),
            on_batch=on_batch,
            tracing=tracing,
        )

    def __post_init__(self) -> None:
        self.module = self.module.to(self.device).eval()
        self.task = tasks.get(self.resolved.task)
        std = torch.tensor(self.resolved.std, dtype=torch.float32, device=self.device)
        mean = torch.tensor(self.resolved.mean, dtype=torch.float32, device=self.device)
        std, mean = std.view(1, 3, 1, 1), mean.view(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift, one fused pass on the device.
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    def run(self, samples: Sequence[Sample]) -> list[RawOutput | ItemError]:
        """One result per sample, in order; same-shape sub-batches share a forward pass.

        Args:
            samples: preprocessed items; their pixel arrays may differ in shape.

        Returns:
            A `RawOutput` tagged with each sample's item id, or an `ItemError` for an item whose
            deadline passed before its forward pass (nothing is computed for it) or whose forward
            pass failed even alone.
        """
        results: list[RawOutput | ItemError | None] = [None] * len(samples)
        groups: dict[tuple[int, ...], list[int]] = {}
        now = time.time()
        for i, sample in enumerate(samples):
            deadline = sample.meta.deadline
            if deadline is not None and deadline <= now:
                results[i] = ItemError.from_exception(
                    sample.item_id,
                    DeadlineExceeded(
                        "the deadline passed before the forward pass; nothing was run"
                    ),
                )
                continue
            groups.setdefault(sample.pixels.shape, []).append(i)
        for indices in groups.values():
            for i, result in zip(
                indices, self._run_group([samples[i] for i in indices]), strict=True
            ):
                results[i] = result
        return [r for r in results if r is not None]

    def _run_group(self, samples: list[Sample]) -> list[RawOutput | ItemError]:
        start = time.perf_counter()
        try:
            with self.tracing.forward(samples):
                pixels = np.stack([s.pixels for s in samples])
                outputs = self.forward(pixels, [s.meta.geometry for s in samples])
        except Exception as exc:  # noqa: BLE001 - a batch-wide fault must not fail every item
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(samples) == 1:
                meta = samples[0].meta
                logger.error(
                    "request %s item %s: forward pass failed: %r",
                    meta.request_id,
                    meta.item_id,
                    exc,
                )
                message = f"the model failed on this image ({type(exc).__name__})"
                return [ItemError.from_exception(samples[0].item_id, InferenceFailed(message))]
            logger.warning(
                "forward pass over %d items failed (%r); retrying in halves: %s",
                len(samples),
                exc,
                ", ".join(f"{s.meta.request_id}/{s.item_id}" for s in samples),
            )
            half = len(samples) // 2
            return self._run_group(samples[:half]) + self._run_group(samples[half:])
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        if self.on_batch is not None:
            self.on_batch(len(samples), elapsed_ms)
        return [
            RawOutput(
                item_id=s.item_id,
                arrays=arrays,
                batch_size=len(samples),
                inference_ms=elapsed_ms,
            )
            for s, arrays in zip(samples, outputs, strict=True)
        ]

    @torch.inference_mode()
    def forward(
        self, batch: npt.NDArray[np.uint8], geometries: Sequence[Geometry] | None = None
    ) -> list[Arrays]:
        """uint8 N x H x W x 3 -> per image the task's named arrays. `geometries` say how each
        image's displayed pixels map to the input (the input itself when not given)."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        # NHWC viewed as NCHW is channels_last in memory: no copy before the first conv.
        x = x.permute(0, 3, 1, 2).float().mul_(self._scale).add_(self._shift)
        if geometries is None:
            n, height, width = batch.shape[:3]
            geometries = [plan_stretch(width, height, width, height)] * n
        return self.task.decode(self.module(x), geometries, self.resolved)

    def warm_up(self, batch_sizes: Sequence[int], height: int, width: int) -> None:
        """Run dummy batches so the first requests do not pay for lazy initialisation."""
        for n in batch_sizes:
            self.forward(np.zeros((n, height, width, 3), dtype=np.uint8))
