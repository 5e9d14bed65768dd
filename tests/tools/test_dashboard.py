"""dashboards/vision.json without a service: importable, on any Prometheus datasource, and every
metric it queries is one the service or Ray Serve records. (tests/system/test_serve_run.py runs
each of its queries against a real Prometheus scraping the service.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from tests.serving import ROOT

DASHBOARD = ROOT / "dashboards" / "vision.json"
METRICS_MODULE = ROOT / "deployments" / "metrics.py"
SERVE_SOURCE = Path(ray.__file__).parent / "serve"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_METRIC = re.compile(r"\b(ray_[a-z_]+)\b")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def _datasources(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "datasource":
                yield item
            else:
                yield from _datasources(item)
    elif isinstance(value, list):
        for item in value:
            yield from _datasources(item)


def test_every_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("datasource", "prometheus")
    found = list(_datasources(dashboard))
    assert found and all(d == DATASOURCE for d in found), "no hard-coded datasource uid"
    assert "__inputs" not in dashboard, "imports with the variable, no input to fill"


def test_every_panel_has_a_query_and_its_own_id(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]
            assert all(t["expr"].strip() and t["refId"] for t in panel["targets"]), panel["title"]


def _service_metrics() -> set[str]:
    """The names the service's metrics have on Ray's endpoint (histograms as their series)."""
    names = set()
    source = METRICS_MODULE.read_text()
    for kind, name in re.findall(r'metrics\.(Counter|Histogram|Gauge)\(\s*"(\w+)"', source):
        series = [f"{name}_{s}" for s in ("bucket", "count", "sum")] if kind == "Histogram" else []
        names.update(f"ray_{n}" for n in [name, *series])
    return names


def _serve_metrics() -> re.Pattern[str]:
    """Ray Serve's own metric names in the installed Ray, as its endpoint shows them; a name
    built in an f-string (`serve_num_{protocol}_requests`) matches any word there."""
    names = set()
    for path in SERVE_SOURCE.rglob("*.py"):
        names.update(re.findall(r'f?"(serve_[a-z_{}]+)"', path.read_text(errors="replace")))
    patterns = [re.sub(r"\\{[a-z_]+\\}", "[a-z]+", re.escape(n)) for n in sorted(names)]
    return re.compile(rf"ray_({'|'.join(patterns)})(_total|_bucket|_count|_sum)?")


def test_every_metric_queried_is_recorded(dashboard: dict[str, Any]) -> None:
    ours, serve = _service_metrics(), _serve_metrics()
    assert "ray_vision_items_total" in ours
    assert serve.fullmatch("ray_serve_num_http_requests_total")
    assert not serve.fullmatch("ray_serve_no_such_metric")
    for title, target in _targets(dashboard):
        for name in _METRIC.findall(target["expr"]):
            known = name in ours or serve.fullmatch(name)
            assert known, f"{title}: {name} is not a metric the service or Serve records"


def test_the_dashboard_covers_what_the_readme_promises(dashboard: dict[str, Any]) -> None:
    queries = "\n".join(t["expr"] for _, t in _targets(dashboard))
    for needed in (
        "ray_vision_requests_total",
        'ray_vision_items_total{application="$application", model=~"$model", outcome!="ok"}',
        "sum by (le, stage) (rate(ray_vision_stage_latency_seconds_bucket",
        "ray_vision_batch_size_bucket",
        "ray_vision_batch_wait_seconds_bucket",
        "ray_vision_model_queue_depth",
        "sum by (deployment) (ray_serve_deployment_replica_healthy",
        "ray_serve_replica_startup_latency_ms",
    ):
        assert needed in queries, needed
    readme = (ROOT / "README.md").read_text()
    assert "dashboards/vision.json" in readme


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no `promtool` (Debian: prometheus)")
def test_every_query_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    # promtool checks a rules file's expressions; the variables as Grafana would fill them.
    fill = {
        "$__rate_interval": "1m",
        "$__range": "1h",
        "$application": "vision",
        "$model": ".*",
    }
    rules = []
    for i, (_, target) in enumerate(_targets(dashboard)):
        expr = target["expr"]
        for name, value in fill.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
