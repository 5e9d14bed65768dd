"""Every setting has one home, serve_config.yaml: the settings types have no defaults of their own,
so a key a config leaves out is refused with its name, never filled in by the code."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from deployments import tasks
from deployments.settings import Batching, Bundles, Limits, Poison
from tests import settings

ARGS = settings.served_app()["args"]
OPTIONS = settings.user_config("Postprocessor")
# Each type with its section of serve_config.yaml.
SECTIONS: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (Limits, ARGS["limits"]),
    (Bundles, ARGS["bundles"]),
    (Poison, ARGS["poison"]),
    (Batching, settings.user_config("Model")),
    *((task.defaults, OPTIONS[name]) for name, task in sorted(tasks.REGISTRY.items())),
]
KEYS = [(kind, section, key) for kind, section in SECTIONS for key in section]


@pytest.mark.parametrize(("kind", "section"), SECTIONS, ids=[k.__name__ for k, _ in SECTIONS])
def test_serve_config_sets_every_field(kind: type[BaseModel], section: dict[str, Any]) -> None:
    assert set(section) == set(kind.model_fields)
    kind.model_validate(section)


@pytest.mark.parametrize(
    ("kind", "section", "key"), KEYS, ids=[f"{k.__name__}.{key}" for k, _, key in KEYS]
)
def test_a_key_left_out_is_refused_by_name(
    kind: type[BaseModel], section: dict[str, Any], key: str
) -> None:
    with pytest.raises(ValueError, match=key):
        kind.model_validate({k: v for k, v in section.items() if k != key})


def test_the_option_defaults_of_a_served_task_must_be_configured() -> None:
    detection = tasks.get("detection")
    assert tasks.defaults_for(detection, OPTIONS) == settings.task_defaults(detection)
    without = {name: section for name, section in OPTIONS.items() if name != "detection"}
    with pytest.raises(ValueError, match="no section 'detection'"):
        tasks.defaults_for(detection, without)
    tasks.defaults_for(tasks.get("classification"), without)  # a section it does not use
