"""In-process evaluation on held-out generated images through the service's exact preprocessing.

``python -m shapes.evaluate_offline --weights shapes/shapes_detector.pt --count 300`` prints
per-class AP50/AP75, error counts, and the same broken down by source size, aspect ratio and
encoding and by the objects' brightness contrast with the background (`CONTRAST_BINS`), plus
recall by object size in model-input pixels. The segmenter's counterpart is
`shapes.evaluate_segmentation`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from deployments.items import Geometry
from deployments.pixels.geometry import boxes_to_source, plan_letterbox
from deployments.pixels.imaging import ResizeSpec, decode
from deployments.settings import Limits
from shapes.generate import GeneratedImage, generate
from shapes.metrics import Detection, GroundTruth, Report, evaluate, iou
from shapes.model import ShapesDetector, load_detector

EVAL_SEED_BASE = 1_000_000_000  # training seeds stay below this (see shapes.train)
_OBJECT_BUCKETS = ((0.0, 12.0), (12.0, 24.0), (24.0, 48.0), (48.0, float("inf")))
# Brightness contrast of an object with the background under it (|luma difference|, see
# shapes.generate): below 16 it differs in hue alone; 48 is the old domain's minimum.
CONTRAST_BINS = ("contrast<16", "contrast 16-48", "contrast>=48")


def contrast_bin(contrast: float) -> str:
    """The `CONTRAST_BINS` name of an object's brightness contrast."""
    return (
        CONTRAST_BINS[0]
        if contrast < 16
        else CONTRAST_BINS[1]
        if contrast < 48
        else CONTRAST_BINS[2]
    )


@functools.cache
def _served_limits() -> Limits:
    """serve_config.yaml's limits (imported late: the graph pulls in Ray Serve)."""
    from vision_serve.graph import served_args

    return served_args().limits


def preprocess(data: bytes, size: int, *, draft: bool = True) -> tuple[np.ndarray, Geometry]:
    """The service's own decode and letterbox to `size` x `size`: uint8 HWC pixels and geometry."""
    spec = ResizeSpec(mode="letterbox", input_width=size, input_height=size, draft=draft)
    out = decode(data, spec, _served_limits())
    return out.pixels, out.geometry


