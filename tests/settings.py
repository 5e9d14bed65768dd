"""The settings serve_config.yaml gives the service, for tests that call its parts directly.

The code has no defaults of its own (`deployments.settings`): a test that needs settings takes
serve_config.yaml's, validated by the same types the service uses, and changes only what it is
about (`limits(max_image_bytes=4096)`). Ray-free: it reads the file, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from deployments.flow.catalogue import Catalogue, ModelCard, Served
from deployments.pixels.imaging import ResizeSpec
from deployments.settings import Batching, Bundles, Limits, Poison
from deployments.tasks import Task
from tools.serve_process import APP, load_config, named_item


def served_app() -> dict[str, Any]:
    """serve_config.yaml's application: its `args` and its `deployments`."""
    app: dict[str, Any] = named_item(load_config()["applications"], APP)
    return app


def user_config(deployment: str) -> dict[str, Any]:
    """One deployment's `user_config` in serve_config.yaml."""
    found: dict[str, Any] = named_item(served_app()["deployments"], deployment)["user_config"]
    return found


def limits(**changes: int) -> Limits:
    """serve_config.yaml's `limits`, with `changes`."""
    return Limits.model_validate({**served_app()["args"]["limits"], **changes})


def bundles(**changes: float) -> Bundles:
    """serve_config.yaml's `bundles`, with `changes`."""
    return Bundles.model_validate({**served_app()["args"]["bundles"], **changes})


def poison(**changes: float) -> Poison:
    """serve_config.yaml's `poison`, with `changes`."""
    return Poison.model_validate({**served_app()["args"]["poison"], **changes})


def batching(**changes: float) -> Batching:
    """The Model's `user_config` in serve_config.yaml, with `changes`."""
    return Batching.model_validate({**user_config("Model"), **changes})


def task_defaults(task: Task, **changes: Any) -> BaseModel:
    """`task`'s section of the Postprocessor's `user_config` in serve_config.yaml, with
    `changes`: the options a request gets when it sends none."""
    return task.defaults.model_validate({**user_config("Postprocessor")[task.name], **changes})


def card(name: str, version: str, task: str = "classification") -> ModelCard:
    """A model version's card for tests that route without a model: any input, no labels."""
    resize = ResizeSpec(mode="stretch", input_width=8, input_height=8)
    return ModelCard(name, version, task, "fake", (), 100, resize)


def catalogue(models: Mapping[tuple[str, str], Any], tasks: Mapping[str, str] = {}) -> Catalogue:
    """A catalogue of bound model versions (`models`: each one's stand-in handle), each of the
    task `tasks` names for its model (classification when left out)."""
    bound = {
        key: Served(card(*key, tasks.get(key[0], "classification")), handle, APP, "Model")
        for key, handle in models.items()
    }
    return Catalogue(APP, bound)
