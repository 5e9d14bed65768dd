"""Turn a benchmark run into the targets' verdicts, a Markdown report and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.stats import (
    Target,
    batch_fill_target,
    effective_batch_wait_ms,
    idle_latency_target,
    p99_target,
    throughput_target,
)

TARGET_CONCURRENCY = 32
INLINE_LIMIT = 100 * 1024  # Ray passes smaller objects inline in the RPC, larger ones via plasma


def _point(config: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    for point in config["points"]:
        if point["concurrency"] == concurrency:
            return point
    return None


def targets(result: dict[str, Any]) -> list[Target]:
    """The issue's targets, evaluated on the shipped batching configuration (`batch8`)."""
    raw = result.get("raw", {})
    raw_ips = float(raw.get("throughput_ips", math.nan))
    raw_single = float(raw.get("single_p50_ms", math.nan))
    configs: dict[str, Any] = result["configs"]
    out: list[Target] = []
    c = TARGET_CONCURRENCY
    for name, cfg in configs.items():
        if cfg["images_per_request"] != 1 or cfg.get("image_set") != "target":
            continue
        if name != "batch8":
            continue
        p = _point(cfg, c)
        if p is None:
            continue
        s = p["summary"]
        out.append(
            throughput_target(
                f"{name} c={c} single-image throughput >= 0.9 x raw",
                s["throughput_ips"],
                raw_ips,
                0.9,
            )
        )
        out.append(
            p99_target(
                f"{name} c={c} p99 <= 1.5 x c / throughput",
                s["latency_ms"]["p99"],
                c,
                s["throughput_rps"],
            )
        )
    for name, cfg in configs.items():
        if cfg["images_per_request"] <= 1:
            continue
        p = _point(cfg, c)
        if p is not None:
            out.append(
                throughput_target(
                    f"{name} c={c} ({cfg['images_per_request']}-image multipart) >= 0.97 x raw",
                    p["summary"]["throughput_ips"],
                    raw_ips,
                    0.97,
                )
            )
    for name, cfg in configs.items():
        mbs = int(cfg["user_config"]["max_batch_size"])
        for p in cfg["points"]:
            in_flight = p["concurrency"] * cfg["images_per_request"]
            if in_flight >= 2 * mbs and p["summary"]["ok_requests"]:
                out.append(
                    batch_fill_target(
                        f"{name} c={p['concurrency']} ({in_flight} images in flight) "
                        f"mean batch >= 0.9 x {mbs}",
                        p["summary"]["batch_size_mean"],
                        mbs,
                    )
                )
    for name, cfg in configs.items():
        if cfg["images_per_request"] != 1 or cfg.get("image_set") != "target":
            continue
        p = _point(cfg, 1)
        if p is None:
            continue
        uc = cfg["user_config"]
        wait = effective_batch_wait_ms(int(uc["max_batch_size"]), float(uc["batch_wait_timeout_s"]))
        out.append(
            idle_latency_target(
                f"{name} c=1 p50 within 3 ms of raw single + batch wait",
                p["summary"]["latency_ms"]["p50"],
                raw_single,
                wait,
            )
        )
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _hist(hist: dict[str, int]) -> str:
    total = sum(hist.values())
    if not total:
        return "–"
    return " ".join(f"{k}:{100 * v / total:.0f}%" for k, v in hist.items())


