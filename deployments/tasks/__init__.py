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
line in `REGISTRY` (README: "Adding a task"); plug-ins import `deployments.tasks.base`, which
holds the protocol and what they share, never this package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from deployments.errors import InvalidOption
from deployments.items import Options
from deployments.tasks.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NO_NORMALISATION,
    Arrays,
    OptionSpec,
    Preprocessing,
    Task,
    label_for,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NO_NORMALISATION",
    "REGISTRY",
    "Arrays",
    "OptionSpec",
    "Preprocessing",
    "Task",
    "all_option_specs",
    "defaults_for",
    "for_torchvision",
    "get",
    "label_for",
    "parse_options",
]


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
    the current model does not use. The code has no defaults of its own: a section (or a key in
    it) that the active task needs and the config leaves out is an error that names it.
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
    if task.name not in validated:
        raise ValueError(
            f"Postprocessor user_config has no section {task.name!r}, the options a request for "
            f"a {task.name} model gets when it sends none (serve_config.yaml has every section)"
        )
    return validated[task.name]
