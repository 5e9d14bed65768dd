"""Accuracy through the served API: held-out generated images sent to ``POST /v1/predict``.

``python -m shapes.evaluate`` starts the service from ``serve_config.yaml`` on a free loopback
port (its own local Ray), sends ``--count`` held-out images concurrently, prints per-class AP at
IoU 0.5 and 0.75, mean AP, the missed and mis-localised objects, the same per size / aspect /
encoding group and per brightness-contrast bin of the objects, and stops the service.
``--url http://host:8000`` evaluates a running service instead. Boxes are scored in original
displayed pixels, exactly as a client receives them.

``--segmenter`` evaluates the shipped segmenter instead (``configs/shapes_segmenter.yaml``): each
image's label map comes back as the PNG of ``mask_format=png`` and is scored against the
generator's exact label map, pixel by pixel, as per-class IoU and mIoU per group.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from shapes import CATEGORIES
from shapes.evaluate_offline import EVAL_SEED_BASE, format_groups
from shapes.evaluate_offline import score as score_images
from shapes.evaluate_segmentation import SegmentationReport
from shapes.generate import GeneratedImage, generate
from shapes.metrics import Detection, Report

ROOT = Path(__file__).resolve().parent.parent
# Low enough to rank every candidate for AP; the service's default threshold is for end users.
QUERY = {"score_threshold": "0.05", "max_detections": "100"}
SEGMENTER_QUERY = {"mask_format": "png"}
SEGMENTER_CONFIG = ROOT / "configs" / "shapes_segmenter.yaml"
_CONTENT_TYPE = {"JPEG": "image/jpeg", "PNG": "image/png"}


def held_out(seed: int, count: int, workers: int = 2) -> list[GeneratedImage]:
    """Images `seed` .. `seed + count - 1` (never used in training), generated in parallel."""
    seeds = range(seed, seed + count)
    if workers <= 1:
        return [generate(s) for s in seeds]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(pool.imap(generate, seeds, chunksize=4))


def detections(body: dict[str, Any]) -> list[Detection]:
    """A `/v1/predict` result's predictions as scored detections."""
    return [
        Detection(label=p["label"], box=tuple(p["box"]), score=float(p["score"]))  # type: ignore[arg-type]
        for p in body["predictions"]
    ]


async def post_all(
    url: str,
    images: list[GeneratedImage],
    concurrency: int,
    api_key: str | None,
    query: dict[str, str] = QUERY,
) -> tuple[list[dict[str, Any] | None], list[str], list[int]]:
    """POST every image, at most `concurrency` at once; (bodies or None, errors, batch sizes)."""
    headers = _auth(api_key)
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(i: int, image: GeneratedImage) -> dict[str, Any] | None:
            async with gate:
                response = await client.post(
                    "/v1/predict",
                    content=image.data,
                    params=query,
                    headers={**headers, "content-type": _CONTENT_TYPE[image.fmt]},
                )
            if response.status_code != 200:
                errors.append(f"image {i}: HTTP {response.status_code} {response.text[:200]}")
                return None
            body: dict[str, Any] = response.json()
            return body

        bodies = await asyncio.gather(*(one(i, im) for i, im in enumerate(images)))
    batches = [b["batch_size"] for b in bodies if b is not None]
    return list(bodies), errors, batches


def check_sizes(images: list[GeneratedImage], bodies: list[dict[str, Any] | None]) -> list[str]:
    """The service must report each image's displayed size; a mismatch means a mixed-up join."""
    wrong = []
    for i, (image, body) in enumerate(zip(images, bodies, strict=True)):
        if body is not None and (body["image"]["width"], body["image"]["height"]) != (
            image.width,
            image.height,
        ):
            wrong.append(f"image {i}: sent {image.width}x{image.height}, got {body['image']}")
    return wrong


def score(
    images: list[GeneratedImage], bodies: list[dict[str, Any] | None]
) -> tuple[Report, dict[str, Report]]:
    """Overall report and one per breakdown group (failed requests count as no detections)."""
    return score_images([detections(b) if b is not None else [] for b in bodies], images)


