"""`serve run serve_config.yaml` exactly as `make run` runs it: start, answer, export metrics that
the shipped dashboard's queries find in a real Prometheus, shut down cleanly.

System tier: `serve run` starts its own local Ray, so this runs in its own pytest process, after
the integration tier's cluster is gone. One service for the module; its tests run in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml

from shapes.generate import generate
from shapes.metrics import iou
from tests import images
from tests.serving import BASE_URL, ROOT, port_open, wait_until
from tools import serve_process
from vision_serve.serve_local import METRICS_EXPORT_PORT as METRICS_PORT

pytestmark = pytest.mark.system
DASHBOARD = ROOT / "dashboards" / "vision.json"
PROMETHEUS = shutil.which("prometheus")


def _health() -> bool:
    try:
        return httpx.get(f"{BASE_URL}/v1/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _non_loopback_address() -> str | None:
    """This machine's own address beside loopback (the one Ray would advertise), if any."""
    address: str = ray.util.get_node_ip_address()
    return None if address.startswith("127.") else address


def _reachable(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((address, port)) == 0


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """The service as `make run` starts it, shared by this module's tests, which run in order:
    the last one stops it."""
    assert not port_open(8000), "something already listens on port 8000"
    log = tmp_path_factory.mktemp("serve_run") / "serve_run.log"
    # The relative path, from the repo root, as `make run` passes it; Ray's metrics on its port.
    proc = serve_process.serve_run(Path("serve_config.yaml"), log, metrics_port=METRICS_PORT)
    try:
        wait_until(lambda: proc.poll() is not None or _health(), 240, "/v1/health to answer 200")
        assert proc.poll() is None, "serve run exited during start-up"
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.returncode not in (0, None):
            print(log.read_text()[-5000:])


def test_serve_run_serves(serve_run: subprocess.Popen[bytes], tmp_path: Path) -> None:
    # The default config serves the shipped shapes detector: it finds what the generator drew.
    sample = generate(2026, width=640, height=480, fmt="JPEG", orientation=6)
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=sample.data,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    found = r.json()["predictions"]
    for truth in sample.objects:
        assert any(p["label"] == truth.label and iou(p["box"], truth.box) >= 0.5 for p in found)

    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    good.write_bytes(generate(7, width=320, height=240, fmt="PNG").data)
    bad.write_bytes(images.truncated_jpeg())
    client = subprocess.run(
        [sys.executable, "examples/handle_client.py", str(good), str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in client.stdout.splitlines() if line.startswith("{")]
    assert [line["path"] for line in lines] == [str(good), str(bad)], client.stderr[-2000:]
    assert lines[0]["predictions"] and lines[0]["image"]["width"] == 320
    assert (lines[1]["error"]["code"], lines[1]["error"]["status"]) == ("corrupt_image", 422)
    assert "truncated" in lines[1]["error"]["message"] and client.returncode == 1

    # serve.env's HAProxy serves serve_config.yaml's host (0.0.0.0) on 8000 and 9000, while its
    # stats page and exporter stay on loopback (scripts/haproxy-edge).
    address = _non_loopback_address()
    if address is not None:
        assert _reachable(address, 8000) and _reachable(address, 9000)
        assert not _reachable(address, 8404) and not _reachable(address, 9101)

    # Ray's metrics are on `make run`'s fixed port, each request metric naming its model.
    wait_until(_detector_metrics, 90, f"request metrics on port {METRICS_PORT}", every_s=1.0)


def _detector_metrics() -> bool:
    """Whether Ray's metrics port shows items answered by the detector, with its version."""
    try:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    except httpx.TransportError:
        return False
    return any(
        line.startswith("ray_vision_items_total{")
        and 'model="shapes-detector"' in line
        and 'version="1"' in line
        for line in text.splitlines()
    )


def test_every_dashboard_query_finds_series(
    serve_run: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """A real Prometheus scrapes the service; each panel's query of the shipped dashboard, with
    its variables as Grafana fills them, returns at least one series after some traffic."""
    if PROMETHEUS is None:
        pytest.skip("no `prometheus` binary on PATH (Debian: apt-get install prometheus)")
    with _prometheus(tmp_path, f"127.0.0.1:{METRICS_PORT}") as api:
        # Traffic before and after Prometheus has scraped its series, so that rates and
        # quantiles see some arrive.
        _send_images(2, seed=4)
        wait_until(
            lambda: _query(api, 'ray_vision_items_total{outcome="corrupt_image"}'),
            90,
            "Prometheus to scrape the service's metrics",
        )
        _send_images(6, seed=5)

        dashboard = json.loads(DASHBOARD.read_text())
        variables = _variables(api, dashboard)
        queries = [
            (panel["title"], _expand(target["expr"], variables))
            for panel in dashboard["panels"]
            for target in panel.get("targets", [])
        ]
        assert queries, "the dashboard has no queries"

        def missing() -> list[str]:
            return [f"{title}: {query}" for title, query in queries if not _query(api, query)]

        try:
            wait_until(lambda: not missing(), 120, "every dashboard query's series", every_s=2.0)
        except TimeoutError:
            pytest.fail("dashboard queries without a series:\n" + "\n".join(missing()))
        # Every series of the service's own metrics names its model and version.
        unnamed = '{__name__=~"ray_vision_.+", model=""} or {__name__=~"ray_vision_.+", version=""}'
        assert _query(api, unnamed) == []


def _send_images(count: int, seed: int) -> None:
    """`count` PNGs the detector answers, then one corrupt JPEG (an error to count)."""
    for colour in images.distinct_colours(count, seed=seed):
        r = httpx.post(
            f"{BASE_URL}/v1/predict",
            content=images.solid_png(colour),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=images.truncated_jpeg(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert r.status_code == 422, r.text


def test_serve_run_shuts_down_cleanly(serve_run: subprocess.Popen[bytes]) -> None:
    serve_run.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert serve_run.wait(timeout=120) == 0
    wait_until(lambda: not port_open(8000), 60, "port 8000 to close")


# --- Prometheus --------------------------------------------------------------------------------


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """A Prometheus scraping `target` every second, its storage in `tmp_path`; yields its API."""
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    address = f"127.0.0.1:{_free_loopback_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://{address}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}")
        try:
            return httpx.get(f"{api}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 60, "Prometheus to be ready")
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _query(api: str, query: str) -> list[dict[str, Any]]:
    """The series an instant query returns now; a query Prometheus refuses fails the test."""
    r = httpx.get(f"{api}/api/v1/query", params={"query": query}, timeout=10)
    body = r.json()
    assert body["status"] == "success", f"{query}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _label_values(api: str, selector: str, label: str) -> list[str]:
    """Grafana's `label_values(selector, label)`, asked of Prometheus' own API."""
    r = httpx.get(f"{api}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10)
    values: list[str] = r.json()["data"]
    return values


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
# Grafana's own variables, as it would fill them over the dashboard's default hour.
_BUILT_IN = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _expand(text: str, variables: dict[str, str]) -> str:
    for name, value in sorted({**_BUILT_IN, **variables}.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(name, value)
    assert "$" not in text, f"an unknown variable in {text}"
    return text


def _variables(api: str, dashboard: dict[str, Any]) -> dict[str, str]:
    """The dashboard's query variables as Grafana would set them: the first value Prometheus
    offers, or the "All" value where a variable has one."""
    chosen: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        definition = _expand(variable["definition"], chosen)
        match = _LABEL_VALUES.match(definition)
        assert match, f"variable {variable['name']}: {definition}"
        selector, label = match["selector"], match["label"]
        values = wait_until(
            lambda: _label_values(api, selector, label),  # noqa: B023 (called before the next)
            60,
            f"values for the dashboard's ${variable['name']}",
        )
        all_value = variable.get("allValue") if variable.get("includeAll") else None
        chosen["$" + variable["name"]] = all_value if all_value is not None else values[0]
    return chosen
