"""The raw in-process pipeline: the ceiling the served path is compared with.

decode (`deployments.pixels.imaging.decode`) -> batched forward pass
(`deployments.runtime.inference.Runner`, whose `Classification.decode` in
`deployments/tasks/classification.py` takes the softmax and the best classes) -> top-k
(`Classification.answer`, called by `deployments.stages.postprocessor.join`), one Python process,
no serving, the same images, model and preprocessing as the service (built from the same
generated config). Also measures what one item's objects weigh when pickled, as
they cross each stage boundary.

Runs as its own process (`python -m bench.raw`) so its torch threads and memory never share a
process with the load generator.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import pstats
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.stats import percentile
from deployments import tasks
from deployments.items import Meta, Options, RawOutput, Result, Sample, new_item_id
from deployments.pixels.imaging import decode
from deployments.runtime.inference import Runner
from deployments.runtime.model_source import resolve
from deployments.stages.postprocessor import join
from graph import AppArgs, decode_settings


def pickled_size(obj: Any) -> dict[str, int]:
    """Bytes of `pickle.dumps(obj, protocol=5)`, with out-of-band buffers (numpy) counted apart.

    Ray serialises arguments and results the same way (pickle 5, numpy arrays out of band);
    objects over 100 KiB travel through the shared-memory object store instead of the RPC.
    """
    buffers: list[pickle.PickleBuffer] = []
    in_band = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    out_of_band = sum(memoryview(b).nbytes for b in buffers)
    return {
        "in_band": len(in_band),
        "out_of_band": out_of_band,
        "total": len(in_band) + out_of_band,
    }


class Pipeline:
    def __init__(self, args: AppArgs, options: Mapping[str, Any], threads: int | None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.spec = args.model
        self.resolved = resolve(args.model)
        r = self.resolved
        self.resize, self.limits = decode_settings(args, r)
        self.runner = Runner.for_model(args.model, r)
        self.task = tasks.get(r.task)
        # The option defaults the graph's Postprocessor applies: its user_config's section.
        self.defaults = tasks.defaults_for(self.task, options)
        self.timing = {"decode": 0.0, "forward": 0.0, "postprocess": 0.0}
        # Process CPU seconds per stage (torch's intra-op threads included: the stages run one
        # after another in this process, so the process clock while a stage runs is its cost).
        self.cpu = {"decode": 0.0, "forward": 0.0, "postprocess": 0.0}

    def sample(self, data: bytes) -> Sample:
        start = time.perf_counter()
        cpu = time.process_time()
        done = decode(data, self.resize, self.limits)
        meta = Meta(
            item_id=new_item_id(),
            request_id="bench",
            image=done.image,
            geometry=done.geometry,
            options=Options(),
            preprocess_ms=(time.perf_counter() - start) * 1000.0,
        )
        self.timing["decode"] += time.perf_counter() - start
        self.cpu["decode"] += time.process_time() - cpu
        return Sample(meta=meta, pixels=done.pixels)

    def infer(self, samples: list[Sample]) -> list[Any]:
        start, cpu = time.perf_counter(), time.process_time()
        raws = self.runner.run(samples)
        self.timing["forward"] += time.perf_counter() - start
        self.cpu["forward"] += time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        out = [self.result(s, r) for s, r in zip(samples, raws, strict=True)]
        self.timing["postprocess"] += time.perf_counter() - start
        self.cpu["postprocess"] += time.process_time() - cpu
        return out

    def result(self, sample: Sample, raw: Any) -> Result:
        out = join(
            raw,
            sample,
            model=self.resolved.name,
            task=self.task,
            labels=self.resolved.labels,
            defaults=self.defaults,
        )
        assert isinstance(out, Result), out
        return out


def measure(
    pipe: Pipeline, images: list[bytes], batch: int, n_images: int, n_single: int
) -> dict[str, Any]:
    """Throughput at `batch`, single-image latency at batch 1, and stage costs."""
    r = pipe.resolved
    pipe.runner.warm_up([1, batch], r.input_height, r.input_width)
    for data in images:  # first decodes pay for Pillow's lazy set-up
        pipe.sample(data)

    # Single-image latency: decode + forward at batch 1 + top-k, one at a time.
    single = []
    for i in range(n_single):
        start = time.perf_counter()
        pipe.infer([pipe.sample(images[i % len(images)])])
        single.append((time.perf_counter() - start) * 1000.0)

    # Throughput: decode `batch` images, one forward pass, top-k each; repeat.
    pipe.timing = dict.fromkeys(pipe.timing, 0.0)
    pipe.cpu = dict.fromkeys(pipe.cpu, 0.0)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = 0
    while done < n_images:
        chunk = [images[(done + j) % len(images)] for j in range(batch)]
        pipe.infer([pipe.sample(d) for d in chunk])
        done += batch
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    return {
        "images": done,
        "batch": batch,
        "wall_s": wall,
        "throughput_ips": done / wall,
        "cpu_ms_per_image": cpu / done * 1000.0,
        "stage_ms_per_image": {k: v / done * 1000.0 for k, v in pipe.timing.items()},
        "stage_cpu_ms_per_image": {k: v / done * 1000.0 for k, v in pipe.cpu.items()},
        "forward_ms_per_batch": pipe.timing["forward"] / (done / batch) * 1000.0,
        "single_ms": {
            "p50": percentile(single, 50),
            "p90": percentile(single, 90),
            "min": min(single),
            "n": len(single),
        },
    }


def forward_cpu_by_batch(
    pipe: Pipeline, images: list[bytes], max_batch: int, passes: int
) -> dict[str, float]:
    """Process CPU ms per image of one forward pass (stack, normalise, model, top-k) per size.

    What the serving-overhead column subtracts for the batch sizes the served items were in. The
    median of `passes` passes per size: on a shared machine one pass can pay for another
    process's burst (torch's threads spin while one of them waits for a core).
    """
    samples = [pipe.sample(images[i % len(images)]) for i in range(max_batch)]
    out: dict[str, float] = {}
    for size in range(1, max_batch + 1):
        chunk = samples[:size]
        pipe.runner.run(chunk)  # first pass of a new shape pays for oneDNN's set-up
        per_pass = []
        for _ in range(passes):
            cpu = time.process_time()
            pipe.runner.run(chunk)
            per_pass.append((time.process_time() - cpu) / size * 1000.0)
        out[str(size)] = percentile(per_pass, 50)
    return out


def references(pipe: Pipeline, folder: Path, keep: int = 10) -> dict[str, dict[str, list[Any]]]:
    """Per image file (by stem): the top-`keep` class ids and scores, computed alone (batch 1).

    The load generator checks every served top-5 against these: a mis-joined item gets another
    image's scores, which differ by far more than batch composition ever moves them.
    """
    out: dict[str, dict[str, list[Any]]] = {}
    for path in sorted(folder.glob("*.jpg")):
        sample = pipe.sample(path.read_bytes())
        arrays = pipe.runner.forward(sample.pixels[None])[0]
        ids, scores = arrays["class_ids"], arrays["scores"]
        out[path.stem] = {
            "class_ids": [int(c) for c in ids[:keep]],
            "scores": [float(s) for s in scores[:keep]],
        }
    return out


def payloads(pipe: Pipeline, data: bytes) -> dict[str, Any]:
    """What one item weighs at each hop, measured on the real objects."""
    sample = pipe.sample(data)
    raw = pipe.runner.run([sample])[0]
    assert isinstance(raw, RawOutput)
    result = pipe.result(sample, raw)
    options, request_id = Options(), new_item_id()
    return {
        "body_bytes": len(data),
        "ingress_to_pre": pickled_size((data, options, request_id)),
        "pre_to_model": pickled_size(sample),
        "model_to_post": pickled_size(raw),
        "sample_to_post": pickled_size(sample),
        "post_to_ingress": pickled_size(result),
        "http_response": len(json.dumps(result.to_dict(), separators=(",", ":")).encode()),
        "pixels": int(sample.pixels.nbytes),
    }


def profile(pipe: Pipeline, images: list[bytes], batch: int, n_images: int) -> str:
    """cProfile of the throughput loop, top functions by internal time."""
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    measure_loop(pipe, images, batch, n_images)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def measure_loop(pipe: Pipeline, images: list[bytes], batch: int, n_images: int) -> None:
    for start in range(0, n_images, batch):
        pipe.infer([pipe.sample(images[(start + j) % len(images)]) for j in range(batch)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="generated serve config")
    parser.add_argument("--images", type=Path, required=True, help="folder of .jpg files")
    parser.add_argument("--sets", default="", help="extra image folders name=path,...")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n-images", type=int, default=160)
    parser.add_argument("--n-single", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--forward-passes",
        type=int,
        default=5,
        help="passes per batch size 1..batch for the forward-pass CPU table (0: skip)",
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the loop")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    config = yaml.safe_load(args.config.read_text())
    app = config["applications"][0]
    app_args = AppArgs.model_validate(app["args"])
    threads = args.threads if args.threads is not None else app_args.model.torch_threads
    options = next(d for d in app["deployments"] if d["name"] == "Postprocessor")["user_config"]
    pipe = Pipeline(app_args, options, threads)
    sets = {"target": args.images}
    for item in filter(None, args.sets.split(",")):
        name, _, path = item.partition("=")
        sets[name] = Path(path)
    out: dict[str, Any] = {
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "device": str(pipe.runner.device),
        "model": pipe.resolved.name,
        "jpeg_draft": pipe.resize.draft,
        "sets": {},
    }
    for name, folder in sets.items():
        images = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        out["sets"][name] = measure(pipe, images, args.batch, args.n_images, args.n_single)
        out.setdefault("references", {})[name] = references(pipe, folder)
    target_images = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))]
    out["payloads"] = payloads(pipe, target_images[0])
    if args.forward_passes > 0:
        out["forward_cpu_ms_per_image_by_batch"] = forward_cpu_by_batch(
            pipe, target_images, args.batch, args.forward_passes
        )
    if args.profile:
        print(profile(pipe, target_images, args.batch, args.n_images), file=sys.stderr)
    out["process_cpu_s"] = time.process_time()  # all of it, start-up included
    args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
