"""The work every peer does, built from the graph's own generated config so nothing differs.

decode: `deployments.pixels.imaging.decode` with the graph's `ResizeSpec` and `Limits`;
model: `deployments.runtime.model_source.load` (resnet18, `weights: none`, seed 0); forward pass:
`deployments.runtime.inference.Runner.forward` (uint8 NHWC in, softmax top-k out); labels:
`deployments.tasks.label_for`. No Ray, no HTTP: the peers wrap this in their own stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from deployments.pixels.imaging import decode
from deployments.runtime.inference import Runner
from deployments.runtime.model_source import resolve
from deployments.tasks import label_for
from graph import AppArgs, decode_settings

TOP_K = 5


class Classifier:
    """decode -> batched forward -> top-5, for one process; thread-safe for decoding."""

    def __init__(self, app_args: dict[str, Any], torch_threads: int | None = None) -> None:
        args = AppArgs.model_validate(app_args)
        threads = torch_threads or args.model.torch_threads
        if threads:
            torch.set_num_threads(threads)
        self.args = args
        self.resolved = r = resolve(args.model)
        self.resize, self.limits = decode_settings(args, r)
        self.runner = Runner.for_model(args.model, r)
        self.runner.warm_up([1, 8], r.input_height, r.input_width)

    def decode(self, data: bytes) -> npt.NDArray[np.uint8]:
        return decode(data, self.resize, self.limits).pixels

    def forward(self, pixels: Sequence[npt.NDArray[np.uint8]]) -> list[dict[str, Any]]:
        """One forward pass over `pixels`; per image the JSON body the peer answers with."""
        outputs = self.runner.forward(np.stack(pixels))
        n = len(pixels)
        return [self.body(out["class_ids"], out["scores"], n) for out in outputs]

    def body(self, ids: Any, scores: Any, batch_size: int) -> dict[str, Any]:
        labels = self.resolved.labels
        return {
            "model": self.resolved.name,
            "predictions": [
                {"label": label_for(labels, int(c)), "class_id": int(c), "score": float(s)}
                for c, s in zip(ids[:TOP_K], scores[:TOP_K], strict=True)
            ],
            "batch_size": batch_size,
        }
