"""Run one micro-batch through the model: the plain, Ray-free core of the Model deployment.

Pixels arrive as uint8 HWC; they are stacked per shape, moved to the device as uint8 (a quarter of
the float bytes; on CUDA through a reused pinned buffer, asynchronously) and normalised there.
JPEGs left compressed (a model's `gpu_decode`) are decoded and placed on the device first
(`device_decode`); one that fails is its own error. The forward pass runs under the
model's `precision` (autocast) and `channels_last` settings; what the task decodes is float32
whatever the precision. A failure of a whole forward pass (out of memory, say) is retried on
halves before any item is failed, and then only the item that still fails.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from deployments import tasks
from deployments.errors import DeadlineExceeded, InferenceFailed, VisionError
from deployments.items import Geometry, ItemError, Jpeg, RawOutput, Sample
from deployments.pixels.geometry import plan_stretch
from deployments.runtime.device_decode import decode_batch, load_decoder
from deployments.runtime.model_source import ModelLoadError, load
from deployments.runtime.spec import ModelSpec, Precision, Resolved
from deployments.tasks import Arrays, Task
from deployments.tracing import OFF, Tracing

logger = logging.getLogger("ray.serve")

DTYPES: dict[Precision, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# One item's model input before the batch is formed: host pixels, or a device-decoded JPEG.
Pixels = npt.NDArray[np.uint8] | torch.Tensor


def pick_device() -> torch.device:
    """CUDA when this replica was given a GPU, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def check_precision(precision: Precision, device: torch.device) -> None:
    """Refuse a precision this device cannot run, naming the setting (a replica fails to start
    rather than run something other than what the config says)."""
    if precision == "float16" and device.type != "cuda":
        raise ModelLoadError(
            f"precision float16 needs a CUDA replica, but this Model replica runs on "
            f"{device.type}: give the Model a GPU (num_gpus in its ray_actor_options), or set "
            "the model's precision to bfloat16 or float32"
        )
    if (
        precision == "bfloat16"
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise ModelLoadError(
            f"precision bfloat16 needs a GPU with native bfloat16 (Ampere or newer), and "
            f"{torch.cuda.get_device_name(device)} only emulates it, slowly: set the model's "
            "precision to float16 or float32"
        )


def as_float32(output: Any) -> Any:
    """The module's output with every floating tensor in float32 (tensors, and the dicts, lists
    and tuples torchvision models return them in)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, Mapping):
        return type(output)({k: as_float32(v) for k, v in output.items()})  # type: ignore[call-arg]
    if isinstance(output, list | tuple) and not hasattr(output, "_fields"):
        return type(output)(as_float32(v) for v in output)
    return output


class PinnedBuffers:
    """Page-locked host buffers for the host-to-device copy: one per image shape, grown to the
    largest batch seen. A buffer is written again only after its last copy has finished (a CUDA
    event), since `non_blocking` copies read it after `to()` returns."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, ...], torch.Tensor] = {}
        self._copies: dict[tuple[int, ...], torch.cuda.Event] = {}

    def take(self, n: int, shape: tuple[int, ...]) -> torch.Tensor:
        """A pinned uint8 buffer of n x `shape`, free to write."""
        copy = self._copies.pop(shape, None)
        if copy is not None:
            copy.synchronize()
        buffer = self._buffers.get(shape)
        if buffer is None or buffer.shape[0] < n:
            buffer = torch.empty((n, *shape), dtype=torch.uint8, pin_memory=True)
            self._buffers[shape] = buffer
        return buffer[:n]

    def copied(self, shape: tuple[int, ...]) -> None:
        """Mark the copy just queued from the buffer of `shape` (on the current stream)."""
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        self._copies[shape] = event


@dataclass
class Runner:
    module: nn.Module
    resolved: Resolved  # the task, normalisation and candidates kept come from here
    device: torch.device
    # Called once per forward pass with (items, milliseconds), for metrics.
    on_batch: Callable[[int, float], None] | None = field(default=None, repr=False)
    tracing: Tracing = field(default=OFF, repr=False)  # a span per forward pass
    precision: Precision = "float32"  # autocast dtype of the forward pass (float32: none)
    channels_last: bool = False  # the module's weights in channels_last memory format
    compile: bool = False  # run a torch.compile'd module (compiled during warm_up)
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
        if spec.gpu_decode:
            load_decoder()
        return cls(
            module=load(spec, resolved),
            resolved=resolved,
            device=device or pick_device(),
            on_batch=on_batch,
            tracing=tracing,
            precision=spec.precision,
            channels_last=spec.channels_last,
            compile=spec.compile,
        )

    def __post_init__(self) -> None:
        check_precision(self.precision, self.device)
        self.module = self.module.to(self.device).eval()
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._pinned = PinnedBuffers() if self.device.type == "cuda" else None
        self._compiled: Callable[..., Any] | None = (
            torch.compile(self.module) if self.compile else None
        )
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
            if sample.meta.expired(now):
                results[i] = ItemError.from_exception(
                    sample.item_id,
                    DeadlineExceeded(
                        "the deadline passed before the forward pass; nothing was run"
                    ),
                )
                continue
            groups.setdefault(_input_shape(sample), []).append(i)
        for indices in groups.values():
            for i, result in zip(
                indices, self._run_group([samples[i] for i in indices]), strict=True
            ):
                results[i] = result
        return [r for r in results if r is not None]

    def _run_group(self, samples: list[Sample]) -> list[RawOutput | ItemError]:
        """Same-shape samples: JPEGs decoded on the device first (one that fails is its own
        error), then one forward pass over the rest."""
        start = time.perf_counter()
        inputs = self._decoded(samples)
        decode_ms = (time.perf_counter() - start) * 1000.0
        results: list[RawOutput | ItemError] = []
        good = [(i, x) for i, x in enumerate(inputs) if not isinstance(x, VisionError)]
        ran = iter(
            self._forward_group([samples[i] for i, _ in good], [x for _, x in good], decode_ms)
            if good
            else []
        )
        for sample, x in zip(samples, inputs, strict=True):
            if isinstance(x, VisionError):
                meta = sample.meta
                logger.info(
                    "request %s item %s rejected on the device: %s",
                    meta.request_id,
                    meta.item_id,
                    x.message,
                )
                results.append(ItemError.from_exception(sample.item_id, x))
            else:
                results.append(next(ran))
        return results

    def _decoded(self, samples: list[Sample]) -> list[Pixels | VisionError]:
        """Each sample's pixels: host arrays as they came, JPEGs decoded onto the device."""
        pixels = [s.pixels for s in samples]
        jpegs = [(i, p) for i, p in enumerate(pixels) if isinstance(p, Jpeg)]
        if not jpegs:
            return [p for p in pixels if not isinstance(p, Jpeg)]  # all of them
        placed = decode_batch(
            [p for _, p in jpegs], [samples[i].meta.geometry for i, _ in jpegs], self.device
        )
        by_index = dict(zip((i for i, _ in jpegs), placed, strict=True))
        return [by_index[i] if isinstance(p, Jpeg) else p for i, p in enumerate(pixels)]

    def _forward_group(
        self, samples: list[Sample], pixels: list[Pixels], decode_ms: float = 0.0
    ) -> list[RawOutput | ItemError]:
        start = time.perf_counter()
        try:
            with self.tracing.forward(samples):
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
            return self._forward_group(samples[:half], pixels[:half]) + self._forward_group(
                samples[half:], pixels[half:]
            )
        elapsed_ms = decode_ms + (time.perf_counter() - start) * 1000.0
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
        self,
        batch: npt.NDArray[np.uint8] | Sequence[Pixels],
        geometries: Sequence[Geometry] | None = None,
    ) -> list[Arrays]:
        """uint8 N x H x W x 3 (one array, or one H x W x 3 array or device tensor per image) ->
        per image the task's named arrays. `geometries` say how each image's displayed pixels
        map to the input (the input itself when not given)."""
        x = self._on_device(batch)
        if geometries is None:
            n, height, width = x.shape[:3]
            geometries = [plan_stretch(width, height, width, height)] * n
        # The task reads float32 whatever the precision; its .cpu() waits for the device.
        return self.task.decode(as_float32(self.infer(x)), geometries, self.resolved)

    @torch.inference_mode()
    def infer(self, x: torch.Tensor) -> Any:
        """The module's raw output for a uint8 N x H x W x 3 batch already on the device:
        normalised there, run under the model's precision (the benchmark times this)."""
        # NHWC viewed as NCHW is channels_last in memory: no copy before the first conv.
        x = x.permute(0, 3, 1, 2).float().mul_(self._scale).add_(self._shift)
        module: Callable[..., Any] = self.module
        if self._compiled is not None:
            module = self._compiled
            if x.shape[0] > 1:  # one graph for every batch of 2 or more (1 is its own)
                torch._dynamo.mark_dynamic(x, 0)
        with self.autocast():
            return module(x)

    def autocast(self) -> AbstractContextManager[Any]:
        """The forward pass's autocast context for the model's precision (none for float32)."""
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def _on_device(self, batch: npt.NDArray[np.uint8] | Sequence[Pixels]) -> torch.Tensor:
        """The uint8 N x H x W x 3 batch on the device: host arrays stacked (on CUDA into a
        pinned buffer, copied asynchronously), device-decoded images joined in their places."""
        if isinstance(batch, np.ndarray):
            return self._upload(batch)
        host = [i for i, p in enumerate(batch) if isinstance(p, np.ndarray)]
        if len(host) == len(batch):
            return self._upload(batch)  # type: ignore[arg-type]
        on_device = [p if isinstance(p, torch.Tensor) else None for p in batch]
        if host:
            uploaded = self._upload([batch[i] for i in host])  # type: ignore[misc]
            for j, i in enumerate(host):
                on_device[i] = uploaded[j]
        return torch.stack([p for p in on_device if p is not None])

    def _upload(
        self, arrays: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]]
    ) -> torch.Tensor:
        if self._pinned is None:
            stacked = arrays if isinstance(arrays, np.ndarray) else np.stack(arrays)
            return torch.from_numpy(stacked).to(self.device)
        shape = tuple(arrays[0].shape)
        host = self._pinned.take(len(arrays), shape)
        if isinstance(arrays, np.ndarray):
            host.numpy()[...] = arrays
        else:
            np.stack(arrays, out=host.numpy())
        on_device = host.to(self.device, non_blocking=True)
        self._pinned.copied(shape)
        return on_device

    def warm_up(self, batch_sizes: Sequence[int], height: int, width: int) -> None:
        """Run dummy batches so the first requests do not pay for lazy initialisation; a
        compiled module is also compiled for batch 2, the graph of every larger batch."""
        sizes = list(batch_sizes)
        if self._compiled is not None and 2 not in sizes:
            sizes.append(2)
        for n in sizes:
            self.forward(np.zeros((n, height, width, 3), dtype=np.uint8))


def _input_shape(sample: Sample) -> tuple[int, ...]:
    """The H x W x 3 shape a sample has on the model input (a JPEG's once placed)."""
    if isinstance(sample.pixels, Jpeg):
        geometry = sample.meta.geometry
        return (geometry.input_height, geometry.input_width, 3)
    return tuple(sample.pixels.shape)
