"""The benchmark: the served graph against its peers, measured in one run on the same images and
model: the raw in-process pipeline, a plain one-deployment Ray Serve app, LitServe (when the
`bench` extra is installed) and the graph itself, over HTTP with the same load generator.

    .venv/bin/python -m bench.run                      # start each system on :8000 in turn
    .venv/bin/python -m bench.run --port 8100          # same, another port
    .venv/bin/python -m bench.run --url http://127.0.0.1:8000   # a graph someone else runs

See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import images as imgs
from bench import plots, report
from bench.loadgen import Body, get_json, run_open_loop, run_point
from bench.peers import rayserve_batch, rayserve_plain
from bench.service import (
    TORCHSERVE_MODEL,
    BenchError,
    CpuMeter,
    CpuSnapshot,
    LitServeProcess,
    TorchServeProcess,
    bench_config,
    litserve_role,
    model_name,
    parse_overrides,
    system_cpu_s,
    torchserve_available,
    torchserve_role,
)
from bench.stats import (
    arrival_offsets,
    cores_per_1000_ips,
    open_loop_plan,
    serving_overhead,
    summarise,
    with_join_tolerances,
)
from tools.serve_process import (
    ROOT,
    ServeProcess,
    load_config,
    model_user_config,
    port_in_use,
    read_stat,
    run_main,
)

RESULTS = Path(__file__).resolve().parent / "results"
BOUNDARY = "benchboundary7d1f0c"


@dataclass(frozen=True)
class Workload:
    """One configuration: what the Model is set to and what each request carries."""

    name: str
    description: str
    user_config: dict[str, Any]
    images_per_request: int
    image_set: str  # "target" (640x480 ~150 KB) or "mixed"
    concurrency: tuple[int, ...] | None = None  # None: the sweep
    system: str = "graph"  # graph or a peer: plain, plain-batch, litserve, torchserve
    open_loop: bool = False  # also run the open-loop points after the closed-loop sweep
    # The processes (CPU roles) that run the forward pass and the decode: the serving-overhead
    # column takes the raw pipeline's cost of each out of these.
    forward_role: str = "Model"
    decode_role: str = "Preprocessor"
    path: str = "/v1/predict"  # where the requests go


def workloads(base_uc: dict[str, Any], names: list[str]) -> list[Workload]:
    wait = base_uc["batch_wait_timeout_s"]
    known = {
        "batch8": Workload(
            "batch8",
            "single-image requests, max_batch_size 8",
            {"max_batch_size": 8, "batch_wait_timeout_s": wait},
            1,
            "target",
            open_loop=True,
        ),
        "multipart8": Workload(
            "multipart8",
            "multipart requests of 8 images, max_batch_size 8",
            {"max_batch_size": 8, "batch_wait_timeout_s": wait},
            8,
            "target",
        ),
        "mixed": Workload(
            "mixed",
            "single-image requests of mixed sizes (320x240 … 1920x1080), batch 8",
            {"max_batch_size": 8, "batch_wait_timeout_s": wait},
            1,
            "mixed",
            (32,),
        ),
        "batch1": Workload(
            "batch1",
            "single-image requests, max_batch_size 1 (no batching)",
            {"max_batch_size": 1, "batch_wait_timeout_s": wait},
            1,
            "target",
        ),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchError(f"unknown configuration(s) {unknown}; choose from {sorted(known)}")
    return [known[n] for n in names]


# The peers: the same single-image requests, same batching settings, same sweep.
PEERS = {
    "plain": Workload(
        "plain",
        "plain Ray Serve app: one deployment, decode in a thread pool, @serve.batch(8, 10 ms) "
        "over decoded images, single-image requests",
        {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
        1,
        "target",
        system="plain",
        open_loop=True,
        forward_role=rayserve_plain.DEPLOYMENT,
        decode_role=rayserve_plain.DEPLOYMENT,
    ),
    "plain-batch": Workload(
        "plain-batch",
        "plain Ray Serve app, simplest: one deployment, @serve.batch(8, 10 ms) around decode + "
        "forward, single-image requests",
        {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
        1,
        "target",
        system="plain-batch",
        open_loop=True,
        forward_role=rayserve_batch.DEPLOYMENT,
        decode_role=rayserve_batch.DEPLOYMENT,
    ),
    "litserve": Workload(
        "litserve",
        "LitServe: max_batch_size 8, batch_timeout 10 ms, single-image requests",
        {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
        1,
        "target",
        system="litserve",
        open_loop=True,
        forward_role="LitServe worker",
        decode_role="LitServe worker",
    ),
    "torchserve": Workload(
        "torchserve",
        "TorchServe: 1 worker, batchSize 8, maxBatchDelay 10 ms, single-image requests",
        {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
        1,
        "target",
        system="torchserve",
        open_loop=True,
        forward_role="TorchServe worker",
        decode_role="TorchServe worker",
        path=f"/predictions/{TORCHSERVE_MODEL}",
    ),
}
SYSTEMS = ("graph", "plain", "plain-batch", "litserve", "torchserve")
# The plain Ray Serve peers (modules with APP and serve_config); ratios take the better one.
RAY_PEERS = {"plain": rayserve_plain, "plain-batch": rayserve_batch}


def litserve_available() -> bool:
    return importlib.util.find_spec("litserve") is not None


def request_counts(images_per_request: int, concurrency: int, scale: float) -> tuple[int, int]:
    """(warm-up, measured) requests for one point: enough rounds per worker, bounded in total."""
    warmup = max(3, concurrency // 2)
    measured = max(60, 6 * concurrency) if images_per_request == 1 else max(12, 3 * concurrency)
    return warmup, max(4, int(measured * scale))


def _bodies(
    set_: list[imgs.Jpeg], per_request: int, refs: dict[str, Any] | None = None
) -> list[Body]:
    """Request bodies over the set; with `refs` (raw references by image name) each body carries
    the reference top-k of its images so every answer is checked for a mis-join."""

    def ref(j: imgs.Jpeg) -> Any:
        return refs[j.name] if refs is not None else None

    if per_request == 1:
        return [
            Body(j.data, "image/jpeg", 1, (ref(j),) if refs is not None else None) for j in set_
        ]
    out = []
    for i in range(len(set_)):
        chosen = [set_[(i + k) % len(set_)] for k in range(per_request)]
        out.append(
            Body(
                imgs.multipart_body([j.data for j in chosen], BOUNDARY),
                f"multipart/form-data; boundary={BOUNDARY}",
                per_request,
                tuple(ref(j) for j in chosen) if refs is not None else None,
            )
        )
    return out


def _foreign_top(own: set[int], seconds: float = 1.0) -> list[dict[str, Any]]:
    """The busiest processes not started by this benchmark, over `seconds`."""

    def sample() -> dict[int, float]:
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                st = read_stat(int(entry.name))
                if st is not None:
                    out[int(entry.name)] = st[2]
        return out

    a = sample()
    time.sleep(seconds)
    b = sample()
    rows = []
    for pid, cpu in b.items():
        if pid in own or pid == os.getpid():
            continue
        pct = (cpu - a.get(pid, cpu)) / seconds * 100
        if pct >= 5:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            rows.append({"pid": pid, "cpu_pct": pct, "cmd": cmd.strip()})
    return sorted(rows, key=lambda r: -r["cpu_pct"])[:6]


def run_raw(config: dict[str, Any], work: Path, sets: dict[str, Path], args: Any) -> dict[str, Any]:
    """The raw pipeline in a subprocess; returns its JSON plus the other load while it ran."""
    cfg_path = work / "raw_config.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = work / f"raw-{time.monotonic_ns()}.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.raw",
        "--config",
        str(cfg_path),
        "--images",
        str(sets["target"]),
        "--out",
        str(out),
        "--n-images",
        str(max(16, int(160 * args.scale) // 8 * 8)),
        "--n-single",
        str(max(10, int(40 * args.scale))),
    ]
    if "mixed" in sets:
        cmd += ["--sets", f"mixed={sets['mixed']}"]
    if args.raw_threads:
        cmd += ["--threads", str(args.raw_threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    busy0, _ = system_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    busy1, _ = system_cpu_s()
    if proc.returncode != 0:
        raise BenchError(f"the raw pipeline failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    # Cores others used meanwhile: the machine's busy time less the raw process's own CPU.
    own_cpu = result.get("process_cpu_s") or sum(
        s["cpu_ms_per_image"] * s["images"] / 1000 for s in result["sets"].values()
    )
    result["other_cores"] = max(0.0, (busy1 - busy0 - own_cpu) / wall) if wall else math.nan
    result["wall_s"] = wall
    return result


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "deployments", "vision_serve", "serve_config.yaml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def settle(meter: CpuMeter, idle_cores: float = 0.25, timeout_s: float = 120.0) -> float:
    """Wait until the service is idle (work left over from the last point is done)."""
    began = time.perf_counter()
    before = meter.snapshot()
    while time.perf_counter() - began < timeout_s:
        time.sleep(1.0)
        now = meter.snapshot()
        if CpuMeter.delta(before, now)["service_s"] / (now.at - before.at) < idle_cores:
            break
        before = now
    return time.perf_counter() - began


def measure_point(
    url: str,  # the endpoint: base URL + the workload's path
    bodies: list[Body],
    concurrency: int,
    warmup: int,
    measured: int,
    label: str,
    meter: CpuMeter | None,
    max_point_s: float,
    progress: bool,
    headers: dict[str, str],
) -> dict[str, Any]:
    snaps: dict[str, CpuSnapshot] = {}

    def on_window(which: str) -> None:
        if meter is not None:
            snaps[which] = meter.snapshot()

    run = asyncio.run(
        run_point(
            url,
            bodies,
            concurrency,
            warmup,
            measured,
            label,
            on_window=on_window,
            max_window_s=max_point_s,
            progress=progress,
            headers=headers,
        )
    )
    point: dict[str, Any] = {
        "loop": "closed",
        "concurrency": concurrency,
        "warmup_requests": warmup,
        "planned_requests": measured,
        "wall_s": run.wall_s,
        "response_bytes_per_request": run.response_bytes / max(len(run.samples), 1),
        "summary": summarise(run.samples, run.window_s),
        "truncated_by_time": len(run.samples) < measured,
    }
    if meter is not None and "start" in snaps and "end" in snaps:
        point["cpu"] = CpuMeter.delta(snaps["start"], snaps["end"])
    return point


def measure_open_point(
    url: str,
    bodies: list[Body],
    fraction: float,
    rate: float,
    count: int,
    seed: int,
    process: str,
    label: str,
    meter: CpuMeter | None,
    progress: bool,
    headers: dict[str, str],
) -> dict[str, Any]:
    """One open-loop point: `count` single-image requests at `rate` per second (offered load)."""
    snaps: dict[str, CpuSnapshot] = {}

    def on_window(which: str) -> None:
        if meter is not None:
            snaps[which] = meter.snapshot()

    offsets = arrival_offsets(rate, count, process, seed)
    warmup = max(2, count // 10)
    run = asyncio.run(
        run_open_loop(
            url,
            bodies,
            offsets,
            warmup,
            label,
            on_window=on_window,
            progress=progress,
            headers=headers,
        )
    )
    point: dict[str, Any] = {
        "loop": "open",
        "arrivals": process,
        "fraction_of_peak": fraction,
        "offered_rps": rate,
        "requests": count,
        "warmup_requests": warmup,
        "wall_s": run.wall_s,
        "marks": run.marks,
        "summary": summarise(run.samples, run.window_s),
    }
    if meter is not None and "start" in snaps and "end" in snaps:
        point["cpu"] = CpuMeter.delta(snaps["start"], snaps["end"])
    return point


def _print_point(name: str, point: dict[str, Any]) -> None:
    s = point["summary"]
    where = (
        f"c={point['concurrency']:<3}"
        if point["loop"] == "closed"
        else f"open {point['fraction_of_peak']:.1f}x {point['offered_rps']:5.1f}/s"
    )
    print(
        f"{name:>10} {where} {s['throughput_ips']:6.1f} img/s  "
        f"p50 {s['latency_ms']['p50']:7.1f}  p99 {s['latency_ms']['p99']:7.1f} ms  "
        f"batch {s['batch_size_mean']:.2f}  errors {s['errors']}  "
        f"mis-joined {s['mismatched_items']}/{s['checked_items']}  "
        f"({s['requests']} req, {point['wall_s']:.0f} s"
        + (", time-capped" if point.get("truncated_by_time") else "")
        + ")",
        flush=True,
    )


@dataclass
class Sweep:
    """What every system's measurement shares."""

    args: Any
    sets: dict[str, list[imgs.Jpeg]]
    refs: dict[str, Any] | None
    concurrency: tuple[int, ...]
    multipart_concurrency: tuple[int, ...]
    fractions: tuple[float, ...]
    headers: dict[str, str]
    progress: bool


