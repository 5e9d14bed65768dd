"""Train the detector: ``python -m shapes.train --out shapes/shapes_detector.pt --seed 0``.

Data: `--images` generated images (seeds from the training range), each pushed through the
service's decode + letterbox once and kept in memory as uint8 at model resolution; training samples
batches from that pool with horizontal flips. Reproducible from `--seed`; writes the state_dict
(fp16) and a JSON of facts beside it, including the offline evaluation on held-out seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from deployments.pixels.geometry import boxes_to_input
from shapes import CATEGORIES
from shapes.evaluate_offline import EVAL_SEED_BASE, evaluate_model, preprocess
from shapes.generate import generate, sample_scene
from shapes.model import STRIDE, ShapesDetector, build_detector

TRAIN_SEED_STRIDE = 1_000_000  # image seeds are seed * stride + i, far below EVAL_SEED_BASE
_CHEAP_LONG_SIDE = 1536
_GAUSS_ALPHA = 0.54  # TTFNet's Gaussian spread relative to box size
_REG_MIN_WEIGHT = 0.3
_EXTRA_WIDE = 0.2

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # pixels S x S x 3, boxes K x 4, labels K
T = TypeVar("T")


def training_source(
    image_seed: int, size: int, extra_wide: float = _EXTRA_WIDE
) -> tuple[int, int, bool]:
    """(width, height, JPEG draft) of one training image: the domain's, reshaped for cost and
    for more of the hardest (widest) images."""
    scene = sample_scene(image_seed)
    rng = np.random.default_rng([image_seed, 1])
    width, height = scene.width, scene.height
    if rng.random() < extra_wide:
        # Extra 3:1 to 4:1 images: their objects are the smallest in model pixels, the hardest case.
        short = round(math.exp(rng.uniform(math.log(64), math.log(1024))))
        long = min(4096, int(short * rng.uniform(3.0, 4.0)))
        width, height = (long, short) if rng.random() < 0.5 else (short, long)
    long_side = max(width, height)
    # Huge sources look almost the same after the letterbox but cost 10x to make; most are shrunk,
    # the rest keep their real size so DCT-scaled decoding of 4096 px JPEGs is still seen.
    if long_side > _CHEAP_LONG_SIDE and rng.random() < 0.6:
        factor = rng.uniform(max(size, 400), _CHEAP_LONG_SIDE) / long_side
        width, height = max(64, round(width * factor)), max(64, round(height * factor))
    return width, height, bool(rng.random() < 0.5)


def make_sample(image_seed: int, size: int) -> Sample:
    """One training image at model resolution with boxes in model-input pixels."""
    width, height, draft = training_source(image_seed, size)
    image = generate(image_seed, width=width, height=height)
    pixels, geometry = preprocess(image.data, size, draft=draft)
    boxes = boxes_to_input([o.box for o in image.objects], geometry).astype(np.float32)
    labels = np.array([CATEGORIES.index(o.label) for o in image.objects], dtype=np.int64)
    return pixels, boxes, labels


def _call_star(job: tuple[Callable[[int, int], T], int, int]) -> T:
    make, seed, size = job
    return make(seed, size)


def build_pool(
    seeds: list[int],
    size: int,
    workers: int,
    make: Callable[[int, int], T] = make_sample,  # type: ignore[assignment]
) -> list[T]:
    """`make(seed, size)` for every seed, in order (deterministic whatever the worker count)."""
    jobs = [(make, s, size) for s in seeds]
    if workers <= 1:
        return [_call_star(j) for j in jobs]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(pool.imap(_call_star, jobs, chunksize=32))


def build_targets(
    boxes: list[np.ndarray], labels: list[np.ndarray], size: int, classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Heatmap targets (N, C, H, W), box targets (N, 4, H, W) and regression weights (N, H, W)."""
    n, cells = len(boxes), size // STRIDE
    heat = np.zeros((n, classes, cells, cells), dtype=np.float32)
    target = np.zeros((n, 4, cells, cells), dtype=np.float32)
    weight = np.zeros((n, cells, cells), dtype=np.float32)
    grid = np.arange(cells, dtype=np.float32)
    for i in range(n):
        for (x0, y0, x1, y1), label in zip(boxes[i], labels[i], strict=True):
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            ix, iy = min(int(cx), cells - 1), min(int(cy), cells - 1)
            sx = max(_GAUSS_ALPHA * (x1 - x0) / STRIDE / 6, 0.2)
            sy = max(_GAUSS_ALPHA * (y1 - y0) / STRIDE / 6, 0.2)
            g = np.exp(
                -((grid - ix) ** 2)[None, :] / (2 * sx**2)
                - ((grid - iy) ** 2)[:, None] / (2 * sy**2)
            )
            heat[i, label] = np.maximum(heat[i, label], g)
            heat[i, label, iy, ix] = 1.0
            # Regression is learnt on the Gaussian's core inside the box; each object weighs 1.
            centres = (grid + 0.5) * STRIDE
            inside = ((centres >= x0) & (centres <= x1))[None, :] & (
                (centres >= y0) & (centres <= y1)
            )[:, None]
            w = np.where(inside & (g >= _REG_MIN_WEIGHT), g, 0.0)
            w[iy, ix] = 1.0
            w /= w.sum()
            mask = w > 0
            weight[i][mask] = w[mask]
            target[i][:, mask] = np.array([x0, y0, x1, y1], dtype=np.float32)[:, None]
    return torch.from_numpy(heat), torch.from_numpy(target), torch.from_numpy(weight)


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def _log_sizes(boxes: Tensor) -> Tensor:
    return torch.log((boxes[:, 2:] - boxes[:, :2]).clamp(min=0.5))


