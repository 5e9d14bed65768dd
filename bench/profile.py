"""Where the served path spends CPU: py-spy on every Serve process under a steady load.

    .venv/bin/python -m bench.profile --port 8100            # batch8, 32 requests in flight

Starts the service like `bench.run` does, drives it with the closed-loop load generator, records
each replica and the HTTP proxy with py-spy (`pip install py-spy`; sampling, non-blocking) and
prints, per process, its CPU per image and the leaf frames and code areas that use it. Raw
collapsed stacks are kept under `bench/results/pyspy/` for flame graphs.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench import images as imgs
from bench.loadgen import Body, run_point
from bench.service import BenchError, CpuMeter, bench_config
from tools.serve_process import (
    ROOT,
    ServeError,
    ServeProcess,
    load_config,
    process_role,
    session_pids,
)

OUT = Path(__file__).resolve().parent / "results" / "pyspy"
ROLES = ("HTTP proxy", "Ingress", "Preprocessor", "Model", "Postprocessor")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")

# Code areas by file path, most specific first.
AREAS = (
    ("/deployments/", "project code"),
    ("/torch/", "torch (forward pass)"),
    ("/torchvision/", "torch (forward pass)"),
    ("/PIL/", "Pillow (decode, resize)"),
    ("/ray/serve/_private/router", "Serve router (handle calls)"),
    ("/ray/serve/_private/request_router", "Serve router (handle calls)"),
    ("/ray/serve/_private/replica", "Serve replica wrapper"),
    ("/ray/serve/_private/proxy", "Serve HTTP proxy"),
    ("/ray/serve/_private/http_util", "Serve HTTP proxy"),
    ("/ray/serve/batching", "Serve @serve.batch"),
    ("/ray/serve/handle", "Serve handle / DeploymentResponse"),
    ("/ray/serve/", "Serve (other)"),
    ("/ray/_private/serialization", "Ray serialization"),
    ("/ray/cloudpickle", "Ray serialization"),
    ("/ray/", "Ray core (tasks, object refs, metrics)"),
    ("/starlette/", "ASGI (starlette, FastAPI, uvicorn)"),
    ("/fastapi/", "ASGI (starlette, FastAPI, uvicorn)"),
    ("/uvicorn/", "ASGI (starlette, FastAPI, uvicorn)"),
    ("/h11/", "ASGI (starlette, FastAPI, uvicorn)"),
    ("/pydantic", "pydantic"),
    ("/asyncio/", "asyncio event loop"),
    ("/concurrent/", "threads (executors)"),
    ("/threading.py", "threads (executors)"),
    ("/logging/", "logging"),
    ("/opentelemetry/", "metrics"),
    ("/prometheus", "metrics"),
    ("/grpc/", "gRPC"),
)


def area(file: str) -> str:
    for needle, name in AREAS:
        if needle in file:
            return name
    return "other: " + file.rsplit("/", 1)[-1]


def summarise(collapsed: Path, top: int = 8) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, samples by code area of the leaf frame, samples by leaf function)."""
    areas: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        file = match.group("file") if match else leaf
        func = match.group("func") if match else leaf
        # The innermost frame of our own code or a library that is not the event loop says more
        # than "select()"; but idle time is already excluded by py-spy.
        areas[area(file)] += n
        where = "/".join(file.rsplit("/", 2)[-2:])  # the last two path parts, or all there is
        leaves[f"{func} ({where})"] += n
        total += n
    return total, areas, leaves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--multipart", type=int, default=1, help="images per request")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="DOTTED=YAML")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    import yaml

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    config = bench_config(
        load_config(ROOT / "serve_config.yaml"),
        args.port,
        {"max_batch_size": args.max_batch_size},
        overrides,
    )
    jpegs = imgs.make_set((imgs.TARGET_SIZE,), 16)
    if args.multipart > 1:
        boundary = "benchboundary7d1f0c"
        bodies = [
            Body(
                imgs.multipart_body(
                    [jpegs[(i + k) % 16].data for k in range(args.multipart)], boundary
                ),
                f"multipart/form-data; boundary={boundary}",
                args.multipart,
            )
            for i in range(16)
        ]
    else:
        bodies = [Body(j.data, "image/jpeg", 1) for j in jpegs]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        service = ServeProcess(config, Path(tmp), args.port)
        print(f"starting serve run on port {args.port} …", flush=True)
        service.start()
        try:
            assert service.proc is not None
            sid = service.proc.pid
            targets = {
                role: pid for pid in session_pids(sid) if (role := process_role(pid)) in ROLES
            }
            print("processes:", targets)
            # Warm up, then profile while the load keeps running.
            asyncio.run(
                run_point(
                    f"{service.url}/v1/predict",
                    bodies,
                    args.concurrency,
                    0,
                    args.concurrency * 2,
                    "warm-up",
                    progress=False,
                )
            )
            stop_at = time.monotonic() + args.seconds + 5
            result: dict[str, object] = {}

            def load() -> None:
                images = 0
                began = time.perf_counter()
                while time.monotonic() < stop_at:
                    run = asyncio.run(
                        run_point(
                            f"{service.url}/v1/predict",
                            bodies,
                            args.concurrency,
                            0,
                            args.concurrency * 2,
                            "load",
                            progress=False,
                        )
                    )
                    images += sum(s.images for s in run.samples)
                result["images"] = images
                result["seconds"] = time.perf_counter() - began

            thread = threading.Thread(target=load)
            thread.start()
            time.sleep(2)
            meter = CpuMeter(sid)
            before = meter.snapshot()
            spies = {
                role: subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "-p",
                        str(pid),
                        "-d",
                        str(int(args.seconds)),
                        "-r",
                        str(args.rate),
                        "--nonblocking",
                        "-f",
                        "raw",
                        "-o",
                        str(OUT / f"{role.replace(' ', '_')}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for role, pid in targets.items()
            }
            for role, spy in spies.items():
                _, err = spy.communicate()
                if spy.returncode != 0:
                    print(f"py-spy on {role} failed: {err.decode()[-300:]}")
            after = meter.snapshot()
            thread.join()
        finally:
            service.stop()
    cpu = CpuMeter.delta(before, after)
    ips = float(result["images"]) / float(result["seconds"])  # type: ignore[arg-type]
    print(f"\nthroughput {ips:.1f} img/s during the profile; CPU ms per image by process:")
    for role, secs in cpu["by_role_s"].items():
        if secs / cpu["wall_s"] >= 0.005:
            print(f"  {role:<28} {secs / cpu['wall_s'] * 1000 / ips:6.1f}")
    for role in ROLES:
        path = OUT / f"{role.replace(' ', '_')}.txt"
        if not path.exists():
            continue
        total, areas, leaves = summarise(path)
        if not total:
            continue
        print(f"\n{role}: {total} samples")
        for name, n in areas.most_common(8):
            print(f"  {100 * n / total:5.1f}%  {name}")
        print("  leaf functions:")
        for name, n in leaves.most_common(6):
            print(f"    {100 * n / total:5.1f}%  {name}")
    print(f"\ncollapsed stacks in {OUT}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ServeError as exc:  # BenchError is one
        print(f"bench.profile: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
