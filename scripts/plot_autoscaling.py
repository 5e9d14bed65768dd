"""Draw the autoscaling timeline that tests/system/test_autoscaling.py records.

    .venv/bin/python scripts/plot_autoscaling.py [timeline.json] [out.png]

Defaults: artifacts/autoscaling_timeline.json -> docs/autoscaling.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent


def main(source: Path, target: Path) -> None:
    data = json.loads(source.read_text())
    t = [p["t"] for p in data["points"]]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=120)
    series = (
        ("model_replicas", "-", "Model replicas (running)"),
        ("second_replicas", ":", "second model replicas (from zero)"),
        ("gpu_nodes", "--", "GPU nodes (alive)"),
    )
    for key, style, label in series:
        if any(key in p for p in data["points"]):  # older timelines have no second model
            values = [p.get(key, 0) for p in data["points"]]
            ax.step(t, values, where="post", linestyle=style, label=label)
    marks = data["marks"]
    if "second_start" in marks and "second_end" in marks:
        ax.axvspan(
            marks["second_start"],
            marks["second_end"],
            alpha=0.15,
            color="tab:green",
            label="12 requests to the second model (cold start)",
        )
    if "load_start" in marks and "load_end" in marks:
        ax.axvspan(
            marks["load_start"],
            marks["load_end"],
            alpha=0.12,
            color="tab:orange",
            label=f"load: {data.get('requests', '?')} requests, all answered",
        )
    if "node_lost" in marks:
        ax.axvline(marks["node_lost"], color="tab:red", linewidth=1.2, label="a GPU node lost")
        if "node_recovered" in marks:
            ax.axvspan(
                marks["node_lost"],
                marks["node_recovered"],
                alpha=0.12,
                color="tab:red",
                label=f"Model back on live nodes "
                f"({marks['node_recovered'] - marks['node_lost']:.0f} s)",
            )
    ax.set_xlabel("seconds since the test started")
    ax.set_ylabel("count")
    ax.set_yticks(
        range(0, max(max(p["gpu_nodes"], p["model_replicas"]) for p in data["points"]) + 2)
    )
    ax.set_title("Autoscaling on a fake multi-node Ray cluster (head without GPUs)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    print(f"wrote {target}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        Path(args[0]) if args else ROOT / "artifacts" / "autoscaling_timeline.json",
        Path(args[1]) if len(args) > 1 else ROOT / "docs" / "autoscaling.png",
    )
