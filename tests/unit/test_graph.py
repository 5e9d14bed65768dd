"""One home per default: `serve run graph:app` builds what `serve run serve_config.yaml` runs,
and every stage gets the settings serve_config.yaml gives, as validated, not copies of them.

The graph is built in-process with the function `serve build` uses (no Ray is started), and each
deployment's options are read back as Serve's own `DeploymentSchema`.
"""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve import Application
from ray.serve._private.build_app import BuiltApplication
from ray.serve._private.build_app import build_app as build_deployments
from ray.serve.deployment import deployment_to_schema
from ray.serve.schema import DeploymentSchema, LoggingConfig

import graph

SERVED = graph.load_app_config()
YAML_DEPLOYMENTS = {d["name"]: d for d in SERVED["deployments"]}


def _built(app: Application) -> BuiltApplication:
    return build_deployments(app, name=graph.APP_NAME)


def _options(schema: DeploymentSchema) -> dict[str, Any]:
    """The options a deployment sets, with logging_config in its full form on either side."""
    options = schema.model_dump(exclude_unset=True)
    if "logging_config" in options:
        options["logging_config"] = LoggingConfig(**options["logging_config"]).model_dump()
    return options


@pytest.fixture(scope="module")
def graph_app() -> BuiltApplication:
    return _built(graph.app)


@pytest.fixture(scope="module")
def config_app() -> BuiltApplication:
    # What `serve run serve_config.yaml` imports before it applies the config's deployments.
    return _built(graph.build_app(SERVED["args"]))


def _from_args(name: str) -> dict[str, Any]:
    """The one option the graph sets itself: Serve's 503 at the Ingress says args.retry_after_s."""
    if name != "Ingress":
        return {}
    retry_after_s = SERVED["args"]["retry_after_s"]
    return {"backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s}}


def test_graph_app_sets_exactly_the_options_of_serve_config(graph_app: BuiltApplication) -> None:
    assert {d.name for d in graph_app.deployments} == set(YAML_DEPLOYMENTS)
    for deployment in graph_app.deployments:
        want = _options(DeploymentSchema.model_validate(YAML_DEPLOYMENTS[deployment.name]))
        want.update(_from_args(deployment.name))
        assert _options(deployment_to_schema(deployment)) == want, deployment.name


def test_code_sets_no_deployment_option_but_one_from_args(config_app: BuiltApplication) -> None:
    # A number in a decorator would be a second home, and would leak into a config that omits it.
    for deployment in config_app.deployments:
        want = {"name": deployment.name, **_from_args(deployment.name)}
        assert _options(deployment_to_schema(deployment)) == want


def test_the_ingress_backpressure_config_is_refused_in_the_deployments() -> None:
    ingress = {"name": "Ingress", "backpressure_config": {"status_code": 503, "retry_after_s": 9}}
    with pytest.raises(ValueError, match="retry_after_s"):
        graph.build_configured_app({**SERVED, "deployments": [ingress]})


def test_graph_app_binds_the_args_serve_config_gives(
    graph_app: BuiltApplication, config_app: BuiltApplication
) -> None:
    def init_args(built: BuiltApplication) -> dict[str, tuple[Any, ...]]:
        # The Ingress's first three args are handles to the other stages: compare the rest.
        return {
            d.name: tuple(d.init_args[3:] if d.name == "Ingress" else d.init_args)
            for d in built.deployments
        }

    assert init_args(graph_app) == init_args(config_app)
    init = dict((d.name, d.init_args) for d in graph_app.deployments)["Model"]
    model_spec, _, served_as, version = init
    args = graph.AppArgs.model_validate(SERVED["args"])
    assert (model_spec, served_as, version) == (args.model, args.default_model, "1")


def test_the_stages_get_the_settings_objects_serve_config_gives(
    config_app: BuiltApplication,
) -> None:
    args = graph.AppArgs.model_validate(SERVED["args"])
    init_args = {d.name: d.init_args for d in config_app.deployments}
    ingress = init_args["Ingress"][3]
    assert (ingress.limits, ingress.bundles, ingress.poison) == (
        args.limits,
        args.bundles,
        args.poison,
    )
    assert (ingress.request_timeout_s, ingress.max_request_timeout_s, ingress.retry_after_s) == (
        args.request_timeout_s,
        args.max_request_timeout_s,
        args.retry_after_s,
    )
    assert init_args["Preprocessor"] == (args.limits, args.decode_threads, args.jpeg_draft)


def test_options_for_a_stage_not_in_the_graph_are_refused() -> None:
    app_config = {**SERVED, "deployments": [{"name": "model", "max_ongoing_requests": 1}]}
    with pytest.raises(ValueError, match="'model'"):
        graph.build_configured_app(app_config)


def test_builder_args_have_no_defaults_of_their_own() -> None:
    args = dict(SERVED["args"])
    del args["limits"]
    with pytest.raises(ValueError, match="limits"):
        graph.AppArgs.model_validate(args)
