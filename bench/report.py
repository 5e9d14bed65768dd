"""Turn a benchmark run into the targets' verdicts and a Markdown report (plots: bench/plots.py)."""

from __future__ import annotations

import math
from typing import Any

from bench.stats import (
    PROCESS_GROUP_ORDER,
    Target,
    batch_fill_target,
    best_of,
    ceiling_target,
    mismatch_target,
    not_measured,
    peer_latency_target,
    ratio_target,
)

TARGET_CONCURRENCY = 32  # images in flight for the throughput and overhead targets
BATCH_FILL_IN_FLIGHT = 16  # batches must be full from this many images in flight
OPEN_LOOP_FRACTION = 0.5  # the open-loop latency target's offered load, x each system's peak
SYSTEM_NAMES = {
    "graph": "graph",
    "plain": "plain Ray Serve (plain)",
    "plain-batch": "plain Ray Serve (plain-batch)",
    "litserve": "LitServe",
    "torchserve": "TorchServe",
}
# The plain Ray Serve apps: every ratio against "plain Ray Serve" takes the better of them, by
# the metric compared, in the same run.
PLAIN_PEERS = ("plain", "plain-batch")
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


def _p50(point: dict[str, Any] | None) -> float:
    return float(point["summary"]["latency_ms"]["p50"]) if point else math.nan


def _open_point(config: dict[str, Any], fraction: float) -> dict[str, Any] | None:
    """The open-loop point offered at `fraction` x the system's closed-loop peak."""
    for point in config.get("open_loop", []):
        if abs(point["fraction_of_peak"] - fraction) < 1e-9 and point["summary"]["ok_requests"]:
            return point
    return None


def best_plain(
    configs: dict[str, Any], metric: Any, higher: bool = True
) -> tuple[str, float] | None:
    """The better plain Ray Serve app of this run by `metric(config)`: (its name, the value).

    Higher is better for throughput, lower for latency; None when neither was measured.
    """
    return best_of({name: metric(configs[name]) for name in PLAIN_PEERS if name in configs}, higher)


def best_plain_ips(configs: dict[str, Any], in_flight: int) -> tuple[str, float] | None:
    return best_plain(configs, lambda cfg: _ips(_in_flight_point(cfg, in_flight)))


def cores_per_1000(point: dict[str, Any] | None) -> float:
    return float(point.get("cores_per_1000_ips", math.nan)) if point else math.nan