def predict(
    model: ShapesDetector, images: Sequence[GeneratedImage], *, draft: bool = True
) -> list[list[Detection]]:
    """Detections in displayed pixels for each image, preprocessed as the service does."""
    size, device = model.input_size, next(model.parameters()).device
    arrays: list[np.ndarray] = []
    geometries: list[Geometry] = []
    for image in images:
        pixels, geometry = preprocess(image.data, size, draft=draft)
        arrays.append(pixels)
        geometries.append(geometry)
    batch = torch.from_numpy(np.stack(arrays)).to(device)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    x = (batch.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.inference_mode():
        outputs = model(x)
    results: list[list[Detection]] = []
    for out, geometry in zip(outputs, geometries, strict=True):
        source = boxes_to_source(out["boxes"].cpu().double().numpy(), geometry)
        results.append(
            [
                Detection(
                    label=model.categories[int(lab)],
                    box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    score=float(s),
                )
                for b, s, lab in zip(source, out["scores"].cpu(), out["labels"].cpu(), strict=True)
            ]
        )
    return results


def image_groups(image: GeneratedImage) -> list[str]:
    """Breakdown buckets an image belongs to."""
    short, long = min(image.width, image.height), max(image.width, image.height)
    aspect = long / short
    groups = [
        "short<128"
        if short < 128
        else "short<512"
        if short < 512
        else "short<1536"
        if short < 1536
        else "short>=1536",
        "long<256"
        if long < 256
        else "long<1024"
        if long < 1024
        else "long<2048"
        if long < 2048
        else "long>=2048",
        "aspect<1.5" if aspect < 1.5 else "aspect<3" if aspect < 3 else "aspect>=3",
        "png" if image.fmt == "PNG" else "jpeg q<70" if (image.quality or 0) < 70 else "jpeg q>=70",
    ]
    if image.orientation != 1:
        groups.append("exif rotated")
    return groups


def object_recall(
    predictions: Sequence[Sequence[Detection]],
    images: Sequence[GeneratedImage],
    input_size: int,
    score_threshold: float = 0.3,
) -> dict[str, tuple[int, float, float]]:
    """Per object-size bucket (short box side in model pixels): count, recall@0.5, recall@0.75."""
    stats: dict[str, list[float]] = {}
    for preds, image in zip(predictions, images, strict=True):
        scale = plan_letterbox(image.width, image.height, input_size, input_size).scale_x
        for t in image.objects:
            side = min(t.box[2] - t.box[0], t.box[3] - t.box[1]) * scale
            lo, hi = next(b for b in _OBJECT_BUCKETS if b[0] <= side < b[1])
            best = max(
                (
                    iou(p.box, t.box)
                    for p in preds
                    if p.label == t.label and p.score >= score_threshold
                ),
                default=0.0,
            )
            stats.setdefault(f"{lo:g}-{hi:g}px", []).append(best)
    return {
        k: (len(v), float(np.mean([b >= 0.5 for b in v])), float(np.mean([b >= 0.75 for b in v])))
        for k, v in sorted(stats.items(), key=lambda kv: float(kv[0].split("-")[0]))
    }


def in_contrast_bin(
    predictions: Sequence[Detection], truths: Sequence[GroundTruth], name: str
) -> tuple[list[Detection], list[GroundTruth]]:
    """One image's predictions and truths as scored in contrast bin `name`.

    The truths are those in the bin; predictions that find (IoU >= 0.5, any class) an object of
    another bin better than any object of this one are left out, neither hits nor false alarms, as
    COCO ignores detections of objects outside an area range. Other false alarms count in every bin.
    """
    kept = [t for t in truths if t.contrast is not None and contrast_bin(t.contrast) == name]
    others = [t for t in truths if t not in kept]

    def best(p: Detection, group: Sequence[GroundTruth]) -> float:
        return max((iou(p.box, t.box) for t in group), default=0.0)

    preds = [p for p in predictions if not (best(p, others) >= max(0.5, best(p, kept)))]
    return preds, kept


def score(
    predictions: Sequence[Sequence[Detection]], images: Sequence[GeneratedImage]
) -> tuple[Report, dict[str, Report]]:
    """Overall report, one per breakdown group (`image_groups`), one per contrast bin (last)."""
    truths: list[list[GroundTruth]] = [list(i.objects) for i in images]
    members: dict[str, list[int]] = {}
    for k, image in enumerate(images):
        for g in image_groups(image):
            members.setdefault(g, []).append(k)
    groups = {
        g: evaluate([predictions[k] for k in idx], [truths[k] for k in idx])
        for g, idx in sorted(members.items())
    }
    for name in CONTRAST_BINS:
        pairs = [in_contrast_bin(p, t, name) for p, t in zip(predictions, truths, strict=True)]
        if any(kept for _, kept in pairs):
            groups[name] = evaluate([p for p, _ in pairs], [t for _, t in pairs])
    return evaluate(predictions, truths), groups


def evaluate_model(
    model: ShapesDetector,
    seeds: Iterable[int],
    *,
    batch_size: int = 8,
    draft: bool = True,
    verbose: bool = True,
) -> tuple[Report, dict[str, Report]]:
    """Overall report and one per breakdown group, on images generated from `seeds`."""
    model.eval()
    seeds = list(seeds)
    images: list[GeneratedImage] = []
    predictions: list[list[Detection]] = []
    for start in range(0, len(seeds), batch_size):
        chunk = [generate(s) for s in seeds[start : start + batch_size]]
        predictions.extend(predict(model, chunk, draft=draft))
        # Keep only what scoring needs; the encoded bytes of 4096 px images add up.
        images.extend(dataclasses.replace(i, data=b"") for i in chunk)
    report, groups = score(predictions, images)
    if verbose:
        print(report.format_table())
        print(format_groups(groups))
        print(f"\n{'object side':<14} {'count':>6} {'R@0.5':>7} {'R@0.75':>7}")
        for bucket, (n, r50, r75) in object_recall(predictions, images, model.input_size).items():
            print(f"{bucket:<14} {n:>6} {r50:>7.4f} {r75:>7.4f}")
    return report, groups


def format_groups(groups: dict[str, Report]) -> str:
    """One table row per breakdown group."""
    columns = ("images", "objects", "mAP50", "mAP75", "missed", "misloc", "loose")
    lines = ["\n" + f"{'group':<16}" + "".join(f"{c:>8}" for c in columns)]
    for g, r in groups.items():
        values = (r.num_images, r.num_objects, r.map50, r.map75, r.missed, r.mislocalised, r.loose)
        cells = "".join(f"{v:>8.4f}" if isinstance(v, float) else f"{v:>8}" for v in values)
        lines.append(f"{g:<16}{cells}")
    return "\n".join(lines)


def benchmark(model: ShapesDetector, batch_size: int, repeats: int = 20) -> float:
    """Median milliseconds per image of `forward` (decoding and NMS included) on a fixed batch."""
    size, device = model.input_size, next(model.parameters()).device
    pixels = np.stack([preprocess(generate(s).data, size)[0] for s in range(batch_size)])
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    times: list[float] = []
    with torch.inference_mode():
        model(x)  # warm-up: first calls pick kernels and allocate
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000 / batch_size


def main(argv: list[str] | None = None) -> None:
    """Load weights and evaluate on held-out seeds."""
    parser = argparse.ArgumentParser(description="Offline evaluation of the shapes detector.")
    parser.add_argument("--weights", default="shapes/shapes_detector.pt")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=EVAL_SEED_BASE, help="first image seed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=None, help="override the model's default")
    parser.add_argument("--benchmark", action="store_true", help="also time forward at batch 1, 8")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_detector(
        args.weights, **({"input_size": args.input_size} if args.input_size else {})
    )
    if args.count:
        start = time.perf_counter()
        evaluate_model(
            model,
            range(args.seed, args.seed + args.count),
            batch_size=args.batch_size,
            draft=not args.no_draft,
        )
        print(f"\n{args.count} images in {time.perf_counter() - start:.0f}s")
    if args.benchmark:
        for batch in (1, 8):
            print(f"forward, batch {batch}: {benchmark(model, batch):.1f} ms/image")


if __name__ == "__main__":
    main()
