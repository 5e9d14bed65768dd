"""What `pip install` gives: the service's wheel carries its config, weights and proto and runs
from any directory; the client's own distribution runs where neither torch nor Ray is installed.

Wheels are built from a copy of the sources (a build writes build/ and *.egg-info beside them),
with this environment's setuptools (`--no-build-isolation`, as `make setup`), so nothing is
downloaded except, for the client's fresh venv, httpx and tqdm (from pip's cache when it has them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a build of either distribution reads.
SOURCES = (
    "pyproject.toml",
    "README.md",
    "graph.py",  # vision_serve/graph.py links to it
    "serve_config.yaml",
    "serve.env",
    "scripts/haproxy-edge",
    "vision_serve",
    "deployments",
    "shapes",
    "vision_client",
)
WEIGHTS = ("shapes/shapes_detector.pt", "shapes/shapes_segmenter.pt")
PROTO = "deployments/oip_proto/grpc_predict_v2.proto"
# Words in pip's output when the package index could not be reached.
UNREACHABLE = (
    "No matching distribution",
    "Could not find a version",
    "connection",
    "Connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    for name in SOURCES:
        source, target = ROOT / name, tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, ignore=skip)
        else:
            shutil.copy2(source, target)
    return tree


def build_wheel(project: Path, out: Path) -> Path:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(out), str(project)),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def service_wheel(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(sources, tmp_path_factory.mktemp("dist"))


def test_the_service_wheel_carries_config_weights_proto_and_the_command(
    service_wheel: Path,
) -> None:
    with zipfile.ZipFile(service_wheel) as wheel:
        names = set(wheel.namelist())
        files = {name: wheel.read(name) for name in names}
        edge_mode = wheel.getinfo("vision_serve/haproxy-edge").external_attr >> 16
    read = files.__getitem__
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
    entry_points = read(f"{dist_info}/entry_points.txt").decode()

    # The packaged files are the repo's own (links in a checkout, copies in the wheel).
    assert read("vision_serve/serve_config.yaml") == (ROOT / "serve_config.yaml").read_bytes()
    assert read("vision_serve/serve.env") == (ROOT / "serve.env").read_bytes()
    assert edge_mode & 0o111, "HAProxy's wrapper must stay executable"
    for weights in WEIGHTS:
        assert read(weights) == (ROOT / weights).read_bytes()
    assert PROTO in names

    # No top-level module with a name as generic as `graph`; the repo's own tools stay out.
    top_level = {name.split("/")[0] for name in names} - {dist_info}
    assert top_level == {"vision_serve", "deployments", "shapes", "vision_client"}
    assert "vision_serve/graph.py" in names
    assert "[console_scripts]\nvision-serve = vision_serve.cli:main" in entry_points


def test_the_unpacked_wheel_runs_from_any_directory(service_wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(service_wheel) as wheel:
        wheel.extractall(site)
    (site / "vision_serve" / "haproxy-edge").chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The unpacked packages come first on the path; nothing is read from the repo or the cwd.
    env = {**os.environ, "PYTHONPATH": str(site)}
    for key in [k for k in env if k.startswith("RAY_SERVE_") or k == "VISION_HAPROXY_BINARY"]:
        del env[key]
    show = (
        "from deployments.runtime.model_source import resolve_path\n"
        "from vision_serve.graph import served_args\n"
        "import vision_serve\n"
        "print(vision_serve.__file__)\n"
        "for served in served_args().models:\n"
        "    print(resolve_path(served.model.weights))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", show],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    package, *weights = done.stdout.split()
    assert Path(package) == site / "vision_serve" / "__init__.py"
    assert [Path(w) for w in weights] == [site / w for w in WEIGHTS]

    dry_run = subprocess.run(
        [sys.executable, "-m", "vision_serve", "run", "--dry-run"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    *settings, command = dry_run.stdout.splitlines()
    config = site / "vision_serve" / "serve_config.yaml"
    assert command.endswith(f" -m vision_serve.serve_local --metrics-export-port=8080 {config}")
    assert f"RAY_SERVE_HAPROXY_BINARY_PATH={site / 'vision_serve' / 'haproxy-edge'}" in settings
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in settings


def test_the_client_pins_are_the_services() -> None:
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    client = tomllib.loads((ROOT / "vision_client" / "pyproject.toml").read_text())
    pins = client["project"]["dependencies"]
    assert pins and set(pins) <= set(service)


class StubService(BaseHTTPRequestHandler):
    """`POST /v1/predict`: answers with the size of the image it got."""

    def do_POST(self) -> None:
        size = len(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"path": self.path, "image_bytes": size}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubService)  # a port the OS picks
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_client_alone_installs_and_runs_without_torch_or_ray(
    sources: Path, tmp_path: Path, stub_url: str
) -> None:
    wheel = build_wheel(sources / "vision_client", tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This environment's pip installs into the fresh venv (which has none of its own).
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        if any(word in install.stderr for word in UNREACHABLE):
            last = install.stderr.strip().splitlines()[-1]
            pytest.skip(f"no package index to install httpx and tqdm from: {last}")
        pytest.fail(f"pip install of the client failed:\n{install.stderr}")

    for module in ("torch", "ray", "deployments", "vision_serve"):
        # Run from tmp_path: `python -c` puts its working directory first on the path.
        found = subprocess.run(
            [str(python), "-c", f"import {module}"], cwd=tmp_path, capture_output=True
        )
        assert found.returncode != 0, f"{module} must not be importable in the client's venv"

    client = venv / "bin" / "vision-client"
    usage = subprocess.run([str(client), "--help"], capture_output=True, text=True, check=True)
    assert usage.stdout.startswith("usage: vision-client ")

    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8\xff" + bytes(997))
    sent = subprocess.run(
        [str(client), str(image), "--url", stub_url, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    (line,) = [json.loads(text) for text in sent.stdout.splitlines()]
    assert line["status"] == 200
    assert line["body"] == {"path": "/v1/predict", "image_bytes": 1000}
