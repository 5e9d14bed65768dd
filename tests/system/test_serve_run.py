"""`serve run serve_config.yaml` exactly as a user runs it: start, answer, shut down cleanly.

System tier: `serve run` starts its own local Ray, so this runs in its own pytest process, after
the integration tier's cluster is gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray

from shapes.generate import generate
from shapes.metrics import iou
from tests import images
from tests.serving import BASE_URL, ROOT, wait_until
from tools import serve_process

pytestmark = pytest.mark.system


def _health() -> bool:
    try:
        return httpx.get(f"{BASE_URL}/v1/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _port_open() -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", 8000)) == 0


def _non_loopback_address() -> str | None:
    """This machine's own address beside loopback (the one Ray would advertise), if any."""
    address: str = ray.util.get_node_ip_address()
    return None if address.startswith("127.") else address


def _reachable(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((address, port)) == 0


@pytest.fixture
def serve_run(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    assert not _port_open(), "something already listens on port 8000"
    log = tmp_path / "serve_run.log"
    # The relative path, from the repo root, as `make run` passes it.
    proc = serve_process.serve_run(Path("serve_config.yaml"), log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.returncode not in (0, None):
            print(log.read_text()[-5000:])


def test_serve_run_serves_and_shuts_down_cleanly(
    serve_run: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    wait_until(lambda: serve_run.poll() is not None or _health(), 240, "/v1/health to answer 200")
    assert serve_run.poll() is None, "serve run exited during start-up"
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

    serve_run.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert serve_run.wait(timeout=120) == 0
    wait_until(lambda: not _port_open(), 60, "port 8000 to close")
