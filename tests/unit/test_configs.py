"""Every shipped Serve config validates, resolves without weights, and fits a 2-core laptop.

The example configs are rendered from serve_config.yaml and an overlay each (configs/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray.serve.schema import ServeDeploySchema

from deployments import tasks
from deployments.runtime.model_source import resolve
from deployments.settings import Batching
from graph import AppArgs
from tests.serving import ROOT, load_config
from tools import render

CONFIGS = [ROOT / "serve_config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


def _app(config: dict[str, Any]) -> dict[str, Any]:
    app: dict[str, Any] = config["applications"][0]
    return app


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates_and_resolves(path: Path) -> None:
    config = load_config(path)
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    assert (app.name, app.route_prefix) == ("vision", "/")
    assert app.import_path == "vision_serve.graph:build_app"  # installed, there is no `graph`
    assert schema.http_options.port == 8000
    args = AppArgs.model_validate(app.args)
    resolved = resolve(args.model)
    assert resolved.labels, "labels must be known before any weight is loaded"
    names = [d.name for d in app.deployments]
    models = [args.deployment_of(m.name, m.version) for m in args.models]
    assert names == ["Ingress", "Preprocessor", *models, "Postprocessor"]
    assert models[0] == "Model", "the default model's deployment keeps the one-model name"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_stage_gets_a_user_config_it_accepts(path: Path) -> None:
    # The stages have no defaults of their own: a replica without its user_config never serves.
    app = _app(load_config(path))
    args = AppArgs.model_validate(app["args"])
    deployments = {d["name"]: d for d in app["deployments"]}
    options = deployments["Postprocessor"]["user_config"]
    for served in args.models:
        Batching.model_validate(
            deployments[args.deployment_of(served.name, served.version)]["user_config"]
        )
        tasks.defaults_for(tasks.get(resolve(served.model).task), options)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_model_can_hold_full_batches_and_graph_fits_two_cores(path: Path) -> None:
    deployments = {d["name"]: d for d in _app(load_config(path))["deployments"]}
    for name, model in deployments.items():
        if name.startswith("Model"):
            assert model["max_ongoing_requests"] >= model["user_config"]["max_batch_size"]

    def cpus(d: dict[str, Any]) -> float:
        return float(d.get("ray_actor_options", {}).get("num_cpus", 1))

    floor = sum(
        cpus(d) * d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
        for d in deployments.values()
    )
    # A model that scales to zero must still fit when its first request wakes it.
    woken = max(
        (cpus(d) for d in deployments.values() if d["autoscaling_config"]["min_replicas"] == 0),
        default=0.0,
    )
    total = floor + woken
    assert total <= 2.0, f"{path.name} asks for {total} CPUs; a 2-core laptop would wait forever"


OVERLAYS = sorted(render.OVERLAYS.glob("*.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_examples_differ_from_the_default_only_in_model_and_hot_knobs(overlay: Path) -> None:
    # Everything else (limits, deadlines, bundles, deployment options) comes from serve_config.yaml.
    assert (render.CONFIGS / overlay.name) in CONFIGS
    config = render.load_yaml(overlay)
    assert set(config) == {"applications"}
    (app,) = config["applications"]
    assert app["name"] == "vision" and set(app) <= {"name", "args", "deployments"}
    assert set(app.get("args", {})) <= {"models", "default_model"}
    for deployment in app.get("deployments", []):
        if isinstance(deployment, render.Drop):  # a model the default serves and this one not
            continue
        assert set(deployment) <= {"name", "user_config"}, deployment["name"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_deployment_autoscales_and_bounds_its_queue(path: Path) -> None:
    for d in _app(load_config(path))["deployments"]:
        scaling = d["autoscaling_config"]
        # Only a model other than the default may scale to zero: /v1/predict stays warm.
        floor = 0 if d["name"].startswith("Model-") else 1
        assert floor <= scaling["min_replicas"] <= scaling["max_replicas"], d["name"]
        assert 0 < scaling["target_ongoing_requests"] <= d["max_ongoing_requests"], d["name"]
        assert d["max_queued_requests"] > 0, d["name"]