def targets(result: dict[str, Any]) -> list[Target]:
    """The issue's targets; every ratio is between systems measured in this run.

    - 1 in flight: graph batch8 p50 <= LitServe's p50 + 10 ms;
    - 32 single images in flight: graph batch8 img/s >= 1.0 x LitServe and >= 1.0 x the better
      plain Ray Serve app;
    - multipart8, 32 images in flight: >= 1.0 x the in-process pipeline;
    - serving CPU outside the forward pass and the decode at 32 images in flight: <= 8 ms/img
      for single images (batch8), <= 3 ms/img for multipart8;
    - open loop at 0.5 x peak: graph batch8 p50 <= the better plain Ray Serve app's p50;
    - every graph point with >= 16 images in flight: mean batch >= 0.9 x max_batch_size;
    - no answer carries another image's top-5 (every system, every point).

    A target one of whose sides was not measured in this run reads "not measured", never PASS.
    """
    raw_ips = float(result.get("raw", {}).get("throughput_ips", math.nan))
    configs: dict[str, Any] = result["configs"]
    c = TARGET_CONCURRENCY
    out: list[Target] = []
    single = configs.get("batch8")
    multi = configs.get("multipart8")
    lit = configs.get("litserve")
    p1 = _point(single, 1) if single else None
    p32 = _in_flight_point(single, c) if single else None
    m32 = _in_flight_point(multi, c) if multi else None

    def missing(*sides: tuple[str, Any]) -> str:
        return "not measured in this run: " + ", ".join(n for n, v in sides if v is None)

    name = "1 in flight: batch8 p50 <= LitServe p50 + 10 ms"
    lit1 = _point(lit, 1) if lit else None
    if p1 and lit1:
        out.append(peer_latency_target(name, _p50(p1), _p50(lit1), 10.0, "LitServe"))
    else:
        out.append(not_measured(name, missing(("batch8 at 1", p1), ("LitServe at 1", lit1))))

    name = f"{c} in flight: batch8 img/s >= 1.0 x LitServe"
    lit32 = _in_flight_point(lit, c) if lit else None
    if p32 and lit32:
        out.append(ratio_target(name, _ips(p32), _ips(lit32), 1.0, "LitServe"))
    else:
        out.append(
            not_measured(name, missing((f"batch8 at {c}", p32), (f"LitServe at {c}", lit32)))
        )

    name = f"{c} in flight: batch8 img/s >= 1.0 x the better plain Ray Serve app"
    plain32 = best_plain_ips(configs, c)
    if p32 and plain32:
        what = f"plain Ray Serve (the better: {plain32[0]})"
        out.append(ratio_target(name, _ips(p32), plain32[1], 1.0, what))
    else:
        out.append(
            not_measured(name, missing((f"batch8 at {c}", p32), ("plain Ray Serve", plain32)))
        )

    name = f"multipart8 {c} images in flight: img/s >= 1.0 x in-process"
    if m32 and raw_ips == raw_ips:
        out.append(ratio_target(name, _ips(m32), raw_ips, 1.0, "in-process"))
    else:
        raw = raw_ips if raw_ips == raw_ips else None
        out.append(not_measured(name, missing((f"multipart8 at {c}", m32), ("in-process", raw))))

    for cfg_name, point, limit in (("batch8", p32, 8.0), ("multipart8", m32, 3.0)):
        name = (
            f"{cfg_name} {c} images in flight: serving CPU outside forward+decode "
            f"<= {limit:g} ms/img"
        )
        overhead = _overhead(point)
        if overhead == overhead:
            out.append(ceiling_target(name, overhead, limit, "ms/img"))
        else:
            out.append(
                not_measured(
                    name,
                    f"not measured in this run: {cfg_name} at {c}, its CPU or the in-process costs",
                )
            )

    f = OPEN_LOOP_FRACTION
    name = f"open loop at {f:g} x peak: batch8 p50 <= the better plain Ray Serve app's p50"
    open_graph = _open_point(single, f) if single else None
    open_plain = best_plain(configs, lambda cfg: _p50(_open_point(cfg, f)), higher=False)
    if open_graph and open_plain:
        out.append(
            peer_latency_target(
                name,
                _p50(open_graph),
                open_plain[1],
                0.0,
                f"plain Ray Serve (the better: {open_plain[0]})",
            )
        )
    else:
        out.append(
            not_measured(
                name,
                missing(
                    (f"batch8 open loop at {f:g}", open_graph),
                    (f"plain Ray Serve open loop at {f:g}", open_plain),
                ),
            )
        )

    fills = []
    for cfg_name, cfg in configs.items():
        if cfg.get("system", "graph") != "graph":
            continue
        mbs = int(cfg["user_config"]["max_batch_size"])
        for p in cfg["points"]:
            in_flight = p["concurrency"] * cfg["images_per_request"]
            if in_flight >= BATCH_FILL_IN_FLIGHT and p["summary"]["ok_requests"]:
                fills.append(
                    batch_fill_target(
                        f"{cfg_name} c={p['concurrency']} ({in_flight} images in flight) "
                        f"mean batch >= 0.9 x {mbs}",
                        p["summary"]["batch_size_mean"],
                        mbs,
                    )
                )
    out += fills or [
        not_measured(
            f"mean batch >= 0.9 x max_batch_size from {BATCH_FILL_IN_FLIGHT} images in flight",
            f"no graph point with {BATCH_FILL_IN_FLIGHT} or more images in flight in this run",
        )
    ]
    by_system: dict[str, list[int]] = {}
    for cfg in configs.values():
        counts = by_system.setdefault(cfg.get("system", "graph"), [0, 0])
        for p in [*cfg["points"], *cfg.get("open_loop", [])]:
            counts[0] += int(p["summary"].get("mismatched_items", 0))
            counts[1] += int(p["summary"].get("checked_items", 0))
    for system, (bad, checked) in by_system.items():
        name = f"{SYSTEM_NAMES.get(system, system)}: 0 mis-joined items"
        if checked:
            out.append(mismatch_target(name, bad, checked))
        else:
            out.append(not_measured(name, "no answer was checked (no in-process references)"))
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


