"""In-process evaluation of the shapes segmenter, scored in displayed pixels as the service answers.

``python -m shapes.evaluate_segmentation --weights shapes/shapes_segmenter.pt --count 300`` decodes
held-out generated images with the service's own decode and letterbox, takes the argmax of the
logits at the displayed resolution and brings that label map back to displayed pixels with the
service's own code (`deployments.tasks.segmentation`), and compares it with the generator's exact
label map. It prints per-class
IoU and mIoU overall, per image group (`image_groups`: size, aspect, encoding, EXIF rotation) and
per brightness-contrast bin.

IoU is pooled over the pixels of all images in a group (one confusion matrix), so large images
weigh by their pixel count. A contrast bin scores the background and the objects whose contrast
falls in it; the box regions of the other objects are left out of that bin's counts.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from deployments.pixels.masks import to_source
from deployments.tasks.segmentation import displayed_labels, map_geometry
from shapes.evaluate_offline import (
    CONTRAST_BINS,
    EVAL_SEED_BASE,
    contrast_bin,
    image_groups,
    preprocess,
)
from shapes.generate import GeneratedImage, generate
from shapes.segmenter import ShapesSegmenter, load_segmenter


def predict_labels(
    model: ShapesSegmenter, images: Sequence[GeneratedImage], *, draft: bool = True
) -> list[np.ndarray]:
    """Predicted label maps (uint8) in displayed pixels, made as the service makes them: its
    decode and letterbox, then `deployments.tasks.segmentation`'s own mapping back (the logits
    sampled bilinearly at the displayed resolution, then to every displayed pixel)."""
    size, device = model.input_size, next(model.parameters()).device
    decoded = [preprocess(image.data, size, draft=draft) for image in images]
    batch = torch.from_numpy(np.stack([p for p, _ in decoded])).to(device)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    x = (batch.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    out = []
    with torch.inference_mode():
        logits = model(x)["out"].float()
        for i, (_, geometry) in enumerate(decoded):
            label_map, region = displayed_labels(logits[i], geometry)
            arrays = {"label_map": label_map, "region": region}
            out.append(np.asarray(to_source(label_map, map_geometry(arrays, geometry))))
    return out


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """classes x classes pixel counts, rows the truth; labels >= classes (not seen) count as 0."""
    predicted = np.where(predicted < classes, predicted, 0)
    index = truth.astype(np.int64).ravel() * classes + predicted.ravel()
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix (NaN for a class neither true nor predicted)."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _outside_bin(image: GeneratedImage, name: str) -> np.ndarray:
    """Pixels to leave out of bin `name`: the box regions of objects in other bins."""
    mask = np.zeros((image.height, image.width), dtype=bool)
    for obj in image.objects:
        if obj.contrast is not None and contrast_bin(obj.contrast) != name:
            x0, y0, x1, y1 = obj.box
            mask[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = True
    return mask


def image_confusions(
    image: GeneratedImage, predicted: np.ndarray, classes: int
) -> dict[str, np.ndarray]:
    """Confusion matrices of one image: overall, for each group it is in, for each contrast bin."""
    truth = image.labels
    overall = confusion(truth, predicted, classes)
    out = {"all": overall, **{g: overall for g in image_groups(image)}}
    bins = {contrast_bin(o.contrast) for o in image.objects if o.contrast is not None}
    for name in bins:
        keep = ~_outside_bin(image, name)
        out[name] = confusion(truth[keep], predicted[keep], classes)
    return out


class SegmentationReport:
    """Per-class IoU and mIoU of a set of images, overall and per group."""

    def __init__(self, categories: Sequence[str]) -> None:
        self.categories = list(categories)
        self.matrices: dict[str, np.ndarray] = {}
        self.images: dict[str, int] = {}

    def add(self, image: GeneratedImage, predicted: np.ndarray) -> None:
        """Count one image."""
        for name, m in image_confusions(image, predicted, len(self.categories)).items():
            self.matrices[name] = self.matrices.get(name, 0) + m
            self.images[name] = self.images.get(name, 0) + 1

    def iou(self, group: str = "all") -> dict[str, float]:
        """Per-class IoU of a group."""
        values = class_iou(self.matrices[group])
        return {c: float(v) for c, v in zip(self.categories, values, strict=True)}

    def miou(self, group: str = "all") -> float:
        """Mean IoU over the classes present in a group."""
        return float(np.nanmean(list(self.iou(group).values())))

    def groups(self) -> list[str]:
        """Group names, overall first, contrast bins last in their order."""
        bins = [b for b in CONTRAST_BINS if b in self.matrices]
        rest = sorted(g for g in self.matrices if g != "all" and g not in bins)
        return ["all", *rest, *bins]

    def facts(self) -> dict[str, object]:
        """The numbers, rounded, for a JSON record."""
        return {
            g: {
                "images": self.images[g],
                "miou": round(self.miou(g), 4),
                # A class absent from a group has no IoU: null, not NaN, so the JSON stays valid.
                "iou": {c: None if math.isnan(v) else round(v, 4) for c, v in self.iou(g).items()},
            }
            for g in self.groups()
        }

    def format_table(self) -> str:
        """One row per group: images, mIoU, per-class IoU."""
        short = [c[:10] for c in self.categories]
        lines = [f"{'group':<16}{'images':>7}{'mIoU':>8}" + "".join(f"{c:>11}" for c in short)]
        for g in self.groups():
            cells = "".join(f"{v:>11.4f}" for v in self.iou(g).values())
            lines.append(f"{g:<16}{self.images[g]:>7}{self.miou(g):>8.4f}{cells}")
        return "\n".join(lines)


def evaluate_segmenter(
    model: ShapesSegmenter,
    seeds: Iterable[int],
    *,
    batch_size: int = 8,
    draft: bool = True,
    verbose: bool = True,
) -> SegmentationReport:
    """IoU report on images generated from `seeds`."""
    model.eval()
    seeds = list(seeds)
    report = SegmentationReport(model.categories)
    for start in range(0, len(seeds), batch_size):
        chunk = [generate(s) for s in seeds[start : start + batch_size]]
        for image, predicted in zip(chunk, predict_labels(model, chunk, draft=draft), strict=True):
            report.add(image, predicted)
    if verbose:
        print(report.format_table())
    return report


def main(argv: list[str] | None = None) -> None:
    """Load weights and evaluate on held-out seeds."""
    parser = argparse.ArgumentParser(description="Offline evaluation of the shapes segmenter.")
    parser.add_argument("--weights", default="shapes/shapes_segmenter.pt")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=EVAL_SEED_BASE, help="first image seed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_segmenter(args.weights)
    start = time.perf_counter()
    evaluate_segmenter(
        model,
        range(args.seed, args.seed + args.count),
        batch_size=args.batch_size,
        draft=not args.no_draft,
    )
    print(f"\n{args.count} images in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
