"""Train the segmenter: ``python -m shapes.train_segmenter --out shapes/shapes_segmenter.pt``.

Data as for the detector (`shapes.train`): `--images` generated training images pushed through the
service's decode + letterbox once and kept in memory at model resolution, with targets made exact
by the generator: its label rule sampled at each model-input pixel centre, mapped into displayed
pixels by the inverse of the letterbox geometry that decode reports (the map `to_source` inverts).
The encoder starts from the detector's backbone (`--backbone`, the committed detector weights by
default; the JSON records their sha256). Training samples batches from that pool with horizontal
flips and minimises pixel cross-entropy plus a soft Dice term. Reproducible from `--seed` and the
backbone weights; writes the state_dict (fp16) and a JSON of facts beside it, including
the offline evaluation on held-out seeds.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deployments.items import Geometry
from shapes.evaluate_offline import EVAL_SEED_BASE, preprocess
from shapes.evaluate_segmentation import evaluate_segmenter
from shapes.generate import generate, label_map
from shapes.segmenter import build_segmenter
from shapes.train import TRAIN_SEED_STRIDE, build_pool, to_input, training_source, warmup_cosine

SegSample = tuple[np.ndarray, np.ndarray]  # pixels S x S x 3, labels S x S (uint8)


def input_centres(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Displayed coordinates (xs, ys) of the model-input pixel centres (outside it in the pads)."""
    xs = (np.arange(geometry.input_width) + 0.5 - geometry.offset_x) / geometry.scale_x
    ys = (np.arange(geometry.input_height) + 0.5 - geometry.offset_y) / geometry.scale_y
    return xs, ys


def make_seg_sample(image_seed: int, size: int, extra_wide: float = 0.2) -> SegSample:
    """One training image at model resolution and its label map in model-input pixels."""
    width, height, draft = training_source(image_seed, size, extra_wide)
    image = generate(image_seed, width=width, height=height)
    pixels, geometry = preprocess(image.data, size, draft=draft)
    return pixels, label_map(image.scene, *input_centres(geometry))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the batch's soft Dice: weighs every class alike, as mIoU does,
    where cross-entropy is dominated by the background's many pixels."""
    probs = logits.softmax(1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (total + 1.0)).mean()


def train(args: argparse.Namespace) -> dict[str, object]:
    """Run the whole training; returns the facts written to the JSON."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = build_segmenter(input_size=args.input_size)
    backbone_sha256 = init_sha256 = None
    if args.init is not None:
        # Continuing an earlier run (its weights' sha256 goes in the JSON); no backbone copy then.
        init_sha256 = hashlib.sha256(args.init.read_bytes()).hexdigest()
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
    elif args.backbone is not None:
        backbone_sha256 = hashlib.sha256(args.backbone.read_bytes()).hexdigest()
        loaded = model.load_backbone(
            torch.load(args.backbone, map_location="cpu", weights_only=True)
        )
        print(f"backbone: {loaded} tensors from {args.backbone}", flush=True)
    size = model.input_size
    # A seed range of its own, so the detector's and the segmenter's pools differ.
    seeds = [(args.seed + 500) * TRAIN_SEED_STRIDE + i for i in range(args.images)]
    make = functools.partial(make_seg_sample, extra_wide=args.extra_wide)
    pool = build_pool(seeds, size, args.workers, make=make)
    pixels = torch.from_numpy(np.stack([p for p, _ in pool]))
    labels = torch.from_numpy(np.stack([lab for _, lab in pool]))
    del pool
    gen_s = time.perf_counter() - start
    print(f"generated {len(seeds)} images in {gen_s:.0f}s", flush=True)

    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, int(args.steps), min(100, int(args.steps) // 10))
    rng = np.random.default_rng([args.seed, 2])
    running: list[float] = []
    loss_value = float("nan")
    for step in range(args.steps):
        idx = torch.from_numpy(rng.integers(0, len(seeds), args.batch))
        flip = torch.from_numpy(rng.random(args.batch) < 0.5)
        batch, target = pixels[idx], labels[idx].long()
        # Upright triangles stay upright under a horizontal flip; a vertical one would not.
        batch[flip] = batch[flip].flip(2)
        target[flip] = target[flip].flip(2)
        logits = model(to_input(batch, model))["out"]
        loss = F.cross_entropy(logits, target) + args.dice_weight * soft_dice_loss(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            loss_value = sum(running) / len(running)
            running.clear()
            print(
                f"step {step + 1}/{args.steps} loss {loss_value:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {time.perf_counter() - start:.0f}s",
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
        "backbone": None if args.backbone is None else str(args.backbone),
        "backbone_sha256": backbone_sha256,
        "init": None if args.init is None else str(args.init),
        "init_sha256": init_sha256,
        "extra_wide": args.extra_wide,
        "dice_weight": args.dice_weight,
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
        eval_start = time.perf_counter()
        report = evaluate_segmenter(model, range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.eval_count))
        facts["offline_eval"] = {
            "images": args.eval_count,
            "seeds": f"{EVAL_SEED_BASE}..{EVAL_SEED_BASE + args.eval_count - 1}",
            "wall_s": round(time.perf_counter() - eval_start, 1),
            "groups": report.facts(),
        }
    facts["total_wall_s"] = round(time.perf_counter() - start, 1)
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and train."""
    parser = argparse.ArgumentParser(description="Train the shapes segmenter.")
    parser.add_argument("--out", type=Path, default=Path("shapes/shapes_segmenter.pt"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=2500)
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--backbone",
        type=Path,
        default=Path("shapes/shapes_detector.pt"),
        help="detector weights whose backbone the encoder starts from",
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="continue from these segmenter weights"
    )
    parser.add_argument(
        "--extra-wide", type=float, default=0.2, help="share of training images made 3:1 to 4:1"
    )
    parser.add_argument("--dice-weight", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="processes generating data")
    parser.add_argument("--eval-count", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    facts = train(args)
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
