"""Tasks as plug-ins: everything that depends on what a model does, one module per task.

A task says, behind the `Task` protocol below:
  * which torchvision models it serves, and their default preprocessing (input size, resize mode,
    normalisation) and constructor arguments;
  * the options a request may send (`option_specs`) and their deployment-wide defaults
    (`defaults`: a pydantic model, the task's section of the Postprocessor's `user_config`);
  * how the model's raw output for a batch becomes named arrays per item (`decode`, in the Model,
    in model-input pixels);
  * how one item's arrays become the client's predictions in original displayed pixels (`answer`,
    in the Postprocessor, which knows the item's `Meta`);
  * its result schema (`prediction_schema`, for `/docs` and the tests).

No other module compares task names. Adding a task is one module with a `TASK` object and one
line in `REGISTRY` (README: "Adding a task").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy.typing as npt
from pydantic import BaseModel

from deployments.errors import InvalidOption
from deployments.types import Geometry, Meta, Options, Prediction, ResizeMode

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

    from deployments.model_source import ModelSpec, Resolved

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


def _registry() -> dict[str, Task]:
    from deployments.tasks import classification, detection, segmentation

    tasks: tuple[Task, ...] = (
        classification.TASK,
        detection.TASK,
        segmentation.TASK,
        segmentation.INSTANCE_TASK,
    )
    return {t.name: t for t in tasks}


REGISTRY: dict[str, Task] = _registry()


def get(name: str) -> Task:
    """The task called `name`; an unknown one names the tasks there are."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; the tasks are {', '.join(sorted(REGISTRY))}"
        ) from None


def for_torchvision(name: str) -> Task | None:
    """The task a torchvision model does, or None when no registered task serves it."""
    for task in REGISTRY.values():
        if task.serves(name):
            return task
    return None


def parse_options(
    params: Mapping[str, str | int | float | None] | Sequence[tuple[str, str | int | float]],
    task: Task,
    max_candidates: int,
) -> Options:
    """Validate per-request options for `task`; an unknown, repeated, misapplied or bad value
    names itself and what to send instead."""
    specs = {s.name: s for s in task.option_specs(max_candidates)}
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    values: dict[str, int | float | str] = {}
    for name, raw in pairs:
        if raw is None:
            continue
        if name in values:
            raise InvalidOption(f"parameter {name} is given more than once")
        spec = specs.get(name)
        if spec is None:
            raise InvalidOption(_not_an_option(name, task, specs))
        values[name] = spec.parse(raw)
    return Options.of(values)


def _not_an_option(name: str, task: Task, specs: Mapping[str, OptionSpec]) -> str:
    mine = ", ".join(specs) or "none"
    others = [
        t.name
        for t in REGISTRY.values()
        if t is not task and name in {s.name for s in t.option_specs(1000)}
    ]
    if others:
        return (
            f"{name} applies to {' and '.join(others)}; this model does {task.name} "
            f"(its options: {mine})"
        )
    return f"unknown parameter {name!r}; the options of this model ({task.name}) are: {mine}"


def all_option_specs() -> dict[str, tuple[OptionSpec, list[str]]]:
    """Every option any task takes, with the tasks that take it (for `/docs`)."""
    found: dict[str, tuple[OptionSpec, list[str]]] = {}
    for task in REGISTRY.values():
        for spec in task.option_specs(1000):
            found.setdefault(spec.name, (spec, []))[1].append(task.name)
    return found


def defaults_for(task: Task, user_config: Mapping[str, Any]) -> BaseModel:
    """The active task's option defaults from the Postprocessor's `user_config`.

    `user_config` has one section per task (`classification: {top_k: 5}`, ...), so one config
    serves any model; every section is validated, so a typo fails the update even in a section
    the current model does not use.
    """
    unknown = sorted(set(user_config) - set(REGISTRY))
    if unknown:
        raise ValueError(
            f"Postprocessor user_config has sections {unknown}; the sections are the tasks: "
            f"{', '.join(sorted(REGISTRY))}"
        )
    validated = {
        name: REGISTRY[name].defaults.model_validate(section or {})
        for name, section in user_config.items()
    }
    return validated.get(task.name) or task.defaults()
