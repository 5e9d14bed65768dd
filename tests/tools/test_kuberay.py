"""kuberay/rayservice.yaml: generated, up to date, the same Serve config plus two overrides (the
Model's GPUs; the Ingress's replicas, on pods of their own)."""

from __future__ import annotations

import copy
import importlib
import json
import math
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from graph import AppArgs
from tests.serving import ROOT, load_config
from tools import render
from tools.serve_env import read_env_file
from vision_serve import serve_local

DOCKERFILE = (ROOT / "Dockerfile").read_text()
POD_MONITOR = ROOT / "kuberay" / "podmonitor.yaml"
METRICS_PORT = 8080  # Ray's metrics-export-port on every pod (KubeRay's default)
NAME_LABEL = "app.kubernetes.io/name"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render.MANIFEST.read_text()) if d is not None]


@pytest.fixture(scope="module")
def service(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (rayservice,) = [d for d in documents if d["kind"] == "RayService"]
    assert rayservice["apiVersion"] == "ray.io/v1"
    return rayservice


@pytest.fixture(scope="module")
def cluster(service: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = service["spec"]["rayClusterConfig"]
    return spec


@pytest.fixture(scope="module")
def serve_config_v2(service: dict[str, Any]) -> dict[str, Any]:
    text = service["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string, not a mapping"
    parsed: dict[str, Any] = yaml.safe_load(text)
    return parsed


def _group(cluster: dict[str, Any], name: str) -> dict[str, Any]:
    (group,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == name]
    return group


def _containers(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        yield from spec["template"]["spec"]["containers"]


def _deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def _quantity(value: str | int | float) -> float:
    """A Kubernetes CPU or count quantity ("4", "500m", 2) as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _fits(demand: float, capacity: float) -> bool:
    return demand <= capacity + 1e-9


# --- generated, up to date --------------------------------------------------------------------


def _rendered_manifest() -> str:
    (target,) = [t for t in render.targets() if t.path == render.MANIFEST]
    return target.render()


def test_manifest_is_generated_and_up_to_date() -> None:
    committed = render.MANIFEST.read_text()
    assert committed.startswith(render.MANIFEST_HEADER), "the generated-file header is missing"
    assert render.stale_diff(committed, _rendered_manifest(), "kuberay/rayservice.yaml") == "", (
        "kuberay/rayservice.yaml is stale: run `python -m tools.render`"
    )


def test_render_fills_the_placeholder_once_and_keeps_template_comments() -> None:
    template = render.TEMPLATE.read_text().splitlines()
    rendered = render.render_manifest("\n".join(template) + "\n", {"applications": []})
    assert render.PLACEHOLDER not in rendered
    own_header = next(i for i, line in enumerate(template) if not line.startswith("#"))
    assert own_header > 0
    rendered_lines = rendered.splitlines()
    for line in template[:own_header]:
        assert line not in rendered_lines, "the template's own header must not be copied"
    for line in template[own_header:]:
        if render.PLACEHOLDER not in line:
            assert line in rendered_lines, line
    with pytest.raises(ValueError, match="exactly one"):
        render.render_manifest("\n".join(template).replace(render.PLACEHOLDER, "x"), {})


def test_print_shows_the_gpu_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--print", str(render.GPU_OVERRIDE)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == render.merged_config(render.GPU_OVERRIDE)
    ServeDeploySchema.model_validate(printed)


# --- serveConfigV2 is serve_config.yaml plus the GPU override ---------------------------------


def test_serve_config_v2_validates(serve_config_v2: dict[str, Any]) -> None:
    ServeDeploySchema.model_validate(serve_config_v2)


def test_serve_config_v2_is_serve_config_merged_with_the_overrides(
    serve_config_v2: dict[str, Any],
) -> None:
    expected = render.deep_merge(load_config(), render.load_yaml(render.GPU_OVERRIDE))
    expected = render.deep_merge(expected, render.load_yaml(render.INGRESS_OVERRIDE))
    assert serve_config_v2 == expected


def test_serve_config_v2_differs_from_serve_config_only_in_model_gpus_and_ingress_placement(
    serve_config_v2: dict[str, Any],
) -> None:
    base = load_config()
    without_gpus = copy.deepcopy(serve_config_v2)
    ingress = _deployments(without_gpus)["Ingress"]
    ingress["autoscaling_config"]["min_replicas"] = _deployments(base)["Ingress"][
        "autoscaling_config"
    ]["min_replicas"]
    del ingress["ray_actor_options"]["resources"]
    models = _model_deployments(base)
    assert len(models) == len(load_config()["applications"][0]["args"]["models"])
    for name in models:
        model_base = _deployments(base)[name].get("ray_actor_options", {})
        model_k8s = _deployments(serve_config_v2)[name]["ray_actor_options"]
        assert model_base.get("num_gpus", 0) == 0, "serve_config.yaml must run without a GPU"
        assert model_k8s["num_gpus"] > 0, f"the RayService must place {name} on GPUs"
        assert model_k8s["num_cpus"] == model_base["num_cpus"], "the override keeps num_cpus"
        del _deployments(without_gpus)[name]["ray_actor_options"]["num_gpus"]
        if not model_base:
            del _deployments(without_gpus)[name]["ray_actor_options"]
    assert without_gpus == base


def _model_deployments(config: dict[str, Any]) -> list[str]:
    """The Model deployment of every served model, as graph.py names them."""
    args = AppArgs.model_validate(config["applications"][0]["args"])
    return [args.deployment_of(m.name, m.version) for m in args.models]


def test_gpu_override_sets_only_the_model_gpus() -> None:
    override = render.load_yaml(render.GPU_OVERRIDE)
    (app,) = override["applications"]
    assert set(override) == {"applications"} and set(app) == {"name", "deployments"}
    assert [d["name"] for d in app["deployments"]] == _model_deployments(load_config())
    for model in app["deployments"]:
        assert set(model) == {"name", "ray_actor_options"}
        assert set(model["ray_actor_options"]) == {"num_gpus"}, "num_cpus: serve_config.yaml's"


def test_import_path_resolves_and_args_validate(serve_config_v2: dict[str, Any]) -> None:
    (app,) = serve_config_v2["applications"]
    module_name, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    assert callable(builder)
    AppArgs.model_validate(app["args"])


# --- the Kubernetes parts ----------------------------------------------------------------------


def test_ray_version_matches_installed_ray_and_the_image(cluster: dict[str, Any]) -> None:
    assert cluster["rayVersion"] == ray.__version__
    (base,) = re.findall(r"^FROM\s+rayproject/ray:(\S+)", DOCKERFILE, re.MULTILINE)
    assert base.split("-")[0] == ray.__version__


def test_every_container_runs_the_project_image_in_its_workdir(cluster: dict[str, Any]) -> None:
    (workdir,) = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE, re.MULTILINE)
    image = f"{PROJECT['name']}:{PROJECT['version']}"
    containers = list(_containers(cluster))
    assert len(containers) == 1 + len(cluster["workerGroupSpecs"])
    for container in containers:
        assert container["image"].rpartition("/")[2] == image, container["name"]
        assert container["workingDir"] == workdir, container["name"]


def test_every_container_requests_what_it_limits(cluster: dict[str, Any]) -> None:
    for container in _containers(cluster):
        resources = container["resources"]
        assert set(resources["limits"]) >= {"cpu", "memory"}, container["name"]
        assert resources["requests"] == resources["limits"], container["name"]


def test_head_runs_no_replicas(cluster: dict[str, Any]) -> None:
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_autoscaling_is_in_tree_with_options(cluster: dict[str, Any]) -> None:
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert options["upscalingMode"] in {"Default", "Aggressive", "Conservative"}
    assert options["idleTimeoutSeconds"] > 0
    assert options["resources"]["requests"] == options["resources"]["limits"]
    if any("idleTimeoutSeconds" in g for g in cluster["workerGroupSpecs"]):
        assert options["version"] == "v2", "per-group idleTimeoutSeconds needs autoscaler v2"


def test_cpu_group_fits_the_cpu_stages_at_their_maxima(
    cluster: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    group = _group(cluster, "cpu")
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    cpu_stages = [
        d
        for d in _deployments(serve_config_v2).values()
        if not d["name"].startswith("Model") and d["name"] != "Ingress"  # its own group
    ]
    assert {d["name"] for d in cpu_stages} == {"Preprocessor", "Postprocessor"}

    def demand(count: str) -> float:
        return sum(
            d["autoscaling_config"][count] * d["ray_actor_options"]["num_cpus"] for d in cpu_stages
        )

    pod_cpus = math.ceil(_quantity(limits["cpu"]))
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert _fits(demand("min_replicas"), group["minReplicas"] * pod_cpus)
    assert _fits(demand("max_replicas"), group["maxReplicas"] * pod_cpus)


INGRESS_RESOURCE = "vision-ingress"


def _custom_resources(group: dict[str, Any]) -> dict[str, float]:
    """A group's custom Ray resources, from KubeRay's quoted JSON in rayStartParams."""
    raw = group.get("rayStartParams", {}).get("resources")
    if raw is None:
        return {}
    parsed: dict[str, float] = json.loads(json.loads(raw))  # a JSON string holding JSON
    return parsed


def test_at_least_two_ingress_replicas_each_on_a_pod_of_its_own(
    cluster: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    ingress = _deployments(serve_config_v2)["Ingress"]
    scaling = ingress["autoscaling_config"]
    assert scaling["min_replicas"] >= 2, "one Ingress replica must survive the other's death"
    assert ingress["ray_actor_options"]["resources"] == {INGRESS_RESOURCE: 1}
    group = _group(cluster, "ingress")
    # One replica per pod, only there: each pod offers exactly what one replica asks.
    assert _custom_resources(group) == {INGRESS_RESOURCE: 1}
    for other in cluster["workerGroupSpecs"]:
        if other is not group:
            assert INGRESS_RESOURCE not in _custom_resources(other), other["groupName"]
    assert INGRESS_RESOURCE not in _custom_resources(cluster["headGroupSpec"])
    assert group["minReplicas"] >= scaling["min_replicas"]
    assert group["replicas"] >= group["minReplicas"]
    assert group["maxReplicas"] >= scaling["max_replicas"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    assert _fits(ingress["ray_actor_options"]["num_cpus"], math.ceil(_quantity(limits["cpu"])))


def test_a_drain_always_keeps_a_pod_that_hosts_an_ingress_replica(
    cluster: dict[str, Any], documents: list[dict[str, Any]]
) -> None:
    group = _group(cluster, "ingress")
    (budget,) = [
        d
        for d in documents
        if d["kind"] == "PodDisruptionBudget"
        and _selects(d["spec"]["selector"], _pod_labels(cluster, group))
    ]
    # Every pod of the group hosts a replica, so keeping one pod keeps one replica; fewer than
    # the group's minimum, so a drain can still take the others, one at a time.
    assert 1 <= budget["spec"]["minAvailable"] < group["minReplicas"]


def test_gpu_group_scales_from_zero_and_fits_the_model(
    cluster: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    group = _group(cluster, "gpu")
    assert group["minReplicas"] == 0
    assert group.get("replicas", 0) == 0
    spec = group["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    gpus = _quantity(resources["limits"]["nvidia.com/gpu"])
    assert gpus >= 1
    assert _quantity(resources["requests"]["nvidia.com/gpu"]) == gpus
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]

    pods_needed = 0
    for name in _model_deployments(serve_config_v2):
        model = _deployments(serve_config_v2)[name]
        options = model["ray_actor_options"]
        per_pod = math.floor(gpus / options["num_gpus"] + 1e-9)
        assert per_pod >= 1, f"one {name} replica must fit on one GPU pod"
        cpus = math.ceil(_quantity(resources["limits"]["cpu"]))
        assert _fits(per_pod * options["num_cpus"], cpus)
        pods_needed += math.ceil(model["autoscaling_config"]["max_replicas"] / per_pod)
    assert group["maxReplicas"] >= pods_needed, "every model at its max_replicas must fit"


def test_upgrade_strategy_is_set(service: dict[str, Any]) -> None:
    strategy = service["spec"]["upgradeStrategy"]
    assert strategy["type"] in {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}


def test_token_auth_uses_a_secret(cluster: dict[str, Any]) -> None:
    auth = cluster["authOptions"]
    assert auth["mode"] == "token"
    assert auth["secretName"] == "vision-ray-auth", "kuberay/README.md tells how to create it"


def test_no_secret_values_in_the_repo(documents: list[dict[str, Any]]) -> None:
    assert not [d for d in documents if d["kind"] == "Secret"], "create Secrets with kubectl"
    text = render.MANIFEST.read_text() + render.TEMPLATE.read_text()
    assert "stringData" not in text and "REPLACE-ME" not in text


def _secret_refs(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in {"secretKeyRef", "secretRef", "secret"}:
                yield item
            yield from _secret_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _secret_refs(item)


def test_secret_references_are_required(documents: list[dict[str, Any]]) -> None:
    refs = list(_secret_refs(documents))
    assert refs, "the API key must come from a Secret"
    for ref in refs:
        # The management key alone is optional: without it, loading and unloading are refused.
        optional = ref["name"] == "vision-management-key"
        assert ref.get("optional", False) is optional, ref


def test_every_ray_container_requires_the_api_key(cluster: dict[str, Any]) -> None:
    for container in _containers(cluster):
        env = {e["name"]: e for e in container.get("env", [])}
        ref = env["VISION_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "vision-api-key", "key": "api_key"}, container["name"]
        assert env["VISION_REQUIRE_API_KEY"]["value"] in {"1", "true"}, container["name"]
        management = env["VISION_MANAGEMENT_KEY"]["valueFrom"]["secretKeyRef"]
        assert management["name"] == "vision-management-key", container["name"]


def test_every_ray_container_has_serve_env(cluster: dict[str, Any]) -> None:
    # The same Serve settings as `make run` and the tests: the HAProxy edge.
    wanted = read_env_file()
    for container in _containers(cluster):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {k: env.get(k) for k in wanted} == wanted, container["name"]


def test_every_container_runs_restricted(cluster: dict[str, Any]) -> None:
    (user,) = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER lets Kubernetes verify it"
    contexts = {c["name"]: c.get("securityContext") for c in _containers(cluster)}
    contexts["autoscaler"] = cluster["autoscalerOptions"].get("securityContext")
    for name, context in contexts.items():
        assert context, f"{name} has no securityContext"
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == int(uid), f"{name}: runAsUser must be the image's USER"
        if gid:
            assert context["runAsGroup"] == int(gid), name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert not context["capabilities"].get("add"), name
        assert context["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not context.get("privileged", False), name
    for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = spec["template"]["spec"]
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert not pod.get("initContainers"), "KubeRay's own init container copies the context"


def _probe_targets(probe: dict[str, Any]) -> str:
    if "httpGet" in probe:
        return f"localhost:{probe['httpGet']['port']}{probe['httpGet']['path']}"
    return " ".join(probe["exec"]["command"])


def test_probes(cluster: dict[str, Any]) -> None:
    serve_port = load_config()["http_options"]["port"]
    for container in _containers(cluster):
        liveness = _probe_targets(container["livenessProbe"])
        assert f":{serve_port}" not in liveness, "liveness must not depend on the Model"
        assert "/api/healthz" in liveness, container["name"]
        assert container["livenessProbe"]["failureThreshold"] >= 3
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert f":{serve_port}" not in _probe_targets(head["readinessProbe"]), (
        "an unready head leaves the head service and KubeRay then never submits the Serve app"
    )
    for group in cluster["workerGroupSpecs"]:
        (worker,) = group["template"]["spec"]["containers"]
        probe = worker["readinessProbe"]
        readiness = _probe_targets(probe)
        # The service's own health, plus what KubeRay's replaced probe checked.
        for target in ("/v1/health/ready", "/-/healthz", "/api/local_raylet_healthz"):
            assert target in readiness, (group["groupName"], target)
        assert re.search(rf"localhost:{serve_port}/v1/health/ready(\s|$)", readiness), readiness
        assert probe["timeoutSeconds"] >= 2 + 2 + 5, "the wget timeouts must fit in the probe's"


def _pod_labels(cluster: dict[str, Any], group: dict[str, Any] | None) -> dict[str, str]:
    """The labels KubeRay v1.7 puts on a pod (labelPod in ray-operator/.../common/pod.go)."""
    spec = cluster["headGroupSpec"] if group is None else group
    labels = dict(spec["template"].get("metadata", {}).get("labels", {}))
    labels.update(
        {
            "ray.io/is-ray-node": "yes",
            "ray.io/node-type": "head" if group is None else "worker",
            "ray.io/group": "headgroup" if group is None else group["groupName"],
        }
    )
    return labels


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "only matchLabels is checked here"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_a_disruption_budget_per_worker_group(
    cluster: dict[str, Any], documents: list[dict[str, Any]]
) -> None:
    budgets = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
    head = _pod_labels(cluster, None)
    groups = cluster["workerGroupSpecs"]
    for group in groups:
        labels = _pod_labels(cluster, group)
        (budget,) = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
        assert budget["apiVersion"] == "policy/v1"
        assert "ray.io/cluster" not in budget["spec"]["selector"]["matchLabels"], (
            "a RayService's clusters get generated names"
        )
        # RayCluster has no scale subresource: Kubernetes then accepts only an integer minAvailable.
        assert "maxUnavailable" not in budget["spec"]
        assert isinstance(budget["spec"]["minAvailable"], int)
        assert budget["spec"]["minAvailable"] >= 1
        assert not _selects(budget["spec"]["selector"], head), "the head is not a worker"
        for other in groups:
            if other is not group:
                assert not _selects(budget["spec"]["selector"], _pod_labels(cluster, other))
    assert len(budgets) == len(groups)


def _serve_ports() -> list[int]:
    """Serve's HTTP port and its gRPC port (the Open Inference Protocol's)."""
    config = load_config()
    return [config["http_options"]["port"], config["grpc_options"]["port"]]


def test_network_policy_admits_only_the_serve_ports_from_outside(
    cluster: dict[str, Any], documents: list[dict[str, Any]]
) -> None:
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    pods = [_pod_labels(cluster, None)] + [
        _pod_labels(cluster, g) for g in cluster["workerGroupSpecs"]
    ]
    for labels in pods:
        assert _selects(spec["podSelector"], labels), labels

    open_ports: list[int] = []
    for rule in spec["ingress"]:
        sources = rule.get("from")
        if not sources:
            open_ports += [p["port"] for p in rule["ports"]]
            continue
        for source in sources:
            assert "ipBlock" not in source, "an ipBlock admits pods from outside"
            if "namespaceSelector" in source:
                # The operator (the dashboard) or Prometheus (Ray's metrics): a pod selector and
                # a single port each, never a whole namespace.
                labels = source["podSelector"]["matchLabels"]
                wanted = {"kuberay-operator": [8265], "prometheus": [METRICS_PORT]}
                assert [p["port"] for p in rule["ports"]] == wanted[labels[NAME_LABEL]], rule
            else:
                assert source["podSelector"] == spec["podSelector"], "Ray's ports: own pods only"
    assert open_ports == _serve_ports()


def _groups(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def test_every_pod_exports_ray_metrics_on_one_declared_port(cluster: dict[str, Any]) -> None:
    # The port `make run` uses too (vision_serve/serve_local.py), so one scrape config fits both.
    assert METRICS_PORT == serve_local.METRICS_EXPORT_PORT
    for group in _groups(cluster):
        name = group.get("groupName", "head")
        assert group["rayStartParams"]["metrics-export-port"] == str(METRICS_PORT), name
        (container,) = group["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == METRICS_PORT, name
        annotations = group["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(METRICS_PORT), name
        assert annotations["prometheus.io/path"] == "/metrics", name


def test_network_policy_admits_prometheus_to_the_metrics_port(
    cluster: dict[str, Any], documents: list[dict[str, Any]]
) -> None:
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    (rule,) = [
        r
        for r in policy["spec"]["ingress"]
        if any(p["port"] == METRICS_PORT for p in r.get("ports", []))
    ]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"] == {NAME_LABEL: "prometheus"}


def test_pod_monitor_scrapes_the_metrics_port_of_every_ray_pod(cluster: dict[str, Any]) -> None:
    (monitor,) = [d for d in yaml.safe_load_all(POD_MONITOR.read_text()) if d is not None]
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    spec = monitor["spec"]
    for group in _groups(cluster):
        labels = _pod_labels(cluster, None if group is cluster["headGroupSpec"] else group)
        assert _selects(spec["selector"], labels), labels
    (endpoint,) = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint.get("path", "/metrics")) == ("metrics", "/metrics")


def test_only_the_serve_ports_leave_the_cluster(
    service: dict[str, Any], cluster: dict[str, Any], documents: list[dict[str, Any]]
) -> None:
    http_port, grpc_port = _serve_ports()
    serve_service = service["spec"]["serveService"]["spec"]
    assert [p["port"] for p in serve_service["ports"]] == [http_port, grpc_port]
    for container in _containers(cluster):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert (ports["serve"], ports["serve-grpc"]) == (http_port, grpc_port), container["name"]
    head = cluster["headGroupSpec"]

    internal = {None, "ClusterIP"}
    assert serve_service.get("type") in internal, "a LoadBalancer is opt-in (kuberay/README.md)"
    assert head.get("serviceType") in internal, "the head service would expose 6379/8265/10001"
    assert head.get("headService", {}).get("spec", {}).get("type") in internal
    assert not head.get("enableIngress", False), "an Ingress would expose the dashboard"
    assert not [d for d in documents if d["kind"] in {"Service", "Ingress", "Route"}]
    for kind in {d["kind"] for d in documents}:
        assert kind in {"RayService", "PodDisruptionBudget", "NetworkPolicy"}, kind
    for container in _containers(cluster):
        assert not [p for p in container.get("ports", []) if "hostPort" in p], container["name"]