def run_workload(
    w: Workload, url: str, sw: Sweep, meter: CpuMeter | None, service: ServeProcess | None
) -> dict[str, Any]:
    """The closed-loop sweep of one workload, then (if it has them) its open-loop points."""
    bodies = _bodies(sw.sets[w.image_set], w.images_per_request, (sw.refs or {}).get(w.image_set))
    sweep = w.concurrency or (
        sw.multipart_concurrency if w.images_per_request > 1 else sw.concurrency
    )
    points = []
    for c in sweep:
        settle_s = settle(meter) if meter is not None else None
        warmup, measured = request_counts(w.images_per_request, c, sw.args.scale)
        point = measure_point(
            url + w.path,
            bodies,
            c,
            warmup,
            measured,
            f"{w.name} c={c}",
            meter,
            sw.args.max_point_s,
            sw.progress,
            sw.headers,
        )
        if settle_s is not None:
            point["settle_s"] = settle_s
        if service is not None:
            point["replicas"] = service.replicas()
        _print_point(w.name, point)
        points.append(point)
    entry: dict[str, Any] = {
        "system": w.system,
        "description": w.description,
        "user_config": w.user_config,
        "images_per_request": w.images_per_request,
        "image_set": w.image_set,
        "forward_role": w.forward_role,
        "decode_role": w.decode_role,
        "points": points,
        "open_loop": [],
    }
    ok = [p["summary"]["throughput_rps"] for p in points if p["summary"]["ok_requests"]]
    peak = max(ok, default=0.0)
    entry["peak_rps"] = peak
    if w.open_loop and sw.fractions and w.images_per_request == 1 and peak > 0:
        plan = open_loop_plan(peak, sw.fractions, sw.args.open_loop_s)
        for i, (fraction, rate, count) in enumerate(plan):
            if meter is not None:
                settle(meter)
            point = measure_open_point(
                url + w.path,
                bodies,
                fraction,
                rate,
                count,
                seed=1000 + i,
                process=sw.args.arrivals,
                label=f"{w.name} open {fraction:.1f}x",
                meter=meter,
                progress=sw.progress,
                headers=sw.headers,
            )
            _print_point(w.name, point)
            entry["open_loop"].append(point)
    return entry


