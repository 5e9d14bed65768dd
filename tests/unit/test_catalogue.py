"""The Ingress's catalogue, without Ray (`deployments.flow.catalogue`): model applications are
found from the controller's configs and routed once their card is published; the configs are
read again only when the applications' statuses change; a version that would clash with a bound
one or change a model's task is not routed."""

from __future__ import annotations

from typing import Any

from deployments.flow.catalogue import Catalogue, ModelCard, Served, args_digest
from tests import settings


def _app(name: str, version: str, front: str = "vision") -> dict[str, Any]:
    return {
        "import_path": "vision_serve.graph:build_model",
        "args": {"front": front, "name": name, "version": version, "model": {"name": "m"}},
    }


class Controller:
    """The configs the controller holds and the cards builders published; counts the reads."""

    def __init__(self) -> None:
        self.configs: dict[str, dict[str, Any]] = {"vision": {"import_path": "x:build_app"}}
        self.cards: dict[str, ModelCard] = {}
        self.reads = 0

    def read(self) -> dict[str, dict[str, Any]]:
        self.reads += 1
        return self.configs

    def add(self, app: str, config: dict[str, Any], task: str = "classification") -> None:
        self.configs[app] = config
        args = config["args"]
        self.cards[args_digest(args)] = settings.card(args["name"], args["version"], task)


def _catalogue(controller: Controller) -> Catalogue:
    bound = {("det", "1"): Served(settings.card("det", "1"), "bound", "vision", "Model")}
    return Catalogue(
        "vision",
        bound,
        app_configs=controller.read,
        read=controller.cards.get,
        handle=lambda deployment, app: f"{app}#{deployment}",
    )


def test_model_applications_are_routed_once_their_card_is_published() -> None:
    controller = Controller()
    catalogue = _catalogue(controller)
    controller.configs["seg-v1"] = _app("seg", "1")  # its builder has not run yet
    controller.configs["other"] = _app("x", "1", front="another-front")
    assert not catalogue.refresh()
    assert catalogue.view.versions == {"det": ("1",)}
    controller.add("seg-v1", _app("seg", "1"), task="segmentation")
    controller.add("seg-v2", _app("seg", "2"), task="segmentation")
    assert catalogue.refresh()
    view = catalogue.view
    assert view.versions == {"det": ("1",), "seg": ("1", "2")}
    assert view.latest["seg"] == "2" and view.tasks["seg"].name == "segmentation"
    served = view.served[("seg", "1")]
    assert (served.app, served.handle, served.own_app) == ("seg-v1", "seg-v1#Model", True)
    assert set(view.answers("seg")) == {("seg", "1"), ("seg", "2")}
    del controller.configs["seg-v1"]  # unloaded
    assert catalogue.refresh()
    assert catalogue.view.versions["seg"] == ("2",)


def test_the_configs_are_read_again_only_when_the_statuses_change() -> None:
    controller = Controller()
    catalogue = _catalogue(controller)
    controller.add("seg-v1", _app("seg", "1"))
    catalogue.refresh(stamp=("a",))
    catalogue.refresh(stamp=("a",))
    assert controller.reads == 1
    catalogue.refresh(stamp=("b",))
    assert controller.reads == 2
    controller.configs["late-v1"] = _app("late", "1")  # no card yet: read until it is routed
    catalogue.refresh(stamp=("c",))
    catalogue.refresh(stamp=("c",))
    assert controller.reads == 4
    controller.add("late-v1", _app("late", "1"))
    catalogue.refresh(stamp=("c",))
    assert "late" in catalogue.view.versions
    catalogue.refresh(stamp=("c",))
    assert controller.reads == 5


def test_a_version_that_clashes_or_changes_the_task_is_not_routed() -> None:
    controller = Controller()
    catalogue = _catalogue(controller)
    controller.add("det-v1", _app("det", "1"))  # the bound det version 1 keeps its route
    controller.add("det-v2", _app("det", "2"), task="detection")  # det classifies
    controller.add("det-v3", _app("det", "3"))
    catalogue.refresh()
    view = catalogue.view
    assert view.versions["det"] == ("1", "3")
    assert view.served[("det", "1")].handle == "bound"
