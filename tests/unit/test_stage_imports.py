"""The CPU stages (Ingress, Preprocessor, Postprocessor) start without importing torch: only the
Model needs it, and importing it costs every other replica seconds of start-up and memory."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.serving import ROOT


def test_cpu_stages_never_import_torch() -> None:
    script = (
        "import json, sys\n"
        "import deployments.stages.ingress, deployments.stages.preprocessor\n"
        "import deployments.stages.postprocessor\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