def add_overheads(result: dict[str, Any]) -> None:
    """Per point with a CPU measurement: CPU cores per 1,000 img/s, and serving CPU outside the
    forward pass and the decode per image and process (when the raw pipeline ran)."""
    raw = result.get("raw", {})
    decode_ms = raw.get("decode_cpu_ms_per_image")
    forward = raw.get("forward_cpu_ms_per_image_by_batch")
    for cfg in result["configs"].values():
        for p in [*cfg["points"], *cfg.get("open_loop", [])]:
            cpu = p.get("cpu")
            if not cpu:
                continue
            s = p["summary"]
            p["cores_per_1000_ips"] = cores_per_1000_ips(cpu["service_s"], s["images"])
            if decode_ms is None or not forward:
                continue
            p["overhead"] = serving_overhead(
                cpu["by_role_s"],
                s["images"],
                s["batch_size_hist"],
                decode_ms,
                forward,
                cfg["forward_role"],
                cfg["decode_role"],
            )


def average_raw(result: dict[str, Any]) -> None:
    """The raw numbers the tables and targets use: the mean of the passes before and after."""
    passes = [r for r in (result["raw"].get("before"), result["raw"].get("after")) if r]
    if not passes:
        return
    raw = result["raw"]

    def avg(get: Any) -> float:
        return sum(get(r) for r in passes) / len(passes)

    raw["throughput_ips"] = avg(lambda r: r["sets"]["target"]["throughput_ips"])
    raw["single_p50_ms"] = avg(lambda r: r["sets"]["target"]["single_ms"]["p50"])
    # Process CPU ms per image at batch 8 (decode, forward, top-k) = its cores per 1,000 img/s.
    raw["cores_per_1000_ips"] = avg(lambda r: r["sets"]["target"]["cpu_ms_per_image"])
    cpu = [r["sets"]["target"].get("stage_cpu_ms_per_image") for r in passes]
    if all(cpu):
        raw["decode_cpu_ms_per_image"] = avg(
            lambda r: r["sets"]["target"]["stage_cpu_ms_per_image"]["decode"]
        )
        raw["forward_cpu_ms_per_image_batch8"] = avg(
            lambda r: r["sets"]["target"]["stage_cpu_ms_per_image"]["forward"]
        )
    tables = [
        r["forward_cpu_ms_per_image_by_batch"]
        for r in passes
        if r.get("forward_cpu_ms_per_image_by_batch")
    ]
    if tables:
        raw["forward_cpu_ms_per_image_by_batch"] = {
            k: sum(t[k] for t in tables) / len(tables) for k in tables[0]
        }
    if "mixed" in passes[0]["sets"]:
        raw["mixed_ips"] = avg(lambda r: r["sets"]["mixed"]["throughput_ips"])
    raw["payloads"] = passes[0]["payloads"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the served graph against its peers and the raw in-process pipeline."
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="HTTP port for the systems it starts, in turn"
    )
    parser.add_argument("--url", help="benchmark a running graph instead of starting one")
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="which systems, in order: graph, plain and plain-batch (two plain Ray Serve apps), "
        "litserve, torchserve (each of the last two skipped with a message when not installed)",
    )
    parser.add_argument(
        "--configs",
        default="batch8,multipart8",
        help="the graph's configurations, in order (batch8, multipart8, mixed, batch1)",
    )
    parser.add_argument("--concurrency", default="1,8,32", help="the sweep, requests in flight")
    parser.add_argument(
        "--multipart-concurrency",
        default="1,4",
        help="the sweep for multipart requests (8 images each: 4 requests = 32 images in flight)",
    )
    parser.add_argument(
        "--open-loop",
        default="0.5,0.8,1.0,1.2",
        help="open-loop offered loads as fractions of each system's closed-loop peak ('' = none)",
    )
    parser.add_argument(
        "--open-loop-s",
        type=float,
        default=10.0,
        help="schedule length of one open-loop point in seconds (20..2000 requests)",
    )
    parser.add_argument(
        "--arrivals", choices=("poisson", "uniform"), default="poisson", help="open-loop arrivals"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VISION_API_KEY"),
        help="sent as 'Authorization: Bearer <key>' (default: $VISION_API_KEY, which the "
        "service started here also inherits)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    parser.add_argument(
        "--max-point-s",
        type=float,
        default=40.0,
        help="end a point's measured window after this many seconds even if short of its count",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DOTTED=YAML",
        help="override the generated config, e.g. "
        "applications.vision.args.model.torch_threads=2 (repeatable)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for `serve run` (e.g. RAY_SERVE_USE_GRPC_BY_DEFAULT=1; repeatable)",
    )
    parser.add_argument("--raw-threads", type=int, help="torch threads of the raw pipeline")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw pipeline")
    parser.add_argument("--label", help="results name (default cpu-<N>core)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure every system asked for, in turn, then write the JSON, the Markdown and the plots."""
    args = parse_args(argv)
    started = time.perf_counter()
    label = args.label or f"cpu-{os.cpu_count()}core"
    overrides = parse_overrides(args.set)
    systems, skipped = choose_systems(args.systems)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = load_config(args.config)
    base_uc = model_user_config(bench_config(base, args.port, None, overrides))
    env = dict(item.partition("=")[::2] for item in args.env)
    plan = (
        workloads(base_uc, [n for n in args.configs.split(",") if n]) if "graph" in systems else []
    )
    meta = run_meta(args, label, systems, skipped, overrides, env, base)
    sets = image_sets(plan)

    result: dict[str, Any] = {"meta": meta, "raw": {}, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        folders = write_image_sets(sets, work)
        first_uc = plan[0].user_config if plan else base_uc
        config = bench_config(base, args.port, first_uc, overrides)
        raw_pass(result, "before", config, work, folders, args)
        sw = Sweep(
            args=args,
            sets=sets,
            refs=join_references(result),
            concurrency=tuple(int(c) for c in args.concurrency.split(",")),
            multipart_concurrency=tuple(int(c) for c in args.multipart_concurrency.split(",")),
            fractions=tuple(float(f) for f in args.open_loop.split(",") if f.strip()),
            headers=headers,
            progress=not args.no_progress,
        )
        for system in systems:
            # The peers take the model args of the graph's first config.
            if system == "graph":
                measure_graph(result, plan, base, overrides, env, config, work, sw)
            elif system in RAY_PEERS:
                measure_ray_peer(result, system, config, work, sw)
            else:
                measure_process_peer(result, system, config, work, sw)
        raw_pass(result, "after", config, work, folders, args)

    average_raw(result)
    add_overheads(result)
    finish_meta(result, started)
    write_results(result, args.out, label)
    return 0


def choose_systems(names: str) -> tuple[list[str], dict[str, str]]:
    """The systems to measure, in order, and why any asked for is skipped (not installed)."""
    systems = [s for s in names.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise BenchError(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    skipped: dict[str, str] = {}
    if "litserve" in systems and not litserve_available():
        skipped["litserve"] = (
            "LitServe is not installed: `pip install -e '.[bench]'` (pins litserve) to measure it"
        )
        systems.remove("litserve")
    if "torchserve" in systems and not torchserve_available():
        skipped["torchserve"] = (
            "TorchServe is not installed: a Java 17 runtime and `pip install -e '.[torchserve]'` "
            "(bench/README.md) to measure it"
        )
        systems.remove("torchserve")
    return systems, skipped


def run_meta(
    args: argparse.Namespace,
    label: str,
    systems: list[str],
    skipped: dict[str, str],
    overrides: dict[str, Any],
    env: dict[str, str],
    base: dict[str, Any],
) -> dict[str, Any]:
    """What the run is: versions, command, model, systems, and what else ran on the machine."""
    import ray
    import torch

    meta: dict[str, Any] = {
        "label": label,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "-m", "bench.run", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "commit": _git_commit(),
        # The model every system measured here builds (--set may replace the benchmark's own).
        "model": model_name(bench_config(base, args.port, None, overrides)),
        "url": args.url,
        "systems": systems,
        "skipped": skipped,
        "overrides": overrides,
        "env": env,
        "arrivals": args.arrivals,
        "loadavg_start": os.getloadavg(),
    }
    if "litserve" in systems:
        import litserve

        meta["litserve"] = litserve.__version__
    if "torchserve" in systems:
        from importlib.metadata import version

        meta["torchserve"] = version("torchserve")
    print(f"bench: {label}, {meta['command']}")
    for name, why in skipped.items():
        print(f"  skip {name}: {why}")
    meta["foreign_top"] = _foreign_top(set())
    for proc in meta["foreign_top"]:
        print(f"  also running: {proc['cpu_pct']:.0f}% {proc['cmd'][:100]}")
    return meta


def image_sets(plan: list[Workload]) -> dict[str, list[imgs.Jpeg]]:
    """The 640x480 target set, and the mixed sizes when a workload asks for them."""
    t = time.perf_counter()
    target_set = imgs.make_set((imgs.TARGET_SIZE,), 16, seed=0)
    sets = {"target": target_set}
    if any(w.image_set == "mixed" for w in plan):
        sets["mixed"] = imgs.make_set(imgs.MIXED_SIZES, 2, seed=1)
    print(
        f"images: {len(target_set)} x 640x480, "
        f"{sum(j.kb for j in target_set) / len(target_set):.0f} KB mean "
        f"(quality {min(j.quality for j in target_set)}-{max(j.quality for j in target_set)})"
        + (f"; {len(sets['mixed'])} mixed" if "mixed" in sets else "")
        + f" in {time.perf_counter() - t:.1f} s"
    )
    return sets


def write_image_sets(sets: dict[str, list[imgs.Jpeg]], work: Path) -> dict[str, Path]:
    """Each set as a folder of JPEG files, for the raw pipeline's subprocess."""
    folders = {}
    for name, set_ in sets.items():
        folder = work / name
        folder.mkdir()
        for j in set_:
            (folder / f"{j.name}.jpg").write_bytes(j.data)
        folders[name] = folder
    return folders


def raw_pass(
    result: dict[str, Any],
    when: str,
    config: dict[str, Any],
    work: Path,
    folders: dict[str, Path],
    args: argparse.Namespace,
) -> None:
    """The raw in-process pipeline, once before the systems and once after (unless --no-raw)."""
    if args.no_raw:
        return
    t = time.perf_counter()
    r = run_raw(config, work, folders, args)
    result["raw"][when] = r
    tgt = r["sets"]["target"]
    print(
        f"raw pipeline ({when}): {tgt['throughput_ips']:.1f} img/s at batch 8, "
        f"single image p50 {tgt['single_ms']['p50']:.1f} ms, decode CPU "
        f"{tgt['stage_cpu_ms_per_image']['decode']:.1f} ms/img, forward CPU "
        f"{tgt['stage_cpu_ms_per_image']['forward']:.1f} ms/img, torch threads "
        f"{r['torch_threads']}, other load {r['other_cores']:.2f} cores "
        f"({time.perf_counter() - t:.0f} s)"
    )


def join_references(result: dict[str, Any]) -> dict[str, Any] | None:
    """The raw pipeline's top-5 per image, with each image's join tolerance; None without it."""
    refs = result["raw"]["before"].get("references") if "before" in result["raw"] else None
    if refs is None:
        return None
    return {name: with_join_tolerances(by_image) for name, by_image in refs.items()}


def finish_meta(result: dict[str, Any], started: float) -> None:
    """The run's end: load average, other load on the machine per phase, wall time."""
    meta = result["meta"]
    meta["loadavg_end"] = os.getloadavg()
    meta["foreign_cores"] = {
        "raw " + k: v["other_cores"]
        for k, v in result["raw"].items()
        if isinstance(v, dict) and "other_cores" in v
    }
    served = [
        p["cpu"]["other_s"] / p["cpu"]["wall_s"]
        for cfg in result["configs"].values()
        for p in [*cfg["points"], *cfg.get("open_loop", [])]
        if p.get("cpu")
    ]
    if served:
        meta["foreign_cores"]["served points (mean)"] = sum(served) / len(served)
    meta["wall_s"] = time.perf_counter() - started


def write_results(result: dict[str, Any], out: Path, label: str) -> None:
    """The verdicts, then `<label>.json`, `<label>.md` and the plots; the headline printed."""
    verdicts = report.targets(result)
    result["targets"] = [{**t.__dict__, "verdict": t.verdict} for t in verdicts]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(result, indent=2, default=float))
    (out / f"{label}.md").write_text(report.markdown(result, verdicts))
    written = plots.write(result, out)
    print()
    print(report.headline(result))
    print()
    for t in verdicts:
        print(t.line())
    print(f"\nwrote {out / (label + '.json')}, {label}.md, " + ", ".join(p.name for p in written))
    wall = result["meta"]["wall_s"]
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min)")


def measure_graph(
    result: dict[str, Any],
    plan: list[Workload],
    base: dict[str, Any],
    overrides: dict[str, Any],
    env: dict[str, str],
    config: dict[str, Any],
    work: Path,
    sw: Sweep,
) -> None:
    """The graph: start it (unless --url), then each configuration's sweep, applied live."""
    args, headers, meta = sw.args, sw.headers, result["meta"]
    service: ServeProcess | None = None
    url = args.url.rstrip("/") if args.url else None
    try:
        if url is None:
            if port_in_use(args.port):
                raise BenchError(
                    f"port {args.port} is already in use on 127.0.0.1; pass --port with a "
                    "free one, or --url to benchmark the service listening there"
                )
            service = ServeProcess(config, work, args.port, env)
            t = time.perf_counter()
            print(f"starting the graph (serve run) on port {args.port} …", flush=True)
            service.start()
            url = service.url
            print(
                f"graph up in {time.perf_counter() - t:.0f} s "
                f"(dashboard {service.dashboard or 'unavailable: restarts per config'})"
            )
        meter = CpuMeter(service.proc.pid) if service and service.proc else None
        status, info = asyncio.run(get_json(f"{url}/v1/model", headers=headers))
        if status != 200:
            raise BenchError(f"GET {url}/v1/model answered {status}: {info}")
        meta["service_model"] = {k: info.get(k) for k in ("model", "device", "batching")}
        applied = model_user_config(config)
        for w in plan:
            if service is not None and w.user_config != applied:
                if meter is not None:
                    settle(meter)
                t = time.perf_counter()
                config = bench_config(base, args.port, w.user_config, overrides)
                how = service.apply(config)
                applied = w.user_config
                meter = CpuMeter(service.proc.pid) if service.proc else None
                print(f"applied {w.user_config} by {how} in {time.perf_counter() - t:.0f} s")
            elif service is None:
                _, info = asyncio.run(get_json(f"{url}/v1/model", headers=headers))
                live = info.get("batching", {})
                if live.get("max_batch_size") != w.user_config["max_batch_size"]:
                    print(f"skip {w.name}: the service at {url} runs {live}")
                    continue
            result["configs"][w.name] = run_workload(w, url, sw, meter, service)
    finally:
        if service is not None:
            t = time.perf_counter()
            service.stop()
            print(f"graph stopped ({time.perf_counter() - t:.0f} s)")


def measure_ray_peer(
    result: dict[str, Any], name: str, graph_config: dict[str, Any], work: Path, sw: Sweep
) -> None:
    """A plain Ray Serve peer, started with `serve run` like the graph, on the same port."""
    port = sw.args.port
    module = RAY_PEERS[name]
    config = module.serve_config(graph_config, port)
    service = ServeProcess(config, work, port, app=module.APP)
    what = f"the {name} Ray Serve peer"
    try:
        t = time.perf_counter()
        print(f"starting {what} (serve run) on port {port} …", flush=True)
        service.start()
        print(f"{what} up in {time.perf_counter() - t:.0f} s")
        meter = CpuMeter(service.proc.pid) if service.proc else None
        result["configs"][name] = run_workload(PEERS[name], service.url, sw, meter, service)
    finally:
        t = time.perf_counter()
        service.stop()
        print(f"{what} stopped ({time.perf_counter() - t:.0f} s)")


# The peers that run outside Ray: (what the log calls it, its process class, its CPU roles).
PROCESS_PEERS = {
    "litserve": ("LitServe peer", LitServeProcess, litserve_role),
    "torchserve": ("TorchServe peer", TorchServeProcess, torchserve_role),
}


def measure_process_peer(
    result: dict[str, Any], name: str, graph_config: dict[str, Any], work: Path, sw: Sweep
) -> None:
    """LitServe or TorchServe, in a session of its own, on the same port (TorchServe also takes
    the next four)."""
    what, process, role = PROCESS_PEERS[name]
    server = process(graph_config, work, sw.args.port)
    try:
        t = time.perf_counter()
        print(f"starting the {what} on port {sw.args.port} …", flush=True)
        server.start()
        print(f"{what} up in {time.perf_counter() - t:.0f} s")
        meter = CpuMeter(server.proc.pid, role) if server.proc else None
        result["configs"][name] = run_workload(PEERS[name], server.url, sw, meter, None)
    finally:
        t = time.perf_counter()
        server.stop()
        print(f"{what} stopped ({time.perf_counter() - t:.0f} s)")


def entry() -> int:
    return run_main(main, "bench")


if __name__ == "__main__":
    raise SystemExit(entry())
