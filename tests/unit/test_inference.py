"""The Model's core without Ray: per-item results in order, same-shape sub-batches, faults split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from pydantic import ValidationError
from torch import nn

from deployments import tasks
from deployments.items import ImageInfo, ItemError, Meta, Options, Prediction, RawOutput, Sample
from deployments.pixels.geometry import plan
from deployments.pixels.imaging import ResizeSpec, decode
from deployments.runtime.inference import Runner, as_float32
from deployments.runtime.model_source import ModelLoadError, resolve
from deployments.runtime.spec import ModelSpec, Resolved
from shapes.generate import generate
from tests import settings


def _sample(item_id: str, pixels: np.ndarray) -> Sample:
    h, w = pixels.shape[:2]
    meta = Meta(item_id, "req", ImageInfo(w, h, "PNG"), plan("stretch", w, h, w, h), Options())
    return Sample(meta=meta, pixels=pixels)


def _pixels(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def classifier() -> Runner:
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10)
    return Runner(
        module, classifier_settings((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), torch.device("cpu")
    )


def classifier_settings(
    mean: tuple[float, float, float], std: tuple[float, float, float]
) -> Resolved:
    return Resolved(
        name="resnet18",
        task="classification",
        labels=(),
        input_width=64,
        input_height=64,
        resize="stretch",
        resize_size=None,
        mean=mean,
        std=std,
        weights="none",
        weights_kind="none",
        max_candidates=10,
    )


def test_batched_results_equal_solo_results_in_order(classifier: Runner) -> None:
    samples = [_sample(f"id{i}", _pixels(i)) for i in range(6)]
    batched = classifier.run(samples)
    for sample, out in zip(samples, batched, strict=True):
        solo = classifier.run([sample])[0]
        assert isinstance(out, RawOutput) and isinstance(solo, RawOutput)
        assert out.item_id == sample.item_id and out.batch_size == 6 and solo.batch_size == 1
        np.testing.assert_array_equal(out.arrays["class_ids"][:3], solo.arrays["class_ids"][:3])
        np.testing.assert_allclose(out.arrays["scores"], solo.arrays["scores"], atol=1e-5)
    # The images really produce different answers, so a swap would show.
    firsts = {
        tuple(np.round(o.arrays["scores"][:3], 4)) for o in batched if isinstance(o, RawOutput)
    }
    assert len(firsts) == len(samples)


def test_normalisation_happens_on_the_device_from_uint8(classifier: Runner) -> None:
    pixels = _pixels(3)
    expected_input = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    with torch.inference_mode():
        expected = torch.softmax(classifier.module(expected_input[None]), dim=1)[0]
    out = classifier.run([_sample("x", pixels)])[0]
    assert isinstance(out, RawOutput)
    np.testing.assert_allclose(
        out.arrays["scores"], expected.sort(descending=True).values.numpy(), atol=1e-5
    )


def test_mixed_shapes_run_as_same_shape_sub_batches(classifier: Runner) -> None:
    samples = [
        _sample("a", _pixels(1, 64)),
        _sample("b", _pixels(2, 96)),
        _sample("c", _pixels(3, 64)),
    ]
    outs = classifier.run(samples)
    assert [o.item_id for o in outs] == ["a", "b", "c"]
    assert [o.batch_size for o in outs if isinstance(o, RawOutput)] == [2, 1, 2]


class _FailsOnLargeBatches(nn.Module):
    """Raises like an out-of-memory error above `limit` items, and always on a poisoned image."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.calls: list[int] = []
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise RuntimeError("CUDA out of memory (simulated)")
        if bool((x.mean(dim=(1, 2, 3)) > 1.9).any()):
            raise RuntimeError("poisoned input")
        return self.head(x.mean(dim=(2, 3)))


def test_batch_wide_failure_is_retried_in_halves_before_any_item_fails() -> None:
    module = _FailsOnLargeBatches(limit=2)
    runner = Runner(module, classifier_settings((0.0,) * 3, (1.0,) * 3), torch.device("cpu"))
    outs = runner.run([_sample(str(i), _pixels(i, 8)) for i in range(8)])
    assert all(isinstance(o, RawOutput) for o in outs)
    assert [o.item_id for o in outs] == [str(i) for i in range(8)]
    assert module.calls == [8, 4, 2, 2, 4, 2, 2]


def test_an_item_that_fails_alone_gets_its_own_error() -> None:
    module = _FailsOnLargeBatches(limit=100)
    runner = Runner(module, classifier_settings((0.0,) * 3, (0.5,) * 3), torch.device("cpu"))
    poisoned = np.full((8, 8, 3), 255, dtype=np.uint8)  # normalises to 2.0, over the poison mark
    samples = [
        _sample("ok0", _pixels(0, 8)),
        _sample("bad", poisoned),
        _sample("ok1", _pixels(1, 8)),
    ]
    outs = runner.run(samples)
    assert isinstance(outs[0], RawOutput) and isinstance(outs[2], RawOutput)
    assert isinstance(outs[1], ItemError) and outs[1].status == 500 and outs[1].item_id == "bad"


