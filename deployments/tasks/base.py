"""What every task plug-in builds on: the `Task` protocol, option specs, default preprocessing.

Plug-ins import this module, never their package: the package's `__init__` imports the plug-ins
to build its registry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy.typing as npt
from pydantic import BaseModel

from deployments.errors import InvalidOption
from deployments.items import Geometry, Meta, Prediction, ResizeMode

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

    from deployments.runtime.spec import ModelSpec, Resolved

Arrays = dict[str, npt.NDArray[Any]]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_NORMALISATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One per-request option: its name, its kind and bounds, and what it does (for `/docs`)."""

    name: str
    kind: Literal["int", "probability", "choice"]
    description: str
    low: int = 1
    high: int = 1000
    choices: tuple[str, ...] = ()

    def parse(self, raw: str | int | float) -> int | float | str:
        """The validated value; a bad one raises `InvalidOption` naming the option and its range."""
        text = str(raw)
        if self.kind == "choice":
            if text not in self.choices:
                raise InvalidOption(
                    f"{self.name} must be one of {', '.join(self.choices)}; got {text!r}"
                )
            return text
        if self.kind == "probability":
            try:
                value = float(text)
            except ValueError:
                raise InvalidOption(
                    f"{self.name} must be a number from 0 to 1; got {text!r}"
                ) from None
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise InvalidOption(f"{self.name} must be a number from 0 to 1; got {text}")
            return value
        try:
            number = int(text)
        except ValueError:
            raise InvalidOption(
                f"{self.name} must be an integer from {self.low} to {self.high}; got {text!r}"
            ) from None
        if not self.low <= number <= self.high:
            raise InvalidOption(
                f"{self.name} must be an integer from {self.low} to {self.high}; got {number}"
            )
        return number


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """A model's default input geometry and normalisation (explicit model args win)."""

    input_size: int | tuple[int, int]
    resize: ResizeMode
    resize_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Task(Protocol):
    """What a task plug-in provides; see the module docstring."""

    name: str
    summary: str  # one line for /docs and /v1/model
    custom_input_size: int  # input side for import-path models that declare none

    @property
    def defaults(self) -> type[BaseModel]:
        """Per-request option defaults: this task's section of the Postprocessor's user_config."""
        ...

    @property
    def prediction_schema(self) -> type[BaseModel]:
        """One entry of a result's `predictions`."""
        ...

    def serves(self, torchvision_name: str) -> bool:
        """Whether this torchvision model (`torchvision.models.list_models()`) does this task."""
        ...

    def preprocessing(self, entry: WeightsEnum | None, spec: ModelSpec) -> Preprocessing:
        """Default preprocessing of a torchvision model, from its weights entry when known."""
        ...

    def constructor_kwargs(self, spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
        """Extra torchvision constructor arguments (the spec's own `kwargs` win)."""
        ...

    def option_specs(self, max_candidates: int) -> tuple[OptionSpec, ...]:
        """The options a request may send; `max_candidates` is what the Model keeps per image."""
        ...

    def decode(
        self, output: Any, geometries: Sequence[Geometry], resolved: Resolved
    ) -> list[Arrays]:
        """The module's output for a batch -> named arrays per item (one per geometry, which
        says how that item's displayed pixels map to the model input)."""
        ...

    def answer(
        self, arrays: Arrays, meta: Meta, labels: Sequence[str], options: Mapping[str, Any]
    ) -> tuple[tuple[Prediction, ...], dict[str, Any]]:
        """One item's arrays -> its predictions in displayed pixels, and extra result fields."""
        ...


def label_for(labels: Sequence[str], class_id: int) -> str:
    """The class name, or `class_<id>` when the model has more classes than named labels."""
    return labels[class_id] if 0 <= class_id < len(labels) else f"class_{class_id}"
