"""Tiny files that claim thin, huge images: refused or decoded fast, never a large allocation.

Issue 9: a 118-byte 1x20000 PNG sent to resize_crop planned a 232x4640000 resize (12 GB). Every
resize mode and every shipped config must answer such an image with a 4xx or a valid result,
within a second, without the process's peak memory growing by more than a few megabytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from PIL import Image

from deployments import errors
from deployments.pixels.imaging import Preprocessed, ResizeSpec, decode, plan_decode
from deployments.runtime.model_source import resolve
from deployments.settings import Limits
from graph import AppArgs, decode_settings
from tests import images, settings
from tests.serving import ROOT, load_config

T = TypeVar("T")
# Loose on purpose (a loaded 2-core CI machine): the memory bound is the tight check.
MAX_SECONDS = 5.0
MAX_GROWTH_MB = 50.0
SHAPES = [(1, 20_000), (1, 200_000), (200_000, 1)]
LIMITS = settings.limits()


def _encoded(width: int, height: int, fmt: str, mode: str = "RGB") -> bytes:
    img = Image.new(mode, (width, height), 200 if mode in ("I;16", "F") else (40, 90, 200))
    return images.encode(img, fmt, **({"compression": "tiff_deflate"} if fmt == "TIFF" else {}))


# (name, bytes): PNG for every shape, then the other decoders and the 16-bit / float paths.
HOSTILE = [(f"png {w}x{h}", _encoded(w, h, "PNG")) for w, h in SHAPES] + [
    ("jpeg 1x20000", _encoded(1, 20_000, "JPEG")),
    ("jpeg 20000x1", _encoded(20_000, 1, "JPEG")),
    ("gif 1x20000", _encoded(1, 20_000, "GIF")),
    ("tiff 1x200000", _encoded(1, 200_000, "TIFF")),
    ("16-bit png 1x200000", _encoded(1, 200_000, "PNG", "I;16")),
    ("float tiff 200000x1", _encoded(200_000, 1, "TIFF", "F")),
]

MODES = {
    "letterbox": ResizeSpec(mode="letterbox", input_width=640, input_height=640),
    "resize_crop": ResizeSpec(
        mode="resize_crop", input_width=224, input_height=224, resize_size=232
    ),
    "stretch": ResizeSpec(mode="stretch", input_width=640, input_height=640),
}
CONFIGS = [ROOT / "serve_config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


def _served(path: Path) -> tuple[ResizeSpec, Limits]:
    """The ResizeSpec and Limits a config serves with, built as graph.build_app builds them.

    `resolve` reads weights metadata (torchvision's transforms, offline) and never loads weights.
    """
    args = AppArgs.model_validate(load_config(path)["applications"][0]["args"])
    return decode_settings(args, resolve(args.model))


def _memory_kb() -> dict[str, int]:
    lines = Path("/proc/self/status").read_text().splitlines()
    fields = (line.split(":", 1) for line in lines)
    return {k: int(v.split()[0]) for k, v in fields if k.startswith("Vm")}


def _peak_growth_mb(fn: Callable[[], T]) -> tuple[T, float]:
    """Run `fn`; how far the peak resident memory rose above where it started, in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")
    before = _memory_kb()["VmRSS"]
    value = fn()
    return value, (_memory_kb()["VmHWM"] - before) / 1024


def _refused_or_valid(data: bytes, spec: ResizeSpec, limits: Limits) -> None:
    def attempt() -> Preprocessed | errors.ClientError:
        try:
            return decode(data, spec, limits)
        except errors.ClientError as exc:
            return exc

    start = time.perf_counter()
    outcome, growth = _peak_growth_mb(attempt)
    elapsed = time.perf_counter() - start
    if isinstance(outcome, errors.ClientError):
        assert 400 <= outcome.status < 500
        assert isinstance(outcome, errors.TooManyPixels), outcome.message
        assert "limit is" in outcome.message and "aspect ratio" in outcome.message
    else:
        assert outcome.pixels.shape == (spec.input_height, spec.input_width, 3)
    assert elapsed < MAX_SECONDS, f"took {elapsed:.2f} s"
    assert growth < MAX_GROWTH_MB, f"peak memory grew by {growth:.0f} MB"


def test_the_memory_meter_sees_an_allocation() -> None:
    _, growth = _peak_growth_mb(lambda: np.ones(100 * 2**20, dtype=np.uint8).sum())
    assert growth > 90


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "data"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_resize_mode_bounds_a_thin_image(name: str, data: bytes, mode: str) -> None:
    assert len(data) < 8192, f"{name} should be a tiny file, is {len(data)} bytes"
    _refused_or_valid(data, MODES[mode], LIMITS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
@pytest.mark.parametrize(("name", "data"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_shipped_config_bounds_a_thin_image(name: str, data: bytes, path: Path) -> None:
    spec, limits = _served(path)
    _refused_or_valid(data, spec, limits)


def test_the_imagenet_config_is_the_one_from_the_issue() -> None:
    spec, limits = _served(ROOT / "configs" / "resnet50_imagenet.yaml")
    assert (spec.mode, spec.input_width, spec.resize_size) == ("resize_crop", 224, 232)
    with pytest.raises(errors.TooManyPixels, match=r"232x4640000 = 1076\.5 megapixels") as caught:
        decode(_encoded(1, 20_000, "PNG"), spec, limits)
    assert caught.value.status == 413
    assert "the limit is 40.0 megapixels" in caught.value.message


@pytest.mark.parametrize("orientation", [1, 6])
def test_the_suggested_aspect_ratio_passes_and_one_more_is_refused(orientation: int) -> None:
    spec = MODES["resize_crop"]
    limits = settings.limits(max_pixels=1_000_000)  # 232 x 232 x 18 fits; x 19 does not
    with pytest.raises(errors.TooManyPixels, match=r"at most 18:1") as caught:
        plan_decode(1, 19, orientation, spec, limits)
    assert "1.0 megapixels" in caught.value.message
    planned = plan_decode(1, 18, orientation, spec, limits)
    assert planned.resized == (232, 4176)  # in stored orientation, whichever way it is shown
    assert limits.max_pixels >= 232 * 4176


def test_the_model_input_is_allowed_even_above_the_pixel_limit() -> None:
    """The input size is the config's choice, not the image's: only what an image adds counts."""
    spec = ResizeSpec(mode="stretch", input_width=640, input_height=640)
    out = decode(images.png(64, 48), spec, settings.limits(max_pixels=64 * 48))
    assert out.pixels.shape == (640, 640, 3)
