"""Loading and unloading models, without Ray (`deployments.flow.repository`): the management key
fails closed, a load adds only its own application and submits every other one unchanged, an
unload parks the application for a later load, and a loaded config may not name code or files
the deployed config does not."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.errors import (
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    Unauthorized,
    UnknownModel,
)
from deployments.flow import repository as repository_module
from deployments.flow.catalogue import Catalogue, Served
from deployments.flow.repository import Repository
from tests import settings

FRONT = {
    "name": "vision",
    "route_prefix": "/",
    "import_path": "vision_serve.graph:build_app",
    "args": {"models": [{"name": "det", "model": {"name": "shapes.model:build_detector"}}]},
    "deployments": [{"name": "Model", "user_config": {"max_batch_size": 8}}],
}
SEG = {
    "name": "vision-seg",
    "route_prefix": None,
    "import_path": "vision_serve.graph:build_model",
    "args": {
        "front": "vision",
        "name": "seg",
        "version": "1",
        "model": {"name": "shapes.segmenter:build_segmenter", "weights": "shapes/seg.pt"},
    },
    "deployments": [{"name": "Model", "user_config": {"max_batch_size": 4}, "num_replicas": 1}],
}


class Kv:
    """Ray's key-value store's calls the repository makes, in a dict."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def _internal_kv_put(self, key: bytes, value: bytes, overwrite: bool, namespace: str) -> None:
        self.data[key] = value

    def _internal_kv_get(self, key: bytes, namespace: str) -> bytes | None:
        return self.data.get(key)

    def _internal_kv_del(self, key: bytes, namespace: str) -> None:
        self.data.pop(key, None)

    def _internal_kv_list(self, prefix: bytes, namespace: str) -> list[bytes]:
        return [k for k in self.data if k.startswith(prefix)]


class Client:
    """The Serve client: what was submitted, and the configs it now holds."""

    def __init__(self, configs: dict[str, dict[str, Any]]) -> None:
        self.configs = configs
        self.submitted: list[dict[str, dict[str, Any]]] = []

    def get_serve_details(self) -> dict[str, Any]:
        return {"target_capacity": None}

    def deploy_apps(self, schema: Any, _blocking: bool) -> None:
        self.configs = {a.name: a.model_dump(exclude_unset=True) for a in schema.applications}
        self.submitted.append(self.configs)


def _repository(key: str | None = "mk") -> tuple[Repository, Client]:
    client = Client({"vision": FRONT, "vision-seg": SEG})
    bound = {("det", "1"): Served(settings.card("det", "1"), None, "vision", "Model")}
    catalogue = Catalogue("vision", bound)
    repository = Repository(catalogue, key, lambda: client, lambda: client.configs, Kv())
    return repository, client


def _load(repository: Repository, name: str, config: str | None) -> list[str]:
    """A load's two steps, without the waits in between (`Repository.load`)."""
    return repository._submit_load(name, repository._plan_load(name, config))


def test_management_fails_closed_and_wants_its_own_key() -> None:
    off, _ = _repository(key=None)
    with pytest.raises(Forbidden, match="VISION_MANAGEMENT_KEY") as caught:
        off.authorize("Bearer anything")
    assert caught.value.status == 403
    on, _ = _repository()
    for wrong in (None, "", "Bearer other", "mk"):
        with pytest.raises(Unauthorized):
            on.authorize(wrong)
    on.authorize("Bearer mk")


def test_unload_then_load_submits_only_that_application_changed() -> None:
    repository, client = _repository()
    assert repository._submit_unload("seg") == ["vision-seg"]
    assert client.submitted[-1] == {"vision": FRONT}  # the front as it was: no restart
    assert list(repository.parked()) == ["vision-seg"]
    assert repository._submit_unload("seg") == []  # already unloaded: nothing to do
    assert _load(repository, "seg", None) == ["vision-seg"]
    assert client.submitted[-1] == {"vision": FRONT, "vision-seg": SEG}  # back as it was
    assert repository.parked() == {}