def headline(result: dict[str, Any]) -> str:
    """One row per system at 1 and 32 images in flight: every ratio from this run.

    "× plain Ray Serve" is against the better of the plain Ray Serve apps at 32 in flight, named
    in the line under the table.
    """
    raw = result.get("raw", {})
    raw_ips = float(raw.get("throughput_ips", math.nan))
    configs = result["configs"]
    c = TARGET_CONCURRENCY
    best = best_plain_ips(configs, c)
    plain32 = best[1] if best else math.nan
    rows = [
        f"| system | img/s at {c} in flight | × in-process | × plain Ray Serve (better of two) | "
        f"serving CPU outside forward+decode ms/img at {c} | CPU cores per 1,000 img/s at {c} | "
        f"p50 ms at 1 | p99 ms at {c} | mean batch at {c} | mis-joined |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if raw_ips == raw_ips:
        rows.append(
            f"| in-process pipeline (batch 8) | {_fmt(raw_ips)} | 1.00 | "
            f"{_ratio(raw_ips, plain32)} | 0 by definition | "
            f"**{_fmt(raw.get('cores_per_1000_ips'))}** | "
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
            f"**{_fmt(cores_per_1000(p))}** | "
            f"{_fmt(p1['summary']['latency_ms']['p50']) if p1 else '–'} | "
            f"{_fmt(s['latency_ms']['p99'])} | {_fmt(s['batch_size_mean'], 2)} | "
            f"{bad}/{checked} |"
        )
    rows.append("")
    rows.append(
        f"× plain Ray Serve: against {best[0]} ({_fmt(best[1])} img/s at {c} in flight), the "
        f"better of the plain Ray Serve apps measured in this run."
        if best
        else "× plain Ray Serve: no plain Ray Serve app was measured in this run."
    )
    rows.append(
        "CPU cores per 1,000 img/s: CPU seconds of every process of the system (its session; "
        "the load generator excluded) per image answered, × 1,000."
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
        "errors | mis-joined | mean batch | overhead ms/img | CPU cores per 1,000 img/s | "
        "sender lag p99 ms |",
        "|" + "---|" * 13,
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
            f"{_fmt(cores_per_1000(p))} | {_fmt(p['marks'].get('send_lag_ms_p99'))} |"
        )
    return lines


def markdown(result: dict[str, Any], verdicts: list[Target]) -> str:
    """The whole report: the run, the raw pipeline, the systems, every point, where the CPU
    goes, bytes between stages and the targets' verdicts."""
    lines = run_header(result["meta"])
    lines += raw_table(result.get("raw", {}), result["meta"])
    lines += systems_table(result)
    lines += ["", "## Headline (closed loop, HTTP on 127.0.0.1)", "", headline(result)]
    lines += points_table(result)
    lines += overhead_table(result)
    lines += open_loop_table(result)
    lines += cpu_table(result)
    lines += payload_table(result.get("raw", {}))
    lines += ["", "## Targets", ""]
    lines += [f"- {t.line()}" for t in verdicts]
    lines += ["", "Column meanings: see bench/README.md.", ""]
    return "\n".join(lines)


def run_header(meta: dict[str, Any]) -> list[str]:
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
    return lines


def raw_table(raw: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Raw in-process pipeline (decode → {meta['model']} → top-5, one process, no serving)",
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
    return lines


def systems_table(result: dict[str, Any]) -> list[str]:
    meta = result["meta"]
    configs = result["configs"]
    lines: list[str] = []
    lines += ["", "## Systems measured in this run", ""]
    lines.append("| config | system | what |")
    lines.append("|---|---|---|")
    lines.append(
        f"| raw | in-process | decode → {meta['model']} → top-5 in one Python process, batch 8, "
        "no serving |"
    )
    for name, cfg in configs.items():
        system = SYSTEM_NAMES.get(cfg.get("system", "graph"), cfg.get("system", "graph"))
        lines.append(f"| {name} | {system} | {cfg['description']} |")
    for name, why in meta.get("skipped", {}).items():
        lines.append(f"| {name} | skipped | {why} |")
    return lines


def points_table(result: dict[str, Any]) -> list[str]:
    raw = result.get("raw", {})
    configs = result["configs"]
    lines = [
        "",
        "## All closed-loop points",
        "",
        "| config | conc | img/s | × raw | × plain | overhead ms/img | p50 ms | p90 ms | p99 ms | "
        "errors | mis-joined | mean batch | batch sizes (share of items) | wait ms | infer ms | "
        "pre ms | post ms | server ms | outside ms | service CPU ms/img = cores per 1,000 img/s | "
        "client CPU ms/img | other cores |",
        "|" + "---|" * 22,
    ]
    raw_ips = float(raw.get("throughput_ips", math.nan))
    better_plain: dict[int, str] = {}
    for name, cfg in configs.items():
        for p in cfg["points"]:
            s = p["summary"]
            t = s["server_ms"]
            cpu = p.get("cpu", {})
            images = max(s["images"], 1)
            outside = (
                s["latency_ms"]["mean"] - t["total"] if cfg["images_per_request"] == 1 else None
            )
            in_flight = p["concurrency"] * cfg["images_per_request"]
            best = best_plain_ips(configs, in_flight)
            if best:
                better_plain[in_flight] = best[0]
            plain_ips = best[1] if best else math.nan
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
    if better_plain:
        lines += [
            "",
            "× plain: against the better plain Ray Serve app at the same number of images in "
            "flight: "
            + ", ".join(f"{n} in flight: {better_plain[n]}" for n in sorted(better_plain))
            + ".",
        ]
    return lines


def cpu_table(result: dict[str, Any]) -> list[str]:
    """Where the CPU goes at the throughput target's point, by process."""
    lines: list[str] = []
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
    return lines


def payload_table(raw: dict[str, Any]) -> list[str]:
    """Bytes per item on each hop between stages, and which Ray path carries them."""
    lines: list[str] = []
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
    return lines