# --- precision and memory format (the model spec's `precision`, `channels_last`) ------------


def _shapes_detector(**options: object) -> tuple[Runner, ModelSpec]:
    spec = ModelSpec(
        name="shapes.model:build_detector", weights="shapes/shapes_detector.pt", **options
    )
    return Runner.for_model(spec, resolve(spec), torch.device("cpu")), spec


def _scenes() -> list[Sample]:
    spec = ModelSpec(name="shapes.model:build_detector", weights="shapes/shapes_detector.pt")
    r = resolve(spec)
    resize = ResizeSpec(r.resize, r.input_width, r.input_height, r.resize_size, spec.pad_value)
    limits = settings.limits(max_image_bytes=1 << 26, max_pixels=1 << 26)
    out = []
    for seed in range(4):
        done = decode(generate(seed, fmt="PNG").data, resize, limits)
        meta = Meta(str(seed), "req", done.image, done.geometry, Options())
        out.append(Sample(meta=meta, pixels=done.pixels))
    return out


def _detections(runner: Runner, samples: list[Sample]) -> list[list[Prediction]]:
    task = tasks.get("detection")
    options = {"score_threshold": 0.5, "max_detections": 100}
    found = []
    for sample, raw in zip(samples, runner.run(samples), strict=True):
        assert isinstance(raw, RawOutput)
        for name, array in raw.arrays.items():  # float32 to the task, whatever the precision
            assert array.dtype in (np.float32, np.int64), (name, array.dtype)
        found.append(list(task.answer(raw.arrays, sample.meta, (), options)[0]))
    return found


def test_bfloat16_autocast_on_cpu_finds_the_same_objects() -> None:
    samples = _scenes()
    full, _ = _shapes_detector()
    half, _ = _shapes_detector(precision="bfloat16")
    assert half.precision == "bfloat16"
    compared = 0
    found = zip(samples, _detections(full, samples), _detections(half, samples), strict=True)
    for sample, a, b in found:
        assert sorted(p.class_id for p in a) == sorted(p.class_id for p in b)
        scale = sample.meta.geometry.scale_x  # displayed -> model-input pixels
        for p in a:
            q = min(b, key=lambda q: _distance(p, q))
            # Measured: boxes within 0.9 input pixels, scores within 0.003.
            assert _distance(p, q) * scale < 2.0 and abs(p.score - q.score) < 0.05
            compared += 1
    assert compared >= 4


def _distance(p: Prediction, q: Prediction) -> float:
    if p.class_id != q.class_id or p.box is None or q.box is None:
        return 1e9
    return float(np.abs(np.subtract(p.box, q.box)).max())


def test_float16_is_refused_on_a_cpu_replica_naming_the_setting() -> None:
    with pytest.raises(ModelLoadError, match="precision float16 needs a CUDA replica"):
        _shapes_detector(precision="float16")


def test_an_unknown_precision_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="precision"):
        ModelSpec(precision="float8")  # type: ignore[arg-type]


def test_channels_last_converts_the_weights_and_answers_the_same() -> None:
    samples = _scenes()
    plain, _ = _shapes_detector()
    converted, _ = _shapes_detector(channels_last=True)
    conv = next(m for m in converted.module.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    for a, b in zip(plain.run(samples), converted.run(samples), strict=True):
        assert isinstance(a, RawOutput) and isinstance(b, RawOutput)
        for name in a.arrays:
            np.testing.assert_allclose(a.arrays[name], b.arrays[name], atol=1e-3, rtol=1e-4)


def test_as_float32_reaches_into_torchvision_output_containers() -> None:
    boxes, labels = torch.ones(2, 4, dtype=torch.bfloat16), torch.ones(2, dtype=torch.int64)
    out = as_float32([{"boxes": boxes, "labels": labels}])
    assert out[0]["boxes"].dtype == torch.float32 and out[0]["labels"].dtype == torch.int64
    logits = as_float32(torch.zeros(1, 3, dtype=torch.float16))
    assert logits.dtype == torch.float32
    seg = as_float32({"out": torch.zeros(1, 2, 4, 4, dtype=torch.bfloat16)})
    assert seg["out"].dtype == torch.float32


def test_compile_warms_up_two_graphs_that_every_batch_size_then_reuses() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    settings = replace(classifier_settings((0.5,) * 3, (0.25,) * 3), max_candidates=8)
    eager = Runner(module, settings, torch.device("cpu"))
    compiled = Runner(module, settings, torch.device("cpu"), compile=True)
    compiled.warm_up([1], 16, 16)  # what the Model does at start: batch 1, and 2 with it
    assert counters["stats"]["unique_graphs"] == 2
    for n in (3, 5, 8, 1):
        samples = [_sample(f"{n}-{i}", _pixels(i, 16)) for i in range(n)]
        for a, b in zip(eager.run(samples), compiled.run(samples), strict=True):
            assert isinstance(a, RawOutput) and isinstance(b, RawOutput)
            np.testing.assert_allclose(a.arrays["scores"], b.arrays["scores"], atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 2  # no batch size compiled again
    torch._dynamo.reset()
