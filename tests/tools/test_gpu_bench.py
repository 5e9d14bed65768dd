"""bench/gpu_forward.py runs end to end on the CPU (`--device cpu --quick`), tiny."""

from __future__ import annotations

import json
from pathlib import Path

from bench import gpu_forward


def test_quick_cpu_run_writes_every_row_and_the_header(tmp_path: Path) -> None:
    out = tmp_path / "gpu_forward.json"
    argv = ["--device", "cpu", "--quick", "--model", "resnet18", "--size", "32", "--json", str(out)]
    assert gpu_forward.main(argv) == 0
    result = json.loads(out.read_text())
    head = result["header"]
    assert (head["model"], head["input"], head["device"]) == ("resnet18", "32x32", "cpu")
    assert head["torch"] and head["torchvision"] and head["gpu"] is None
    rows = {(r["precision"], r["channels_last"]): r for r in result["forward"]}
    assert len(rows) == 6  # three precisions, with and without channels_last
    for precision in ("float32", "bfloat16"):
        assert rows[(precision, True)]["batch"] == 2
        assert rows[(precision, True)]["images_per_s"] > 0
    assert "needs a CUDA replica" in rows[("float16", False)]["skipped"]
    assert "CUDA only" in result["upload"]["skipped"]
    decode = result["decode"]
    assert decode["batch"] == 4 and decode["cpu_decode_and_place_images_per_s"] > 0
    assert decode["cpu_1_core_pillow_decode_images_per_s"] > 0
    assert "| float16 | False | skipped |" in gpu_forward.table(result["forward"])