def detection_loss(
    model: ShapesDetector, x: Tensor, heat: Tensor, target: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor]:
    """(heatmap loss, box loss) for one batch."""
    logits, regression = model.features(x)
    boxes = model.decode_boxes(regression)
    mask = weight > 0
    pred = boxes.permute(0, 2, 3, 1)[mask]
    true = target.permute(0, 2, 3, 1)[mask]
    w = weight[mask]
    box_loss = (generalized_box_iou_loss(pred, true, reduction="none") * w).sum() / w.sum().clamp(
        min=1e-6
    )
    # GIoU alone is slow to pin down few-pixel boxes; L1 on log sizes keeps small ones honest.
    log_l1 = F.l1_loss(_log_sizes(pred), _log_sizes(true), reduction="none").sum(1)
    log_l1 = (log_l1 * w).sum() / w.sum().clamp(min=1e-6)
    return focal_loss(logits, heat), box_loss + log_l1


def to_input(pixels: Tensor, model: ShapesDetector) -> Tensor:
    """uint8 NHWC -> normalised float NCHW, exactly as the service does."""
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    x = pixels.permute(0, 3, 1, 2).float() / 255.0
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def warmup_cosine(
    opt: torch.optim.Optimizer, steps: int, warmup: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine down to 1 % of the rate."""

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def train(args: argparse.Namespace) -> dict[str, object]:
    """Run the whole training; returns the facts written to the JSON."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = build_detector(input_size=args.input_size)
    init_sha256 = None if args.init is None else _sha256(args.init)  # before --out may replace it
    if args.init is not None:
        # Fine-tuning: a domain that grew keeps what the earlier weights learnt of the old one.
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
    size = model.input_size
    seeds = [args.seed * TRAIN_SEED_STRIDE + i for i in range(args.images)]
    pool = build_pool(seeds, size, args.workers)
    pixels = torch.from_numpy(np.stack([p for p, _, _ in pool]))
    all_boxes = [b for _, b, _ in pool]
    all_labels = [lab for _, _, lab in pool]
    del pool
    gen_s = time.perf_counter() - start
    print(f"generated {len(seeds)} images in {gen_s:.0f}s", flush=True)

    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, int(args.steps), min(200, int(args.steps) // 10))
    rng = np.random.default_rng([args.seed, 2])
    running: list[float] = []
    loss_value = float("nan")
    for step in range(args.steps):
        idx = rng.integers(0, len(seeds), args.batch)
        flip = rng.random(args.batch) < 0.5
        batch = pixels[torch.from_numpy(idx)]
        flip_t = torch.from_numpy(flip)
        batch[flip_t] = batch[flip_t].flip(2)
        boxes = []
        for k, i in enumerate(idx):
            b = all_boxes[i].copy()
            if flip[k]:
                b[:, [0, 2]] = size - b[:, [2, 0]]
            boxes.append(b)
        heat, target, weight = build_targets(
            boxes, [all_labels[i] for i in idx], size, len(CATEGORIES)
        )
        hm_loss, box_loss = detection_loss(model, to_input(batch, model), heat, target, weight)
        loss = hm_loss + args.box_weight * box_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            loss_value = sum(running) / len(running)
            running.clear()
            elapsed = time.perf_counter() - start
            print(
                f"step {step + 1}/{args.steps} loss {loss_value:.4f} (last hm {hm_loss.item():.3f} "
                f"box {box_loss.item():.3f}) lr {sched.get_last_lr()[0]:.2e} {elapsed:.0f}s",
                flush=True,
            )
    train_s = time.perf_counter() - start

    model = model.to(memory_format=torch.contiguous_format).eval()
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    # Evaluate what was saved (fp16 round trip), not the fp32 weights in memory.
    model.load_state_dict(torch.load(args.out, weights_only=True))
    facts: dict[str, object] = {
        "seed": args.seed,
        "init": None if args.init is None else str(args.init),
        "init_sha256": init_sha256,
        "steps": args.steps,
        "batch": args.batch,
        "images": args.images,
        "input_size": size,
        "lr": args.lr,
        "threads": args.threads,
        "generation_s": round(gen_s, 1),
        "train_wall_s": round(train_s, 1),
        "final_loss": round(loss_value, 5),
        "weights_bytes": args.out.stat().st_size,
        "torch": torch.__version__,
    }
    if args.eval_count:
        report, groups = evaluate_model(
            model, range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.eval_count)
        )
        facts["offline_eval"] = {
            "images": args.eval_count,
            "seeds": f"{EVAL_SEED_BASE}..{EVAL_SEED_BASE + args.eval_count - 1}",
            **report.facts(),
            "groups": {
                k: {
                    "objects": r.num_objects,
                    "map50": round(r.map50, 4),
                    "map75": round(r.map75, 4),
                }
                for k, r in groups.items()
            },
        }
    facts["total_wall_s"] = round(time.perf_counter() - start, 1)
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and train."""
    parser = argparse.ArgumentParser(description="Train the shapes detector.")
    parser.add_argument("--out", type=Path, default=Path("shapes/shapes_detector.pt"))
    parser.add_argument(
        "--init", type=Path, default=None, help="start from these weights (default: from scratch)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--input-size", type=int, default=384)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--box-weight", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="processes generating data")
    parser.add_argument("--eval-count", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    facts = train(args)
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
