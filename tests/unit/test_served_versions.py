"""One model served in several versions at once, without Ray: the config's rules, which version
is the latest, the deployment each version runs as and its options, and how a request that names
a version (or none) is routed to it and answered by it alone."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from ray.serve._private.build_app import build_app as build_deployments
from ray.serve.deployment import deployment_to_schema

import graph
from deployments.errors import UnknownModel
from deployments.flow.caller import Caller
from deployments.flow.health import ModelState
from deployments.flow.tally import Counts
from deployments.items import Item, ItemError, Options, Result, latest_version, of_version
from deployments.transports import oip_tensors
from deployments.transports.base import Front, IngressSettings
from deployments.transports.oip_repository import OipRepository
from tests import settings
from tests.unit.test_poison import Response, _result

SERVED = graph.load_app_config()
COLOURS = {"name": "tests.fixtures.models:colours"}
SWAPPED = {**COLOURS, "kwargs": {"swapped": True}}
ECHO = {"name": "tests.fixtures.models:echo", "weights": "none"}


def _args(*models: dict[str, Any], default: str = "shapes-detector") -> dict[str, Any]:
    base = SERVED["args"]["models"][:1]  # the shipped detector, as the default model
    return {**SERVED["args"], "models": [*base, *models], "default_model": default}


# --- config -------------------------------------------------------------------------------------


def test_one_name_may_be_listed_once_per_version() -> None:
    args = graph.AppArgs.model_validate(
        _args(
            {"name": "colours", "version": "1", "model": SWAPPED},
            {"name": "colours", "version": "2", "model": COLOURS},
        )
    )
    assert args.versions("colours") == ("1", "2")
    assert args.served("colours").model.kwargs == {}  # the latest, "2"
    assert args.served("colours", "1").model.kwargs == {"swapped": True}
    with pytest.raises(ValueError, match=r"listed once; repeated: \['colours version 2'\]"):
        graph.AppArgs.model_validate(
            _args(
                {"name": "colours", "version": "2", "model": SWAPPED},
                {"name": "colours", "version": "2", "model": COLOURS},
            )
        )


def test_every_version_of_a_model_serves_one_task() -> None:
    # Given in the specs: refused when the args are read.
    with pytest.raises(ValueError, match="every version of 'x' must serve one task"):
        graph.AppArgs.model_validate(
            _args(
                {"name": "x", "version": "1", "model": {**ECHO, "task": "classification"}},
                {"name": "x", "version": "2", "model": {**COLOURS, "task": "segmentation"}},
            )
        )
    # Found when the models resolve: refused when the graph is built.
    mixed = _args(
        {"name": "x", "version": "1", "model": ECHO},
        {"name": "x", "version": "2", "model": COLOURS},
    )
    with pytest.raises(ValueError, match=r"'x'.*\{'1': 'classification', '2': 'segmentation'\}"):
        graph.build_app(graph.AppArgs.model_validate(mixed))


def test_a_name_that_would_share_another_versions_deployment_is_refused() -> None:
    with pytest.raises(ValueError, match=r"same deployment \['Model-colours-v1'\]"):
        graph.AppArgs.model_validate(
            _args(
                {"name": "colours", "version": "1", "model": COLOURS},
                {"name": "colours", "version": "2", "model": COLOURS},
                {"name": "colours-v1", "model": COLOURS},
            )
        )


@pytest.mark.parametrize(
    ("versions", "latest"),
    [
        (["1"], "1"),
        (["1", "2"], "2"),
        (["2", "1"], "2"),  # numerically highest, wherever listed
        (["9", "10"], "10"),  # numbers, not strings
        (["10", "9"], "10"),
        (["beta", "alpha"], "alpha"),  # not all digits: the one listed last
        (["2", "1-rc"], "1-rc"),
    ],
)
def test_the_latest_version(versions: list[str], latest: str) -> None:
    assert latest_version(versions) == latest


def test_the_latest_version_keeps_the_models_deployment_and_others_get_v_suffixes() -> None:
    args = graph.AppArgs.model_validate(
        _args(
            {
                "name": "shapes-detector",
                "version": "2",
                "model": SERVED["args"]["models"][0]["model"],
            },
            {"name": "colours", "version": "7", "model": COLOURS},
            {"name": "colours", "version": "10", "model": COLOURS},
        )
    )
    assert args.latest("shapes-detector") == "2"
    assert args.deployment_of("shapes-detector") == "Model"
    assert args.deployment_of("shapes-detector", "2") == "Model"
    assert args.deployment_of("shapes-detector", "1") == "Model-v1"
    assert args.deployment_of("colours") == args.deployment_of("colours", "10") == "Model-colours"
    assert args.deployment_of("colours", "7") == "Model-colours-v7"


def test_each_version_is_its_own_deployment_with_its_own_options() -> None:
    models = [
        {"name": "colours", "version": "1", "model": SWAPPED},
        {"name": "colours", "version": "2", "model": COLOURS},
    ]
    app_config = {
        "args": _args(*models),
        "deployments": [
            {"name": "Model-colours", "user_config": {"max_batch_size": 4}},
            {"name": "Model-colours-v1", "user_config": {"max_batch_size": 2}, "num_replicas": 3},
        ],
    }
    built = build_deployments(graph.build_configured_app(app_config), name=graph.APP_NAME)
    deployments = {d.name: d for d in built.deployments}
    assert set(deployments) == {
        "Ingress",
        "Preprocessor",
        "Postprocessor",
        "Model",
        "Model-colours",
        "Model-colours-v1",
    }
    schemas = {
        n: deployment_to_schema(d).model_dump(exclude_unset=True) for n, d in deployments.items()
    }
    assert schemas["Model-colours"]["user_config"] == {"max_batch_size": 4}
    assert schemas["Model-colours-v1"]["user_config"] == {"max_batch_size": 2}
    assert schemas["Model-colours-v1"]["num_replicas"] == 3
    assert schemas["Model"] == {"name": "Model"}  # left out of `deployments`: Serve's defaults
    # Each version's replica loads its own weights and stamps its own version.
    _, _, served_as, version = deployments["Model-colours-v1"].init_args
    assert (served_as, version) == ("colours", "1")
    assert deployments["Model-colours-v1"].init_args[0].kwargs == {"swapped": True}
    # Each version's card: its own input for the Preprocessor, its own labels for the
    # Postprocessor (the Ingress sends them with each bundle of that version).
    ingress: IngressSettings = deployments["Ingress"].init_args[3]
    cards = {(c.name, c.version): c for c in ingress.cards}
    assert (
        cards[("colours", "1")].resize.input_width,
        cards[("colours", "2")].resize.input_width,
    ) == (64, 96)
    assert cards[("colours", "1")].labels == ("background", "green", "red")
    assert cards[("colours", "2")].labels == ("background", "red", "green")
    assert deployments["Postprocessor"].init_args == ()  # model-agnostic: nothing per model


# --- routing ------------------------------------------------------------------------------------


def _front() -> Front:
    ingress = IngressSettings(
        cards=(),
        default_model="det",
        limits=settings.limits(),
        request_timeout_s=30,
        max_request_timeout_s=60,
        bundles=settings.bundles(),
        poison=settings.poison(),
        retry_after_s=1,
    )
    unused: Any = None
    models = dict.fromkeys([("colours", "1"), ("colours", "2"), ("det", "1")])
    tasks = {"colours": "segmentation", "det": "detection"}
    return Front(unused, ingress, unused, settings.catalogue(models, tasks), None)


def test_a_request_names_a_version_or_gets_the_latest() -> None:
    front = _front()
    assert front.versions == {"colours": ("1", "2"), "det": ("1",)}
    latest = front.item(b"x", Options(), "r", 1.0, "colours")
    assert (latest.version, latest.pinned) == ("2", False)
    named = front.item(b"x", Options(), "r", 1.0, "colours", "1")
    assert (named.version, named.pinned) == ("1", True)
    with pytest.raises(UnknownModel, match="no version '3'; its versions are 1, 2") as unknown:
        front.item(b"x", Options(), "r", 1.0, "colours", "3")
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_model")


def test_oip_checks_name_and_version_against_every_version_served() -> None:
    served = {"colours": ("1", "2"), "det": ("1",)}
    for version in (None, "", "1", "2"):
        oip_tensors.check_model("colours", version, served)
    with pytest.raises(UnknownModel, match="no version '3'; its versions are 1, 2"):
        oip_tensors.check_model("colours", "3", served)
    meta = oip_tensors.model_metadata("colours", served["colours"], _front().tasks["colours"])
    assert meta["versions"] == ["1", "2"]


def test_the_repository_lists_counts_and_configures_each_version() -> None:
    front = _front()
    states = {
        ("colours", "1"): ModelState(ready=True, state="ready", replicas=1),
        ("colours", "2"): ModelState(ready=False, state="warming"),
        ("det", "1"): ModelState(ready=True, state="scaled_to_zero"),
    }

    async def none() -> None:
        return None

    front.health = SimpleNamespace(problem=none, states=lambda: states)  # type: ignore[assignment]
    counts = {("colours", "1"): Counts(inference_count=4), ("colours", "2"): Counts()}

    async def totals() -> dict[tuple[str, str], Counts]:
        return counts

    repository = OipRepository(front, totals)
    index = asyncio.run(repository.index("", ready_only=False))
    assert [(e["name"], e["version"], e["state"]) for e in index] == [
        ("colours", "1", "READY"),
        ("colours", "2", "UNAVAILABLE"),
        ("det", "1", "READY"),
    ]
    stats = asyncio.run(repository.statistics("colours", None))["model_stats"]
    assert [(s["version"], s["inference_count"]) for s in stats] == [("1", 4), ("2", 0)]
    (one,) = asyncio.run(repository.statistics("colours", "1"))["model_stats"]
    assert one["inference_count"] == 4
    every = asyncio.run(repository.statistics("", None))["model_stats"]
    assert [(s["name"], s["version"]) for s in every] == [
        ("colours", "1"),
        ("colours", "2"),
        ("det", "1"),
    ]
    with pytest.raises(UnknownModel, match="its versions are 1, 2"):
        asyncio.run(repository.statistics("colours", "3"))


class Stages:
    """The Preprocessor (passes the items on) and the Postprocessor (answers each item as the
    version the Model's answer names)."""

    def options(self, **_: Any) -> Stages:
        return self

    def remote(self, *args: Any) -> Response:
        if len(args) < 3:  # the Preprocessor: the items and their version's input
            return Response(args[0])
        version, items = args[0].value, args[1].value
        return Response(tuple(replace(_result(i), model_version=version) for i in items))


class VersionedModel:
    """One version's Model deployment: it answers as `version`, or as the next of `answers_as`
    while there are any (replicas of a rollout)."""

    def __init__(self, version: str, answers_as: list[str] | None = None) -> None:
        self.version = version
        self.answers_as = list(answers_as or [])
        self.calls: list[int] = []  # items per bundle

    def options(self, **_: Any) -> VersionedModel:
        return self

    def remote(self, bundle: Response) -> Response:
        self.calls.append(len(bundle.value))
        return Response(self.answers_as.pop(0) if self.answers_as else self.version)


def _caller(models: dict[tuple[str, str], VersionedModel]) -> Caller:
    stages = Stages()
    return Caller(
        stages,  # type: ignore[arg-type]
        settings.catalogue(models),
        stages,  # type: ignore[arg-type]
        settings.bundles(max_items=4),
        settings.poison(quarantine_ttl_s=600, max_quarantined=100),
    )


def _items(n: int, version: str, pinned: bool) -> list[Item]:
    return [
        Item(f"{version}-{i}", "req", b"x", Options(), model="m", version=version, pinned=pinned)
        for i in range(n)
    ]


def _versions(answers: list[Result | ItemError]) -> list[str]:
    return [a.model_version if isinstance(a, Result) else a.code for a in answers]


def test_items_go_to_their_versions_deployment() -> None:
    v1, v2 = VersionedModel("1"), VersionedModel("2")
    caller = _caller({("m", "1"): v1, ("m", "2"): v2})

    async def scenario() -> tuple[list[Result | ItemError], ...]:
        return (
            await caller.many(_items(5, "1", pinned=True)),
            await caller.many(_items(3, "2", pinned=False)),
            [await caller.one(_items(1, "1", pinned=True)[0])],
        )

    first, latest, one = asyncio.run(scenario())
    assert (_versions(first), _versions(latest), _versions(one)) == (["1"] * 5, ["2"] * 3, ["1"])
    assert (v1.calls, v2.calls) == ([4, 1, 1], [3])


def test_a_named_version_is_answered_by_it_alone() -> None:
    # Its deployment is mid-rollout to "2": the items it answers as "2" go again, and those it
    # never answers as "1" get 503; an unnamed (latest) request takes whichever answers.
    rolling = VersionedModel("1", answers_as=["2", "1"])
    answers = asyncio.run(_caller({("m", "1"): rolling}).many(_items(4, "1", pinned=True)))
    assert _versions(answers) == ["1"] * 4
    assert rolling.calls == [4, 4]
    stuck = VersionedModel("2")
    answers = asyncio.run(_caller({("m", "1"): stuck}).many(_items(2, "1", pinned=True)))
    assert _versions(answers) == ["overloaded"] * 2
    one = asyncio.run(_caller({("m", "1"): stuck}).one(_items(1, "1", pinned=True)[0]))
    assert _versions([one]) == ["overloaded"]
    latest = asyncio.run(_caller({("m", "1"): VersionedModel("2")}).many(_items(2, "1", False)))
    assert _versions(latest) == ["2"] * 2


def test_a_stage_built_for_the_new_version_serves_the_old_ones_items_mid_rollout() -> None:
    # New weights under version 2, rolled out in place: new Preprocessor and Postprocessor
    # replicas know only ("m", "2"), yet old Ingress replicas still send items for "1", and old
    # Model replicas still answer as "1".
    table = {("m", "2"): "v2 settings", ("other", "1"): "other settings"}
    assert of_version(table, "m", "2") == "v2 settings"
    assert of_version(table, "m", "1") == "v2 settings"
    both = {("m", "1"): "v1", ("m", "10"): "v10", ("m", "9"): "v9"}
    assert of_version(both, "m", "1") == "v1"
    assert of_version(both, "m", "3") == "v10"  # the latest it has, numerically
    with pytest.raises(KeyError, match="'gone' is not served"):
        of_version(table, "gone", "1")
