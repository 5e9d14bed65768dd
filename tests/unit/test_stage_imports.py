"""The CPU stages (Ingress, Preprocessor, Postprocessor) start without importing torch: only the
Model needs it, and importing it costs every other replica seconds of start-up and memory."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.serving import ROOT


def test_cpu_stages_never_import_torch() -> None:
    script = (
        "import json, sys\n"
        "import deployments.stages.ingress, deployments.stages.preprocessor\n"
        "import deployments.stages.postprocessor\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision'))))\n"
    )
    assert _printed(script) == []


def test_the_model_stage_and_the_build_import_torchvision_only_for_a_torchvision_model() -> None:
    """torchvision costs a process 1.4 s to import: a Model replica and an app's build of a model
    of its own (an import path) do without it; one of torchvision's names loads it."""
    script = (
        "import json, sys\n"
        "import deployments.stages.model, vision_serve.graph\n"
        "from deployments.runtime import model_source\n"
        "from deployments.runtime.spec import ModelSpec\n"
        "own = ModelSpec(name='tests.fixtures.models:echo', weights='none')\n"
        "model_source.load(own, model_source.resolve(own))\n"
        "before = 'torchvision' in sys.modules\n"
        "named = ModelSpec(name='resnet18', weights='none')\n"
        "model_source.resolve(named)\n"
        "print(json.dumps([before, 'torchvision' in sys.modules]))\n"
    )
    assert _printed(script) == [False, True]


def _printed(script: str) -> Any:
    """The JSON that `script`, run in a fresh interpreter, prints last."""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


# The pure logic: plain functions and types a unit test (or a tool) uses without a cluster.
RAY_FREE = (
    "deployments.items",
    "deployments.errors",
    "deployments.flow.batching",
    "deployments.flow.poison",
    "deployments.flow.health",
    "deployments.flow.tally",
    "deployments.pixels.imaging",
    "deployments.pixels.geometry",
    "deployments.pixels.masks",
    "deployments.tasks",
    "deployments.runtime.spec",
    "deployments.settings",
    "deployments.transports.http_io",
    "deployments.transports.auth",
    "deployments.transports.oip_tensors",
    "deployments.transports.oip_rest",
    "deployments.transports.oip_grpc",
    "deployments.transports.oip_repository",
)


def test_pure_modules_import_without_ray_or_torch() -> None:
    script = (
        "import importlib, sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'torch', 'torchvision'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        f"for name in {RAY_FREE!r}:\n"
        "    importlib.import_module(name)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