def markdown(result: dict[str, Any], verdicts: list[Target]) -> str:
    raw = result.get("raw", {})
    meta = result["meta"]
    lines = [
        f"# Benchmark: {meta['label']}",
        "",
        f"{meta['started']} · {meta['cpus']} CPUs · model {meta['model']} (weights none, seed 0) · "
        f"Ray {meta['ray']} · torch {meta['torch']} · commit {meta['commit']} · "
        f"wall {meta.get('wall_s', 0):.0f} s",
        "",
        f"Command: `{meta['command']}`",
        "",
        "Other load on the machine during the run (cores busy outside this benchmark): "
        + ", ".join(f"{k} {v:.2f}" for k, v in meta.get("foreign_cores", {}).items())
        + ".",
    ]
    for proc in meta.get("foreign_top", []):
        lines.append(f"- {proc['cpu_pct']:.0f}% CPU: `{proc['cmd'][:110]}`")
    lines += [
        "",
        "## Raw in-process pipeline (decode → resnet18 → top-5, one process, no serving)",
        "",
        "| measurement | img/s (batch 8) | single-image p50 ms | decode ms/img "
        "| forward ms/batch | CPU ms/img | other cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for when in ("before", "after"):
        r = raw.get(when)
        if not r:
            continue
        t = r["sets"]["target"]
        lines.append(
            f"| {when} the service | {_fmt(t['throughput_ips'])} | {_fmt(t['single_ms']['p50'])} | "
            f"{_fmt(t['stage_ms_per_image']['decode'])} | {_fmt(t['forward_ms_per_batch'])} | "
            f"{_fmt(t['cpu_ms_per_image'])} | {_fmt(r.get('other_cores'), 2)} |"
        )
    lines.append(
        f"| **used for targets** | **{_fmt(raw.get('throughput_ips'))}** | "
        f"**{_fmt(raw.get('single_p50_ms'))}** | | | | |"
    )
    if raw.get("mixed_ips"):
        lines.append(f"\nMixed sizes (320x240 … 1920x1080): {_fmt(raw['mixed_ips'])} img/s.")
    lines += [
        "",
        "## Served (HTTP on 127.0.0.1, closed loop)",
        "",
        "| config | conc | img/s | × raw | p50 ms | p90 ms | p99 ms | errors | mean batch | "
        "batch sizes (share of items) | wait ms | infer ms | pre ms | post ms | server ms | "
        "outside ms | service CPU ms/img | client CPU ms/img | other cores |",
        "|" + "---|" * 19,
    ]
    raw_ips = float(raw.get("throughput_ips", math.nan))
    for name, cfg in result["configs"].items():
        for p in cfg["points"]:
            s = p["summary"]
            t = s["server_ms"]
            cpu = p.get("cpu", {})
            images = max(s["images"], 1)
            outside = (
                s["latency_ms"]["mean"] - t["total"] if cfg["images_per_request"] == 1 else None
            )
            lines.append(
                "| "
                + " | ".join(
                    [
                        name,
                        str(p["concurrency"]),
                        _fmt(s["throughput_ips"]),
                        _fmt(s["throughput_ips"] / raw_ips, 2) if raw_ips == raw_ips else "–",
                        _fmt(s["latency_ms"]["p50"]),
                        _fmt(s["latency_ms"]["p90"]),
                        _fmt(s["latency_ms"]["p99"]),
                        str(s["errors"]) + (f" {s['errors_by_status']}" if s["errors"] else ""),
                        _fmt(s["batch_size_mean"], 2),
                        _hist(s["batch_size_hist"]),
                        _fmt(t["batch_wait"]),
                        _fmt(t["inference"]),
                        _fmt(t["preprocess"]),
                        _fmt(t["postprocess"], 2),
                        _fmt(t["total"]),
                        _fmt(outside),
                        _fmt(cpu.get("service_s", math.nan) * 1000 / images),
                        _fmt(cpu.get("client_s", math.nan) * 1000 / images),
                        _fmt(cpu.get("other_s", math.nan) / cpu["wall_s"], 2) if cpu else "–",
                    ]
                )
                + " |"
            )
    focus = _point(result["configs"].get("batch8", {"points": []}), TARGET_CONCURRENCY)
    if focus and focus.get("cpu"):
        cpu = focus["cpu"]
        images = max(focus["summary"]["images"], 1)
        lines += [
            "",
            f"## Where the CPU goes: batch8 at concurrency {TARGET_CONCURRENCY}",
            "",
            "| process | CPU ms per image | cores busy |",
            "|---|---|---|",
        ]
        for role, secs in cpu["by_role_s"].items():
            if secs * 1000 / images >= 0.05:
                lines.append(
                    f"| {role} | {secs * 1000 / images:.1f} | {secs / cpu['wall_s']:.2f} |"
                )
        lines.append(
            f"| **service total** | **{cpu['service_s'] * 1000 / images:.1f}** | "
            f"{cpu['service_s'] / cpu['wall_s']:.2f} |"
        )
        lines.append(
            f"| load generator (this process) | {cpu['client_s'] * 1000 / images:.1f} | "
            f"{cpu['client_s'] / cpu['wall_s']:.2f} |"
        )
        lines.append(f"| other work on the machine | | {cpu['other_s'] / cpu['wall_s']:.2f} |")
    pay = raw.get("payloads")
    if pay:
        lines += [
            "",
            "## Bytes per item between stages (pickle protocol 5, real objects)",
            "",
            "| hop | object | in-band B | out-of-band B | total B | Ray path |",
            "|---|---|---|---|---|---|",
        ]
        hops = (
            ("client → Ingress", "HTTP body", None),
            ("Ingress → Preprocessor", "(bytes, Options, request_id)", "ingress_to_pre"),
            ("Preprocessor → Model", "Sample", "pre_to_model"),
            ("Model → Postprocessor", "RawOutput", "model_to_post"),
            ("Preprocessor → Postprocessor", "Sample (again)", "sample_to_post"),
            ("Postprocessor → Ingress", "Result", "post_to_ingress"),
            ("Ingress → client", "JSON", None),
        )
        for hop, obj, key in hops:
            if key is None:
                n = pay["body_bytes"] if hop.startswith("client") else pay["http_response"]
                lines.append(f"| {hop} | {obj} | {n} | 0 | {n} | HTTP |")
                continue
            sz = pay[key]
            path = "object store (> 100 KiB)" if sz["total"] > INLINE_LIMIT else "inline in the RPC"
            sizes = f"{sz['in_band']} | {sz['out_of_band']} | {sz['total']}"
            lines.append(f"| {hop} | {obj} | {sizes} | {path} |")
        total = sum(pay[k]["total"] for _, _, k in hops if k)
        lines.append(f"| **all Ray hops** | | | | **{total}** | |")
    lines += ["", "## Targets", ""]
    lines += [f"- {t.line()}" for t in verdicts]
    lines += ["", "Column meanings: see bench/README.md.", ""]
    return "\n".join(lines)


def plots(result: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = result.get("raw", {})
    raw_ips = raw.get("throughput_ips")
    written: list[Path] = []
    configs = result["configs"]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, cfg in configs.items():
        pts = [p for p in cfg["points"] if p["summary"]["ok_requests"]]
        if len(pts) < 1:
            continue
        ax.plot(
            [p["concurrency"] for p in pts],
            [p["summary"]["throughput_ips"] for p in pts],
            marker="o",
            label=name,
        )
    if raw_ips:
        ax.axhline(raw_ips, color="black", linestyle="--", label=f"raw pipeline {raw_ips:.0f}")
        ax.axhline(0.9 * raw_ips, color="grey", linestyle=":", label="0.9 × raw")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("images / s")
    ax.set_title(f"Throughput · {result['meta']['label']}")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, cfg in configs.items():
        pts = [p for p in cfg["points"] if p["summary"]["ok_requests"]]
        if pts:
            ax.plot(
                [p["concurrency"] for p in pts],
                [p["summary"]["latency_ms"]["p99"] for p in pts],
                marker="o",
                label=name,
            )
    if raw_ips:
        xs = sorted({p["concurrency"] for cfg in configs.values() for p in cfg["points"]})
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
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"p99 latency · {result['meta']['label']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "p99.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

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
        fig.tight_layout()
        path = folder / "batch_sizes.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
