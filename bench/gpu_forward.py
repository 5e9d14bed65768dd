"""The GPU path's raw rates: the Model's forward pass by precision, memory format and batch size,
and JPEG decode on the device against Pillow's per CPU core.

    python -m bench.gpu_forward --json bench/results/gpu-forward-h200.json   # CUDA, < 1 min
    python -m bench.gpu_forward --device cpu --quick                          # a smoke test

Forward: ResNet-50 (`weights: none`, seed 0; random weights cost what trained ones do) at
224x224, built and run by the service's own `Runner` with the model spec's `precision` and
`channels_last`, so each row is what a Model replica with those settings runs; a row times
`Runner.infer` (normalise on the device, autocast, the module) on a batch already on the device,
synchronised, in images per second. A precision the device cannot run is listed as skipped with
the Runner's own refusal (float16 on a CPU).

Upload: one uint8 batch copied to the device from pageable memory and from a pinned buffer with
`non_blocking` (the Runner's way on CUDA).

Decode: a batch of photo-like 640x480 JPEGs (bench/images.py, ~150 KB each) decoded with one
`decode_jpeg` call on the device, alone and with the placement onto the model input
(`device_decode.decode_batch`: what the Model does with `gpu_decode`), against one CPU thread
running the Preprocessor's Pillow decode (`imaging.decode`, jpeg_draft as served) and
torchvision's libjpeg decode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision

from bench.images import TARGET_SIZE, jpeg_near, picture
from deployments.errors import VisionError
from deployments.pixels.imaging import Deferred, ResizeSpec, decode, prepare
from deployments.runtime.device_decode import decode_batch
from deployments.runtime.inference import Runner
from deployments.runtime.model_source import ModelLoadError, resolve
from deployments.runtime.spec import ModelSpec, Precision
from graph import served_args

PRECISIONS: tuple[Precision, ...] = ("float32", "bfloat16", "float16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(
    work: Callable[[], object], images: int, device: torch.device, seconds: float, warm: int
) -> tuple[float, int]:
    """Images per second of `work` (which handles `images` images) over about `seconds`, after
    `warm` untimed calls; and the number of timed calls."""
    for _ in range(warm):
        work()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        work()
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return images * calls / elapsed, calls


def forward_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for precision in PRECISIONS:
        for channels_last in (False, True):
            spec = ModelSpec(
                name=args.model,
                weights="none",
                seed=0,
                input_size=args.size,
                resize="stretch",
                precision=precision,
                channels_last=channels_last,
            )
            row: dict[str, Any] = {"precision": precision, "channels_last": channels_last}
            try:
                runner = Runner.for_model(spec, resolve(spec), device)
            except ModelLoadError as refused:
                rows.append({**row, "skipped": str(refused)})
                print(f"  {precision:>8} channels_last={channels_last!s:5}  skipped: {refused}")
                continue
            for batch in args.batches:
                x = torch.randint(
                    0, 256, (batch, args.size, args.size, 3), dtype=torch.uint8, device=device
                )
                rate, calls = _rate(partial(runner.infer, x), batch, device, args.seconds, 3)
                rows.append({**row, "batch": batch, "images_per_s": rate, "timed_calls": calls})
                print(
                    f"  {precision:>8} channels_last={channels_last!s:5} batch {batch:>3}: "
                    f"{rate:9.1f} img/s"
                )
            del runner
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def upload_rows(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Host-to-device copy of one uint8 batch at the largest batch size: from pageable memory
    (a plain `to()`) and from a pinned buffer with `non_blocking` (what the Runner does)."""
    if device.type != "cuda":
        return {"skipped": "host-to-device copies are measured on CUDA only"}
    batch = max(args.batches)
    shape = (batch, args.size, args.size, 3)
    pageable = torch.randint(0, 256, shape, dtype=torch.uint8)
    pinned = pageable.pin_memory()
    out = {
        "batch": batch,
        "pageable_images_per_s": _rate(lambda: pageable.to(device), batch, device, 0.5, 2)[0],
        "pinned_non_blocking_images_per_s": _rate(
            lambda: pinned.to(device, non_blocking=True), batch, device, 0.5, 2
        )[0],
    }
    for key, value in out.items():
        print(f"  {key}: {value:,.1f}")
    return out


def _jpegs(count: int, distinct: int) -> list[bytes]:
    width, height, kb = TARGET_SIZE
    made = [jpeg_near(picture(width, height, seed), kb * 1000)[1] for seed in range(distinct)]
    return [made[i % distinct] for i in range(count)]


