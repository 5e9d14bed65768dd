"""Turn a benchmark run into the targets' verdicts, a Markdown report and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.stats import (
    PROCESS_GROUP_ORDER,
    Target,
    batch_fill_target,
    ceiling_target,
    mismatch_target,
    peer_latency_target,
    ratio_target,
)

TARGET_CONCURRENCY = 32  # images in flight for the throughput and overhead targets
BATCH_FILL_IN_FLIGHT = 16  # batches must be full from this many images in flight
SYSTEM_NAMES = {"graph": "graph", "plain": "plain Ray Serve", "litserve": "LitServe"}
INLINE_LIMIT = 100 * 1024  # Ray passes smaller objects inline in the RPC, larger ones via plasma


def _point(config: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    for point in config["points"]:
        if point["concurrency"] == concurrency:
            return point
    return None


def _in_flight_point(config: dict[str, Any], images: int) -> dict[str, Any] | None:
    """The closed-loop point with `images` images in flight (concurrency x images per request)."""
    for point in config["points"]:
        if point["concurrency"] * config["images_per_request"] == images:
            return point
    return None


def _ips(point: dict[str, Any] | None) -> float:
    return float(point["summary"]["throughput_ips"]) if point else math.nan


def _overhead(point: dict[str, Any] | None) -> float:
    return float(point.get("overhead", {}).get("total_ms", math.nan)) if point else math.nan


def targets(result: dict[str, Any]) -> list[Target]:
    """The issue's targets; every ratio is between systems measured in this run.

    - single-image, 32 in flight: graph >= 0.85 x in-process and >= 1.0 x the plain Ray Serve app;
    - 8-image multipart, 32 images in flight: >= 0.95 x in-process;
    - serving CPU outside forward + decode at 32 images in flight: <= 10 ms/img single-image,
      <= 4 ms/img multipart;
    - 1 in flight: p50 <= the plain Ray Serve app's p50 + 5 ms;
    - every graph point with >= 16 images in flight: mean batch >= 0.9 x max_batch_size;
    - no answer carries another image's top-5 (every system, every point).
    """
    raw_ips = float(result.get("raw", {}).get("throughput_ips", math.nan))
    configs: dict[str, Any] = result["configs"]
    c = TARGET_CONCURRENCY
    out: list[Target] = []
    single = configs.get("batch8")
    plain = configs.get("plain")
    multi = configs.get("multipart8")
    p32 = _in_flight_point(single, c) if single else None
    plain32 = _in_flight_point(plain, c) if plain else None
    m32 = _in_flight_point(multi, c) if multi else None
    if p32:
        ips = _ips(p32)
        out.append(
            ratio_target(f"batch8 {c} in flight >= 0.85 x in-process", ips, raw_ips, 0.85, "raw")
        )
        if plain32:
            out.append(
                ratio_target(
                    f"batch8 {c} in flight >= 1.0 x plain Ray Serve",
                    ips,
                    _ips(plain32),
                    1.0,
                    "plain Ray Serve",
                )
            )
        out.append(
            ceiling_target(
                f"batch8 {c} in flight serving CPU outside forward+decode <= 10 ms/img",
                _overhead(p32),
                10.0,
                "ms/img",
            )
        )
    if m32:
        out.append(
            ratio_target(
                f"multipart8 {c} images in flight ({m32['concurrency']} requests) >= 0.95 x "
                "in-process",
                _ips(m32),
                raw_ips,
                0.95,
                "raw",
            )
        )
        out.append(
            ceiling_target(
                f"multipart8 {c} images in flight serving CPU outside forward+decode <= 4 ms/img",
                _overhead(m32),
                4.0,
                "ms/img",
            )
        )
    p1 = _point(single, 1) if single else None
    plain1 = _point(plain, 1) if plain else None
    if p1 and plain1:
        out.append(
            peer_latency_target(
                "batch8 1 in flight p50 <= plain Ray Serve p50 + 5 ms",
                p1["summary"]["latency_ms"]["p50"],
                plain1["summary"]["latency_ms"]["p50"],
                5.0,
            )
        )
    for name, cfg in configs.items():
        if cfg.get("system", "graph") != "graph":
            continue
        mbs = int(cfg["user_config"]["max_batch_size"])
        for p in cfg["points"]:
            in_flight = p["concurrency"] * cfg["images_per_request"]
            if in_flight >= BATCH_FILL_IN_FLIGHT and p["summary"]["ok_requests"]:
                out.append(
                    batch_fill_target(
                        f"{name} c={p['concurrency']} ({in_flight} images in flight) "
                        f"mean batch >= 0.9 x {mbs}",
                        p["summary"]["batch_size_mean"],
                        mbs,
                    )
                )
    by_system: dict[str, list[int]] = {}
    for cfg in configs.values():
        counts = by_system.setdefault(cfg.get("system", "graph"), [0, 0])
        for p in [*cfg["points"], *cfg.get("open_loop", [])]:
            counts[0] += int(p["summary"].get("mismatched_items", 0))
            counts[1] += int(p["summary"].get("checked_items", 0))
    for system, (bad, checked) in by_system.items():
        if checked or result.get("raw"):
            out.append(
                mismatch_target(
                    f"{SYSTEM_NAMES.get(system, system)}: 0 mis-joined items", bad, checked
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


def _ratio(a: float, b: float) -> str:
    return _fmt(a / b, 2) if b == b and b > 0 and a == a else "–"


def _mismatch(summary: dict[str, Any]) -> str:
    checked = summary.get("checked_items", 0)
    return f"{summary.get('mismatched_items', 0)}/{checked}" if checked else "–"


def _peer_ips(configs: dict[str, Any], peer: str, in_flight: int) -> float:
    cfg = configs.get(peer)
    return _ips(_in_flight_point(cfg, in_flight)) if cfg else math.nan


def headline(result: dict[str, Any]) -> str:
    """One row per system at 1 and 32 images in flight: every ratio from this run."""
    raw = result.get("raw", {})
    raw_ips = float(raw.get("throughput_ips", math.nan))
    configs = result["configs"]
    plain32 = _peer_ips(configs, "plain", TARGET_CONCURRENCY)
    c = TARGET_CONCURRENCY
    rows = [
        f"| system | img/s at {c} in flight | × in-process | × plain Ray Serve | "
        f"serving CPU outside forward+decode ms/img at {c} | p50 ms at 1 | p99 ms at {c} | "
        f"mean batch at {c} | mis-joined |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if raw_ips == raw_ips:
        rows.append(
            f"| in-process pipeline (batch 8) | {_fmt(raw_ips)} | 1.00 | "
            f"{_ratio(raw_ips, plain32)} | 0 by definition | "
            f"{_fmt(raw.get('single_p50_ms'))} (batch 1) | – | 8 | – |"
        )
    for name, cfg in configs.items():
        if cfg.get("image_set") != "target" or name == "batch1":
            continue
        p = _in_flight_point(cfg, c)
        p1 = _point(cfg, 1)
        if p is None:
            continue
        s = p["summary"]
        every = [*cfg["points"], *cfg.get("open_loop", [])]
        bad = sum(q["summary"].get("mismatched_items", 0) for q in every)
        checked = sum(q["summary"].get("checked_items", 0) for q in every)
        system = SYSTEM_NAMES.get(cfg.get("system", "graph"), "graph")
        what = f"{system} ({name})" if system == "graph" else system
        if cfg["images_per_request"] > 1:
            what += f", {p['concurrency']} requests of {cfg['images_per_request']}"
        rows.append(
            f"| {what} | {_fmt(s['throughput_ips'])} | {_ratio(s['throughput_ips'], raw_ips)} | "
            f"{_ratio(s['throughput_ips'], plain32)} | **{_fmt(_overhead(p))}** | "
            f"{_fmt(p1['summary']['latency_ms']['p50']) if p1 else '–'} | "
            f"{_fmt(s['latency_ms']['p99'])} | {_fmt(s['batch_size_mean'], 2)} | "
            f"{bad}/{checked} |"
        )
    return "\n".join(rows)


def overhead_table(result: dict[str, Any]) -> list[str]:
    """Serving CPU ms per image outside forward + decode, by process, every closed-loop point."""
    rows = [
        (name, p)
        for name, cfg in result["configs"].items()
        for p in cfg["points"]
        if p.get("overhead")
    ]
    if not rows:
        return []
    groups: list[str] = [g for g in PROCESS_GROUP_ORDER]
    for _, p in rows:
        for g in p["overhead"]["by_group_ms"]:
            if g not in groups:
                groups.append(g)
    used = [g for g in groups if any(g in p["overhead"]["by_group_ms"] for _, p in rows)]
    raw = result.get("raw", {})
    lines = [
        "",
        "## Serving CPU outside the forward pass and the decode, ms per image, by process",
        "",
        "Service CPU per image answered, minus the raw pipeline's forward-pass CPU per image at "
        "the batch size each item was in (batch 1: "
        f"{_fmt(raw.get('forward_cpu_ms_per_image_by_batch', {}).get('1'))}, batch 8: "
        f"{_fmt(raw.get('forward_cpu_ms_per_image_by_batch', {}).get('8'))} ms) taken from the "
        f"process that runs the model, and its decode CPU per image "
        f"({_fmt(raw.get('decode_cpu_ms_per_image'))} ms) taken from the process that decodes.",
        "",
        "| config | conc | " + " | ".join(used) + " | **total** | forward subtracted | "
        "decode subtracted |",
        "|" + "---|" * (len(used) + 5),
    ]
    for name, p in rows:
        o = p["overhead"]
        cells = [_fmt(o["by_group_ms"].get(g)) for g in used]
        lines.append(
            f"| {name} | {p['concurrency']} | "
            + " | ".join(cells)
            + f" | **{_fmt(o['total_ms'])}** | {_fmt(o['forward_ms'])} | {_fmt(o['decode_ms'])} |"
        )
    return lines


def open_loop_table(result: dict[str, Any]) -> list[str]:
    rows = [(name, p) for name, cfg in result["configs"].items() for p in cfg.get("open_loop", [])]
    if not rows:
        return []
    arrivals = rows[0][1].get("arrivals", "poisson")
    lines = [
        "",
        f"## Open loop ({arrivals} arrivals at a fixed rate, single-image requests)",
        "",
        "Offered load is a fraction of the system's own closed-loop peak in this run. The first "
        "10 % of each schedule is sent but not counted.",
        "",
        "| config | × peak | offered req/s | answered img/s | p50 ms | p90 ms | p99 ms | "
        "errors | mis-joined | mean batch | overhead ms/img | sender lag p99 ms |",
        "|" + "---|" * 12,
    ]
    for name, p in rows:
        s = p["summary"]
        lines.append(
            f"| {name} | {p['fraction_of_peak']:.2f} | {_fmt(p['offered_rps'])} | "
            f"{_fmt(s['throughput_ips'])} | {_fmt(s['latency_ms']['p50'])} | "
            f"{_fmt(s['latency_ms']['p90'])} | {_fmt(s['latency_ms']['p99'])} | "
            + str(s["errors"])
            + (f" {s['errors_by_status']}" if s["errors"] else "")
            + f" | {_mismatch(s)} | {_fmt(s['batch_size_mean'], 2)} | {_fmt(_overhead(p))} | "
            f"{_fmt(p['marks'].get('send_lag_ms_p99'))} |"
        )
    return lines


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
        "| forward ms/batch | CPU ms/img | decode CPU ms/img | forward CPU ms/img | other cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for when in ("before", "after"):
        r = raw.get(when)
        if not r:
            continue
        t = r["sets"]["target"]
        lines.append(
            f"| {when} the service | {_fmt(t['throughput_ips'])} | {_fmt(t['single_ms']['p50'])} | "
            f"{_fmt(t['stage_ms_per_image']['decode'])} | {_fmt(t['forward_ms_per_batch'])} | "
            f"{_fmt(t['cpu_ms_per_image'])} | "
            f"{_fmt(t.get('stage_cpu_ms_per_image', {}).get('decode'))} | "
            f"{_fmt(t.get('stage_cpu_ms_per_image', {}).get('forward'))} | "
            f"{_fmt(r.get('other_cores'), 2)} |"
        )
    lines.append(
        f"| **used for targets** | **{_fmt(raw.get('throughput_ips'))}** | "
        f"**{_fmt(raw.get('single_p50_ms'))}** | | | | "
        f"**{_fmt(raw.get('decode_cpu_ms_per_image'))}** | "
        f"**{_fmt(raw.get('forward_cpu_ms_per_image_batch8'))}** | |"
    )
    if raw.get("mixed_ips"):
        lines.append(f"\nMixed sizes (320x240 … 1920x1080): {_fmt(raw['mixed_ips'])} img/s.")
    configs = result["configs"]
    lines += ["", "## Systems measured in this run", ""]
    lines.append("| config | system | what |")
    lines.append("|---|---|---|")
    lines.append(
        "| raw | in-process | decode → resnet18 → top-5 in one Python process, batch 8, "
        "no serving |"
    )
    for name, cfg in configs.items():
        system = SYSTEM_NAMES.get(cfg.get("system", "graph"), cfg.get("system", "graph"))
        lines.append(f"| {name} | {system} | {cfg['description']} |")
    for name, why in meta.get("skipped", {}).items():
        lines.append(f"| {name} | skipped | {why} |")
    lines += [
        "",
        "## Headline (closed loop, HTTP on 127.0.0.1)",
        "",
        headline(result),
        "",
        "## All closed-loop points",
        "",
        "| config | conc | img/s | × raw | × plain | overhead ms/img | p50 ms | p90 ms | p99 ms | "
        "errors | mis-joined | mean batch | batch sizes (share of items) | wait ms | infer ms | "
        "pre ms | post ms | server ms | outside ms | service CPU ms/img | client CPU ms/img | "
        "other cores |",
        "|" + "---|" * 22,
    ]
    raw_ips = float(raw.get("throughput_ips", math.nan))
    for name, cfg in configs.items():
        for p in cfg["points"]:
            s = p["summary"]
            t = s["server_ms"]
            cpu = p.get("cpu", {})
            images = max(s["images"], 1)
            outside = (
                s["latency_ms"]["mean"] - t["total"] if cfg["images_per_request"] == 1 else None
            )
            plain_ips = _peer_ips(configs, "plain", p["concurrency"] * cfg["images_per_request"])
            lines.append(
                "| "
                + " | ".join(
                    [
                        name,
                        str(p["concurrency"]),
                        _fmt(s["throughput_ips"]),
                        _ratio(s["throughput_ips"], raw_ips),
                        _ratio(s["throughput_ips"], plain_ips),
                        _fmt(_overhead(p)),
                        _fmt(s["latency_ms"]["p50"]),
                        _fmt(s["latency_ms"]["p90"]),
                        _fmt(s["latency_ms"]["p99"]),
                        str(s["errors"]) + (f" {s['errors_by_status']}" if s["errors"] else ""),
                        _mismatch(s),
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
    lines += overhead_table(result)
    lines += open_loop_table(result)
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
            [p["concurrency"] * cfg["images_per_request"] for p in pts],
            [p["summary"]["throughput_ips"] for p in pts],
            marker="o",
            label=name,
        )
    if raw_ips:
        ax.axhline(raw_ips, color="black", linestyle="--", label=f"raw pipeline {raw_ips:.0f}")
        ax.axhline(0.85 * raw_ips, color="grey", linestyle=":", label="0.85 × raw")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("images in flight (closed loop)")
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
    fig.tight_layout()
    path = folder / "p99.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

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
        fig.tight_layout()
        path = folder / "open_loop_p99.png"
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
