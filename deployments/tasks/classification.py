"""Classification: the k most probable classes of the whole image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.items import Geometry, Meta, Prediction
from deployments.tasks.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Arrays,
    OptionSpec,
    Preprocessing,
    label_for,
)

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

    from deployments.runtime.spec import ModelSpec, Resolved


class Defaults(BaseModel):
    """What a request gets for options it does not send (the Postprocessor's user_config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int = Field(ge=1)


class ClassOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    class_id: int
    score: float


class Classification:
    name = "classification"
    summary = "the k most probable classes of the image"
    defaults = Defaults
    prediction_schema = ClassOut
    custom_input_size = 224

    def serves(self, torchvision_name: str) -> bool:
        import torchvision  # only where a model is resolved: the CPU stages never import torch

        return torchvision_name in torchvision.models.list_models(module=torchvision.models)

    def preprocessing(self, entry: WeightsEnum | None, spec: ModelSpec) -> Preprocessing:
        preset = entry.transforms() if entry is not None else None
        if preset is None:
            return Preprocessing(224, "resize_crop", 256, IMAGENET_MEAN, IMAGENET_STD)
        return Preprocessing(
            input_size=int(preset.crop_size[0]),
            resize="resize_crop",
            resize_size=int(preset.resize_size[0]),
            mean=tuple(preset.mean),
            std=tuple(preset.std),
        )

    def constructor_kwargs(self, spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
        return {}

    def option_specs(self, max_candidates: int) -> tuple[OptionSpec, ...]:
        return (OptionSpec("top_k", "int", "how many classes, best first", 1, max_candidates),)

    def decode(
        self, output: Any, geometries: Sequence[Geometry], resolved: Resolved
    ) -> list[Arrays]:
        import torch  # decode runs in the Model, which has torch loaded already

        probs = torch.softmax(output.float(), dim=1)
        scores, ids = probs.topk(min(resolved.max_candidates, probs.shape[1]), dim=1)
        s, c = scores.cpu().numpy(), ids.cpu().numpy().astype(np.int64)
        return [{"class_ids": c[i], "scores": s[i]} for i in range(len(geometries))]

    def answer(
        self, arrays: Arrays, meta: Meta, labels: Sequence[str], options: Mapping[str, Any]
    ) -> tuple[tuple[Prediction, ...], dict[str, Any]]:
        """The k most probable classes, best first (the Model already sorted them)."""
        class_ids, scores = arrays["class_ids"], arrays["scores"]
        n = min(int(options["top_k"]), len(scores))
        predictions = tuple(
            Prediction(label=label_for(labels, int(c)), class_id=int(c), score=float(s))
            for c, s in zip(class_ids[:n], scores[:n], strict=True)
        )
        return predictions, {}


TASK = Classification()
