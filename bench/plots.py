"""The benchmark's PNG plots: throughput and p99 by images in flight, p99 against offered load
(open loop), and the batch sizes formed. Text tables are in bench/report.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write(result: dict[str, Any], folder: Path) -> list[Path]:
    """Every plot the run has data for, as PNG files in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    figures = (throughput, p99, open_loop_p99, batch_sizes)
    return [path for plot in figures if (path := plot(result, folder)) is not None]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(result: dict[str, Any], folder: Path) -> Path | None:
    import matplotlib.pyplot as plt

    configs = result["configs"]
    raw_ips = result.get("raw", {}).get("throughput_ips")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, cfg in configs.items():
        pts = [p for p in cfg["points"] if p["summary"]["ok_requests"]]
        if len(pts) < 1:
            continue
        ax.plot(
            [p["concurrency"] * cfg["images_per_request"] for p in pts],
            [p["summary"]["throughput_ips"] for p in pts],
            marker="o",
            label=name,
        )
    if raw_ips:
        ax.axhline(raw_ips, color="black", linestyle="--", label=f"raw pipeline {raw_ips:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("images in flight (closed loop)")
    ax.set_ylabel("images / s")
    ax.set_title(f"Throughput · {result['meta']['label']}")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _save(fig, folder / "throughput.png")


def p99(result: dict[str, Any], folder: Path) -> Path | None:
    import matplotlib.pyplot as plt

    configs = result["configs"]
    raw = result.get("raw", {})
    raw_ips = raw.get("throughput_ips")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, cfg in configs.items():
        pts = [p for p in cfg["points"] if p["summary"]["ok_requests"]]
        if pts:
            ax.plot(
                [p["concurrency"] * cfg["images_per_request"] for p in pts],
                [p["summary"]["latency_ms"]["p99"] for p in pts],
                marker="o",
                label=name,
            )
    if raw_ips:
        xs = sorted(
            {
                p["concurrency"] * c["images_per_request"]
                for c in configs.values()
                for p in c["points"]
            }
        )
        ax.plot(
            xs,
            [1.5 * c / raw_ips * 1000 for c in xs],
            color="black",
            linestyle="--",
            label="1.5 × c / raw throughput",
        )
        if raw.get("single_p50_ms"):
            ax.axhline(raw["single_p50_ms"], color="grey", linestyle=":", label="raw single image")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("images in flight (closed loop)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"p99 latency · {result['meta']['label']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder / "p99.png")


def open_loop_p99(result: dict[str, Any], folder: Path) -> Path | None:
    import matplotlib.pyplot as plt

    configs = result["configs"]
    raw_ips = result.get("raw", {}).get("throughput_ips")
    opened = {n: c["open_loop"] for n, c in configs.items() if c.get("open_loop")}
    if opened:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, pts in opened.items():
            pts = [p for p in pts if p["summary"]["ok_requests"]]
            ax.plot(
                [p["offered_rps"] for p in pts],
                [p["summary"]["latency_ms"]["p99"] for p in pts],
                marker="o",
                label=f"{name} (closed-loop peak {configs[name]['peak_rps']:.1f}/s)",
            )
        if raw_ips:
            ax.axvline(raw_ips, color="black", linestyle="--", label=f"raw pipeline {raw_ips:.0f}")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (single-image requests / s, open loop)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_title(f"p99 against offered load · {result['meta']['label']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, folder / "open_loop_p99.png")

    return None


def batch_sizes(result: dict[str, Any], folder: Path) -> Path | None:
    import matplotlib.pyplot as plt

    configs = result["configs"]
    names = [n for n, c in configs.items() if c["points"]]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            cfg = configs[name]
            mbs = int(cfg["user_config"]["max_batch_size"])
            sizes = list(range(1, max(mbs, 1) + 1))
            pts = cfg["points"]
            width = 0.8 / max(len(pts), 1)
            for i, p in enumerate(pts):
                hist = p["summary"]["batch_size_hist"]
                total = sum(hist.values()) or 1
                ax.bar(
                    [s + (i - (len(pts) - 1) / 2) * width for s in sizes],
                    [100 * hist.get(str(s), 0) / total for s in sizes],
                    width=width,
                    label=f"c={p['concurrency']}",
                )
            ax.set_title(f"{name} (max_batch_size {mbs})", fontsize=9)
            ax.set_xlabel("batch size")
            ax.set_xticks(sizes)
            ax.set_ylabel("% of items")
            ax.legend(fontsize=7)
        fig.suptitle("Batch sizes formed (each item reports the size of its forward pass)")
        return _save(fig, folder / "batch_sizes.png")
    return None