def test_a_bound_model_is_not_unloaded_and_an_unknown_one_not_loaded() -> None:
    repository, client = _repository()
    with pytest.raises(BadRequest, match="bound into the application 'vision'"):
        repository._submit_unload("det")
    with pytest.raises(UnknownModel, match="not in the repository"):
        _load(repository, "nothing", None)
    with pytest.raises(UnknownModel):
        repository._submit_unload("nothing")
    assert client.submitted == []


def test_a_load_with_a_config_adds_its_application_with_known_options() -> None:
    repository, client = _repository()
    config = {"version": "3", "model": {"name": "resnet18", "weights": "none"}}
    (app,) = _load(repository, "cls", json.dumps(config))
    added = client.submitted[-1][app]
    assert added["args"] == {"front": "vision", "name": "cls", "version": "3", **config}
    assert added["import_path"] == "vision_serve.graph:build_model"
    assert added["route_prefix"] is None
    # No `deployment` given: a model application's options are copied.
    assert added["deployments"] == [SEG["deployments"][0]]
    assert {k: client.submitted[-1][k] for k in ("vision", "vision-seg")} == {
        "vision": FRONT,
        "vision-seg": SEG,
    }


@pytest.mark.parametrize(
    ("model", "refused"),
    [
        ({"name": "evil.module:run", "weights": "none"}, "factory"),
        ({"name": "resnet18", "weights": "/etc/shadow.pt"}, "file"),
        ({"name": "resnet18", "weights": "none", "labels": "/etc/passwd"}, "labels"),
    ],
)
def test_a_loaded_config_may_not_name_code_or_files_the_config_does_not(
    model: dict[str, Any], refused: str
) -> None:
    repository, client = _repository()
    with pytest.raises(BadRequest, match=refused):
        _load(repository, "x", json.dumps({"model": model}))
    assert client.submitted == []


@pytest.mark.parametrize(
    ("name", "config", "problem"),
    [
        ("ok", "{", "not valid"),
        ("ok", json.dumps({"model": {"name": "resnet18"}, "extra": 1}), "extra"),
        ("ok", json.dumps({"version": "no/slash", "model": {"name": "resnet18"}}), "version"),
        ("Bad Name", json.dumps({"model": {"name": "resnet18"}}), "lower-case"),
        ("ok", " " * 70000, "over 65536 bytes"),
    ],
)
def test_a_load_config_that_cannot_be_served_is_a_400_that_says_why(
    name: str, config: str, problem: str
) -> None:
    repository, _ = _repository()
    with pytest.raises(BadRequest, match=problem) as caught:
        _load(repository, name, config)
    assert caught.value.status == 400


def test_the_model_applications_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repository_module, "MAX_MODEL_APPS", 1)  # `seg` is there already
    repository, client = _repository()
    config = json.dumps({"model": {"name": "resnet18", "weights": "none"}})
    with pytest.raises(BadRequest, match=r"the most it keeps \(1\)"):
        _load(repository, "cls", config)
    assert client.submitted == []


def test_a_load_waits_for_the_same_application_to_finish_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unload answers once nothing is routed to the model; a load right after it waits until
    Serve has deleted the stopping application before submitting it again."""
    statuses = iter([{"vision-seg": "DELETING"}, {"vision-seg": "DELETING"}, {}])
    seen: list[dict[str, str]] = []

    def status() -> SimpleNamespace:
        apps = next(statuses, {})
        seen.append(apps)
        return SimpleNamespace(applications=apps)

    monkeypatch.setattr(repository_module, "serve_status", status)
    monkeypatch.setattr(repository_module, "POLL_S", 0.0)
    repository, _ = _repository()
    asyncio.run(repository._wait(["vision-seg"], time.time() + 60, loaded=False, gone=True))
    assert seen == [{"vision-seg": "DELETING"}, {"vision-seg": "DELETING"}, {}]
    stuck = SimpleNamespace(applications={"vision-seg": "DELETING"})
    monkeypatch.setattr(repository_module, "serve_status", lambda: stuck)
    with pytest.raises(DeadlineExceeded, match="goes on after this request's deadline"):
        asyncio.run(repository._wait(["vision-seg"], time.time(), loaded=False, gone=True))
