"""The HTTP edge is HAProxy (serve.env): requests reach the Ingress through it, and what it adds
to the machine stays on loopback. The rest of the tier proves the API through it (gRPC, /docs,
health, auth, body limits, deadlines, overload), since the whole suite runs with serve.env."""

from __future__ import annotations

import csv
import io
import os
import socket

import httpx
import pytest
import ray

from tests import images
from tests.fixtures.models import ECHO, colour_in
from tests.serving import BASE_URL, app_config, deploy, wait_until

STATS_URL = "http://127.0.0.1:8404/stats;csv"  # Serve's HAProxy stats page

pytestmark = pytest.mark.skipif(
    os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1", reason="the suite runs on the Python proxy"
)


@pytest.fixture(scope="module", autouse=True)
def echo_app() -> None:
    deploy(app_config(model=ECHO))


def _frontend_requests() -> int:
    rows = csv.DictReader(io.StringIO(httpx.get(STATS_URL, timeout=10).text.lstrip("# ")))
    return sum(int(r["stot"]) for r in rows if r["pxname"] == "http_frontend")


def test_requests_reach_the_ingress_through_haproxy() -> None:
    before = _frontend_requests()
    colour = (10, 200, 30)
    r = httpx.post(
        f"{BASE_URL}/v1/predict",
        content=images.solid_png(colour),
        headers={"content-type": "image/png"},
        timeout=60,
    )
    assert r.status_code == 200 and colour_in(r.json()["predictions"]) == colour, r.text
    wait_until(lambda: _frontend_requests() > before, 10, "HAProxy to count the request")


@pytest.mark.parametrize("port", [8404, 9101])  # stats page, Prometheus exporter
def test_haproxy_stats_and_metrics_listen_on_loopback_only(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    address = ray.util.get_node_ip_address()
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((address, port), 5):
        pass