def decode_rows(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = _jpegs(args.decode_batch, min(args.decode_batch, 16))
    limits = served_args().limits  # what the Preprocessor checks before either decode
    # The Model's input as a classifier serves it (resize 232..256, crop 224), as served.
    spec = ResizeSpec("resize_crop", 224, 224, 256, draft=True)
    deferred = [prepare(d, replace(spec, gpu_decode=True), limits) for d in data]
    jpegs = [d.jpeg for d in deferred if isinstance(d, Deferred)]
    geometries = [d.geometry for d in deferred]
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    n = len(data)

    def placed() -> None:
        out = decode_batch(jpegs, geometries, device)
        if any(isinstance(o, VisionError) for o in out):
            raise RuntimeError(f"a benchmark JPEG failed to decode: {out}")

    device_decode, _ = _rate(
        lambda: decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device),
        n,
        device,
        args.seconds,
        2,
    )
    device_path, _ = _rate(placed, n, device, args.seconds, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as one Preprocessor decoder thread has
    try:
        cpu = torch.device("cpu")
        pillow, _ = _rate(lambda: [decode(d, spec, limits) for d in data], n, cpu, args.seconds, 1)
        libjpeg, _ = _rate(
            lambda: decode_jpeg(tensors, mode=ImageReadMode.RGB, device="cpu"),
            n,
            cpu,
            args.seconds,
            1,
        )
    finally:
        torch.set_num_threads(threads)
    out = {
        "images": f"{n} photo-like {TARGET_SIZE[0]}x{TARGET_SIZE[1]} JPEGs, ~{TARGET_SIZE[2]} KB",
        "batch": n,
        "model_input": "resize_crop 256 -> 224x224 (jpeg_draft on for Pillow)",
        f"{device.type}_decode_jpeg_images_per_s": device_decode,
        f"{device.type}_decode_and_place_images_per_s": device_path,
        "cpu_1_core_pillow_decode_images_per_s": pillow,
        "cpu_1_core_libjpeg_decode_images_per_s": libjpeg,
        "device_decode_and_place_vs_pillow_core": device_path / pillow,
    }
    for key, value in out.items():
        if isinstance(value, float):
            print(f"  {key}: {value:,.1f}")
    return out


def header(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "benchmark": "bench.gpu_forward",
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "-m", "bench.gpu_forward", *args.argv]),
        "model": args.model,
        "weights": "none (seed 0)",
        "input": f"{args.size}x{args.size}",
        "device": str(device),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "seconds_per_row": args.seconds,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_forward", description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--model", default="resnet50", help="a torchvision classifier")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--seconds", type=float, default=1.0, help="timed time per row")
    parser.add_argument("--decode-batch", type=int, default=64, help="JPEGs per decode call")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: batch 2, 0.05 s rows, 4 JPEGs"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.batches, args.seconds, args.decode_batch = [2], 0.05, 4
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench.gpu_forward: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    started = time.perf_counter()
    head = header(args, device)
    print(
        f"bench.gpu_forward: {args.model} ({head['weights']}) {head['input']} on "
        f"{head['gpu'] or head['cpu']}, torch {head['torch']}"
    )
    print("forward (Runner.infer: normalise + autocast + module, input on the device):")
    forward = forward_rows(args, device)
    print("upload (uint8 batch, host to device):")
    upload = upload_rows(args, device)
    print(f"decode (batch of {args.decode_batch}):")
    decoding = decode_rows(args, device)
    head["wall_s"] = round(time.perf_counter() - started, 1)
    result = {"header": head, "forward": forward, "upload": upload, "decode": decoding}
    print(table(forward))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json} ({head['wall_s']} s)")
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    """Images per second: a row per precision and memory format, a column per batch size."""
    batches = sorted({r["batch"] for r in rows if "batch" in r})
    lines = [
        "| precision | channels_last | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|---|" + "---:|" * len(batches),
    ]
    for precision in PRECISIONS:
        for channels_last in (False, True):
            mine = [
                r
                for r in rows
                if r["precision"] == precision and r["channels_last"] == channels_last
            ]
            if not mine:
                continue
            if "skipped" in mine[0]:
                cells = ["skipped"] * len(batches)
            else:
                rate = {r["batch"]: r["images_per_s"] for r in mine}
                cells = [f"{rate[b]:,.0f}" if b in rate else "" for b in batches]
            lines.append(f"| {precision} | {channels_last} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