def label_map(body: dict[str, Any]) -> np.ndarray:
    """The displayed-pixel label map of a `mask_format=png` segmentation result."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["label_map"]))))


def score_segmentation(
    images: list[GeneratedImage], bodies: list[dict[str, Any] | None]
) -> SegmentationReport:
    """Per-class IoU per group; a failed request counts as all background."""
    report = SegmentationReport(["background", *CATEGORIES])
    for image, body in zip(images, bodies, strict=True):
        shape = (image.height, image.width)
        predicted = label_map(body) if body is not None else np.zeros(shape, dtype=np.uint8)
        report.add(image, predicted)
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate, (start,) send, score; returns the facts printed and optionally saved."""
    began = time.perf_counter()
    images = held_out(args.seed, args.count, args.workers)
    generated_s = time.perf_counter() - began
    print(f"generated {len(images)} held-out images in {generated_s:.0f}s", flush=True)
    service = None
    url = args.url
    if url is None:
        # Imported here: only the self-started mode starts `serve run`.
        from tools.serve_process import ServeProcess, load_config, on_loopback

        port = _free_port()
        path = SEGMENTER_CONFIG if args.segmenter else ROOT / "serve_config.yaml"
        config = on_loopback(load_config(path), port)
        service = ServeProcess(config, Path(tempfile.mkdtemp(prefix="shapes-eval-")), port)
        print(f"starting the service (serve run {path.name}) on port {port}", flush=True)
        service.start()
        url = service.url
    try:
        sent = time.perf_counter()
        query = SEGMENTER_QUERY if args.segmenter else QUERY
        bodies, errors, batches = asyncio.run(
            post_all(url, images, args.concurrency, args.api_key, query)
        )
        served_s = time.perf_counter() - sent
        model = httpx.get(f"{url}/v1/model", timeout=30, headers=_auth(args.api_key)).json()
    finally:
        if service is not None:
            service.stop()
    wrong = check_sizes(images, bodies)
    if args.segmenter:
        return _segmentation_facts(args, model, images, bodies, errors, wrong, served_s, batches)
    report, groups = score(images, bodies)
    print(report.format_table())
    print(format_groups(groups))
    return {
        **_run_facts(args, model, images, errors, wrong, served_s, batches),
        **report.facts(),
        "groups": {
            k: {
                "images": r.num_images,
                "objects": r.num_objects,
                "map50": round(r.map50, 4),
                "map75": round(r.map75, 4),
            }
            for k, r in groups.items()
        },
    }


def _segmentation_facts(
    args: argparse.Namespace,
    model: dict[str, Any],
    images: list[GeneratedImage],
    bodies: list[dict[str, Any] | None],
    errors: list[str],
    wrong: list[str],
    served_s: float,
    batches: list[int],
) -> dict[str, Any]:
    report = score_segmentation(images, bodies)
    print(report.format_table())
    return {
        **_run_facts(args, model, images, errors, wrong, served_s, batches),
        "miou": round(report.miou(), 4),
        "groups": report.facts(),
    }


def _run_facts(
    args: argparse.Namespace,
    model: dict[str, Any],
    images: list[GeneratedImage],
    errors: list[str],
    wrong: list[str],
    served_s: float,
    batches: list[int],
) -> dict[str, Any]:
    """Print how the run went (speed, batching, failures) and return those facts."""
    mean_batch = sum(batches) / max(1, len(batches))
    print(
        f"\n{len(images)} images over HTTP in {served_s:.1f}s ({len(images) / served_s:.1f} "
        f"images/s at concurrency {args.concurrency}); mean batch "
        f"{mean_batch:.2f}; {len(errors)} failed requests"
    )
    for line in errors[:10] + wrong[:10]:
        print("  " + line)
    return {
        "model": model.get("model"),
        "images": len(images),
        "seeds": f"{args.seed}..{args.seed + args.count - 1}",
        "concurrency": args.concurrency,
        "failed_requests": len(errors),
        "size_mismatches": len(wrong),
        "mean_batch_size": round(mean_batch, 2),
        "images_per_s": round(len(images) / served_s, 2),
    }


def _auth(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, evaluate; exit status 1 when requests failed or sizes came back wrong."""
    parser = argparse.ArgumentParser(
        description="Evaluate the served shapes detector (or segmenter) over HTTP."
    )
    parser.add_argument(
        "--segmenter", action="store_true", help="the shipped segmenter's config and IoU instead"
    )
    parser.add_argument("--url", default=None, help="a running service (default: start one)")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=EVAL_SEED_BASE, help="first held-out seed")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="processes generating images")
    parser.add_argument(
        "--api-key", default=os.environ.get("VISION_API_KEY"), help="default: $VISION_API_KEY"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the facts here")
    args = parser.parse_args(argv)
    facts = run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(facts, indent=2) + "\n")
    return 1 if facts["failed_requests"] or facts["size_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
