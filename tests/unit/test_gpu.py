"""The batch runner on CUDA answers like it does on the CPU. Skipped where there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from deployments.geometry import plan
from deployments.inference import Runner, pick_device
from deployments.types import ImageInfo, Meta, Options, RawOutput, Sample
from tests.unit.test_inference import classifier_settings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
        meta = Meta(
            str(i),
            "req",
            ImageInfo(224, 224, "PNG"),
            plan("stretch", 224, 224, 224, 224),
            Options(),
        )
        out.append(Sample(meta=meta, pixels=pixels))
    return out


def test_cuda_is_picked_and_matches_the_cpu() -> None:
    assert pick_device().type == "cuda"
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cpu = Runner(module, classifier_settings(mean, std), torch.device("cpu")).run(_samples(8))
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10).eval()
    gpu = Runner(module, classifier_settings(mean, std), torch.device("cuda")).run(_samples(8))
    for a, b in zip(cpu, gpu, strict=True):
        assert isinstance(a, RawOutput) and isinstance(b, RawOutput)
        assert a.item_id == b.item_id
        np.testing.assert_allclose(
            np.sort(a.arrays["scores"]), np.sort(b.arrays["scores"]), atol=2e-3
        )
