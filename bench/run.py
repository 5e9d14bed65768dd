"""The benchmark: raw in-process pipeline vs the served graph, same images, model and run.

    .venv/bin/python -m bench.run                      # start the service on :8000, full sweep
    .venv/bin/python -m bench.run --port 8100          # same, another port
    .venv/bin/python -m bench.run --url http://127.0.0.1:8000   # a service someone else runs

See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
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
from bench import report
from bench.loadgen import Body, get_json, run_point
from bench.service import (
    ROOT,
    BenchError,
    CpuMeter,
    CpuSnapshot,
    ServeProcess,
    bench_config,
    load_config,
    model_user_config,
    port_in_use,
    system_cpu_s,
)
from bench.stats import summarise

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


def workloads(base_uc: dict[str, Any], names: list[str]) -> list[Workload]:
    wait = base_uc["batch_wait_timeout_s"]
    known = {
        "batch8": Workload(
            "batch8",
            "single-image requests, max_batch_size 8",
            {"max_batch_size": 8, "batch_wait_timeout_s": wait},
            1,
            "target",
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


def request_counts(images_per_request: int, concurrency: int, scale: float) -> tuple[int, int]:
    """(warm-up, measured) requests for one point: enough rounds per worker, bounded in total."""
    warmup = max(3, concurrency // 2)
    if images_per_request == 1:
        measured = max(60, 6 * concurrency)
    else:
        measured = max(10, (3 * concurrency) // 2)
    return warmup, max(4, int(measured * scale))


def _bodies(set_: list[imgs.Jpeg], per_request: int) -> list[Body]:
    if per_request == 1:
        return [Body(j.data, "image/jpeg", 1) for j in set_]
    out = []
    for i in range(len(set_)):
        chosen = [set_[(i + k) % len(set_)].data for k in range(per_request)]
        out.append(
            Body(
                imgs.multipart_body(chosen, BOUNDARY),
                f"multipart/form-data; boundary={BOUNDARY}",
                per_request,
            )
        )
    return out


def _foreign_top(own: set[int], seconds: float = 1.0) -> list[dict[str, Any]]:
    """The busiest processes not started by this benchmark, over `seconds`."""
    from bench.service import _read_stat

    def sample() -> dict[int, float]:
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                st = _read_stat(int(entry.name))
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
    # Cores others used meanwhile; the raw process itself used about one core-second per second.
    own_cpu = sum(s["cpu_ms_per_image"] * s["images"] / 1000 for s in result["sets"].values())
    result["other_cores"] = max(0.0, (busy1 - busy0 - own_cpu) / wall) if wall else math.nan
    result["wall_s"] = wall
    return result


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "deployments", "graph.py", "serve_config.yaml"],
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
    url: str,
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
            f"{url}/v1/predict",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the served graph against the raw in-process pipeline."
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="HTTP port for the service it starts"
    )
    parser.add_argument("--url", help="benchmark a running service instead of starting one")
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument(
        "--configs",
        default="batch8,multipart8,mixed,batch1",
        help="configurations to run, in order (batch8, multipart8, mixed, batch1)",
    )
    parser.add_argument("--concurrency", default="1,8,32,64", help="the sweep, requests in flight")
    parser.add_argument(
        "--multipart-concurrency",
        default="1,8,32",
        help="the sweep for multipart requests (8 images each: 32 requests = 256 images in flight)",
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

    started = time.perf_counter()
    label = args.label or f"cpu-{os.cpu_count()}core"
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise BenchError(f"--set needs DOTTED=VALUE; got {item!r}")
        overrides[key] = yaml.safe_load(value)
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    multipart_concurrency = tuple(int(c) for c in args.multipart_concurrency.split(","))
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = load_config(args.config)
    base_uc = model_user_config(bench_config(base, args.port, None, overrides))
    env = dict(item.partition("=")[::2] for item in args.env)
    plan = workloads(base_uc, [n for n in args.configs.split(",") if n])
    progress = not args.no_progress

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
        "model": "resnet18",
        "url": args.url,
        "overrides": overrides,
        "env": env,
        "loadavg_start": os.getloadavg(),
    }
    print(f"bench: {label}, {meta['command']}")
    meta["foreign_top"] = _foreign_top(set())
    for proc in meta["foreign_top"]:
        print(f"  also running: {proc['cpu_pct']:.0f}% {proc['cmd'][:100]}")

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

    result: dict[str, Any] = {"meta": meta, "raw": {}, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        folders = {}
        for name, set_ in sets.items():
            folder = work / name
            folder.mkdir()
            for j in set_:
                (folder / f"{j.name}.jpg").write_bytes(j.data)
            folders[name] = folder
        first_uc = plan[0].user_config if plan else base_uc
        config = bench_config(base, args.port, first_uc, overrides)

        def raw_pass(when: str) -> None:
            if args.no_raw:
                return
            t = time.perf_counter()
            r = run_raw(config, work, folders, args)
            result["raw"][when] = r
            tgt = r["sets"]["target"]
            print(
                f"raw pipeline ({when}): {tgt['throughput_ips']:.1f} img/s at batch 8, "
                f"single image p50 {tgt['single_ms']['p50']:.1f} ms, torch threads "
                f"{r['torch_threads']}, other load {r['other_cores']:.2f} cores "
                f"({time.perf_counter() - t:.0f} s)"
            )

        service: ServeProcess | None = None
        url = args.url.rstrip("/") if args.url else None
        try:
            raw_pass("before")
            if url is None:
                if port_in_use(args.port):
                    raise BenchError(
                        f"port {args.port} is already in use on 127.0.0.1; pass --port with a "
                        "free one, or --url to benchmark the service listening there"
                    )
                service = ServeProcess(config, work, args.port, env)
                t = time.perf_counter()
                print(f"starting serve run on port {args.port} …", flush=True)
                service.start()
                url = service.url
                print(
                    f"service up in {time.perf_counter() - t:.0f} s "
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
                bodies = _bodies(sets[w.image_set], w.images_per_request)
                points = []
                sweep = w.concurrency or (
                    multipart_concurrency if w.images_per_request > 1 else concurrency
                )
                for c in sweep:
                    if meter is not None:
                        settle_s = settle(meter)
                    warmup, measured = request_counts(w.images_per_request, c, args.scale)
                    point = measure_point(
                        url,
                        bodies,
                        c,
                        warmup,
                        measured,
                        f"{w.name} c={c}",
                        meter,
                        args.max_point_s,
                        progress,
                        headers,
                    )
                    if meter is not None:
                        point["settle_s"] = settle_s
                    if service is not None:
                        point["replicas"] = service.replicas()
                    s = point["summary"]
                    print(
                        f"{w.name:>10} c={c:<3} {s['throughput_ips']:6.1f} img/s  "
                        f"p50 {s['latency_ms']['p50']:7.1f}  p99 {s['latency_ms']['p99']:7.1f} ms  "
                        f"batch {s['batch_size_mean']:.2f}  errors {s['errors']}  "
                        f"({s['requests']} req, {point['wall_s']:.0f} s"
                        + (", time-capped" if point["truncated_by_time"] else "")
                        + ")",
                        flush=True,
                    )
                    points.append(point)
                result["configs"][w.name] = {
                    "description": w.description,
                    "user_config": w.user_config,
                    "images_per_request": w.images_per_request,
                    "image_set": w.image_set,
                    "points": points,
                }
        finally:
            if service is not None:
                t = time.perf_counter()
                service.stop()
                print(f"service stopped ({time.perf_counter() - t:.0f} s)")
        raw_pass("after")

    passes = [r for r in (result["raw"].get("before"), result["raw"].get("after")) if r]
    if passes:
        result["raw"]["throughput_ips"] = sum(
            r["sets"]["target"]["throughput_ips"] for r in passes
        ) / len(passes)
        result["raw"]["single_p50_ms"] = sum(
            r["sets"]["target"]["single_ms"]["p50"] for r in passes
        ) / len(passes)
        if "mixed" in passes[0]["sets"]:
            result["raw"]["mixed_ips"] = sum(
                r["sets"]["mixed"]["throughput_ips"] for r in passes
            ) / len(passes)
        result["raw"]["payloads"] = passes[0]["payloads"]

    meta["loadavg_end"] = os.getloadavg()
    meta["foreign_cores"] = {
        "raw " + k: v["other_cores"]
        for k, v in result["raw"].items()
        if isinstance(v, dict) and "other_cores" in v
    }
    served = [
        p["cpu"]["other_s"] / p["cpu"]["wall_s"]
        for cfg in result["configs"].values()
        for p in cfg["points"]
        if p.get("cpu")
    ]
    if served:
        meta["foreign_cores"]["served points (mean)"] = sum(served) / len(served)
    meta["wall_s"] = time.perf_counter() - started

    verdicts = report.targets(result) if result["raw"] else []
    result["targets"] = [t.__dict__ for t in verdicts]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{label}.json").write_text(json.dumps(result, indent=2, default=float))
    (args.out / f"{label}.md").write_text(report.markdown(result, verdicts))
    written = report.plots(result, args.out)
    print()
    for t in verdicts:
        print(t.line())
    print(
        f"\nwrote {args.out / (label + '.json')}, {label}.md, " + ", ".join(p.name for p in written)
    )
    print(f"wall time {meta['wall_s']:.0f} s ({meta['wall_s'] / 60:.1f} min)")
    return 0


def entry() -> int:
    try:
        return main()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(entry())
