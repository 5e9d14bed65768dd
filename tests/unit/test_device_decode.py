"""gpu_decode on the CPU device: the same code a GPU replica runs, against the CPU decode path.

The Preprocessor reads a JPEG's header and plans it (`imaging.prepare`); the Model decodes it with
`torchvision.io.decode_jpeg` on its device and places it (`device_decode`). Measured against
Pillow's path (`imaging.decode`): with `draft` off, every pixel within 1 (mean < 0.25: the two
round the bilinear filter differently); with `draft` on, as served, Pillow first decodes a large
JPEG at 1/2..1/8 scale, so pixels differ more (mean < 1.5, a few edge pixels up to ~30) while
every answer below stays the same.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from deployments import errors, tasks
from deployments.items import ItemError, Jpeg, Meta, Options, RawOutput, Sample
from deployments.pixels.imaging import Deferred, Preprocessed, ResizeSpec, decode, prepare
from deployments.runtime.device_decode import decode_batch, upright
from deployments.runtime.inference import Runner
from deployments.runtime.model_source import resolve
from deployments.runtime.spec import ModelSpec
from shapes.generate import generate
from tests import images, settings

LIMITS = settings.limits()
CPU = torch.device("cpu")
MODES = [
    ResizeSpec(mode="letterbox", input_width=384, input_height=320, pad_value=114, draft=False),
    ResizeSpec(mode="resize_crop", input_width=224, input_height=224, resize_size=256, draft=False),
    ResizeSpec(mode="stretch", input_width=300, input_height=200, draft=False),
]
EXIF_ORIENTATION = 0x0112


def _jpeg(img: Image.Image, orientation: int = 1, quality: int = 92) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def _deferred(data: bytes, spec: ResizeSpec) -> Deferred:
    out = prepare(data, replace(spec, gpu_decode=True), LIMITS)
    assert isinstance(out, Deferred)
    return out


def _on_device(deferred: Deferred) -> np.ndarray:
    (placed,) = decode_batch([deferred.jpeg], [deferred.geometry], CPU)
    assert isinstance(placed, torch.Tensor) and placed.dtype == torch.uint8
    return placed.numpy()


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_like_pillow_exif_transpose(orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    img = Image.fromarray(stored)
    img.info["exif"] = exif.tobytes()
    expected = np.asarray(_exif_transpose(img))
    turned = upright(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0)
    np.testing.assert_array_equal(turned.numpy(), expected)


def _exif_transpose(img: Image.Image) -> Image.Image:
    from PIL import ImageOps

    out = ImageOps.exif_transpose(img)
    assert out is not None
    return out


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("spec", MODES, ids=[m.mode for m in MODES])
def test_device_decode_matches_the_cpu_path(spec: ResizeSpec, orientation: int) -> None:
    data = _jpeg(images.picture(333, 217, seed=orientation), orientation)
    cpu = decode(data, spec, LIMITS)
    deferred = _deferred(data, spec)
    # Metadata is born from the same header and plan: identical, not merely close.
    assert deferred.image == cpu.image and deferred.geometry == cpu.geometry
    assert deferred.image.orientation == orientation
    assert deferred.jpeg.orientation == orientation and deferred.jpeg.data == data
    diff = _difference(_on_device(deferred), cpu.pixels)
    assert diff.max() <= 1 and diff.mean() < 0.25


@pytest.mark.parametrize("spec", MODES, ids=[m.mode for m in MODES])
def test_with_jpeg_draft_pixels_stay_close(spec: ResizeSpec) -> None:
    # 1600x1200 is large enough for Pillow to decode it at 1/2 or 1/4 scale first.
    data = _jpeg(images.picture(1600, 1200, seed=3), orientation=6)
    drafted = replace(spec, draft=True)
    cpu = decode(data, drafted, LIMITS)
    deferred = _deferred(data, drafted)
    assert deferred.geometry == cpu.geometry
    assert _difference(_on_device(deferred), cpu.pixels).mean() < 1.5


def test_png_and_cmyk_jpeg_keep_cpu_pixels_grey_jpeg_goes_to_the_device() -> None:
    spec = replace(MODES[0], gpu_decode=True)
    for data in (images.png(96, 64), images.cmyk_jpeg()):
        out = prepare(data, spec, LIMITS)
        assert isinstance(out, Preprocessed)
        np.testing.assert_array_equal(out.pixels, decode(data, spec, LIMITS).pixels)
    grey = images.gray_jpeg()
    deferred = _deferred(grey, MODES[0])
    assert _difference(_on_device(deferred), decode(grey, MODES[0], LIMITS).pixels).max() <= 1


def test_without_gpu_decode_prepare_is_decode() -> None:
    data = images.jpeg(320, 240)
    out = prepare(data, MODES[1], LIMITS)
    assert isinstance(out, Preprocessed)
    np.testing.assert_array_equal(out.pixels, decode(data, MODES[1], LIMITS).pixels)


def test_limits_are_enforced_from_the_header_before_anything_travels() -> None:
    spec = replace(MODES[0], gpu_decode=True)
    data = images.jpeg(320, 240)
    with pytest.raises(errors.PayloadTooLarge):
        prepare(data, spec, settings.limits(max_image_bytes=len(data) - 1))
    with pytest.raises(errors.TooManyPixels):
        prepare(data, spec, settings.limits(max_pixels=320 * 240 - 1))
    with pytest.raises(errors.CorruptImage):
        prepare(b"\xff\xd8\xff" + b"\x00" * 64, spec, LIMITS)


def test_a_truncated_jpeg_is_refused_in_the_preprocessor_as_pillow_refuses_it() -> None:
    spec = replace(MODES[0], gpu_decode=True)
    whole = images.jpeg(320, 240)
    for cut in (images.truncated_jpeg(), whole[:-2], whole[:-10]):
        with pytest.raises(errors.CorruptImage, match="end-of-image marker"):
            prepare(cut, spec, LIMITS)
        with pytest.raises(errors.CorruptImage):
            decode(cut, spec, LIMITS)
    assert isinstance(prepare(whole + b"trailing bytes", spec, LIMITS), Deferred)  # as Pillow


def test_a_body_that_fails_to_decode_is_its_own_error() -> None:
    good = [_deferred(images.jpeg(320, 240, seed=s), MODES[0]) for s in (1, 2)]
    bad = _deferred(images.bad_huffman_jpeg(), MODES[0])  # its header reads fine
    batch = [good[0], bad, good[1]]
    placed = decode_batch([d.jpeg for d in batch], [d.geometry for d in batch], CPU)
    assert isinstance(placed[0], torch.Tensor) and isinstance(placed[2], torch.Tensor)
    assert isinstance(placed[1], errors.CorruptImage) and placed[1].status == 422
    assert "Huffman" in placed[1].message and "re-encoded" in placed[1].message
    with pytest.raises(errors.CorruptImage):
        decode(images.bad_huffman_jpeg(), MODES[0], LIMITS)  # Pillow refuses it too


def test_a_size_other_than_the_headers_is_corrupt() -> None:
    deferred = _deferred(images.jpeg(320, 240), MODES[0])
    lying = replace(deferred.jpeg, stored=(321, 240))
    (placed,) = decode_batch([lying], [deferred.geometry], CPU)
    assert isinstance(placed, errors.CorruptImage) and "321x240" in placed.message


# --- the Runner: a batch with device-decoded JPEGs ------------------------------------------


def _meta(item_id: str, out: Preprocessed | Deferred) -> Meta:
    return Meta(item_id, "req", out.image, out.geometry, Options())


def _samples(data: list[bytes], spec: ResizeSpec, gpu_decode: bool) -> list[Sample]:
    samples = []
    for i, d in enumerate(data):
        out = prepare(d, replace(spec, gpu_decode=gpu_decode), LIMITS)
        pixels = out.jpeg if isinstance(out, Deferred) else out.pixels
        samples.append(Sample(_meta(f"item{i}", out), pixels))
    return samples


def _resize_spec(spec: ModelSpec) -> ResizeSpec:
    r = resolve(spec)
    return ResizeSpec(r.resize, r.input_width, r.input_height, r.resize_size, spec.pad_value)


@pytest.fixture(scope="module")
def detector() -> tuple[Runner, ModelSpec]:
    spec = ModelSpec(name="shapes.model:build_detector", weights="shapes/shapes_detector.pt")
    return Runner.for_model(spec, resolve(spec), CPU), spec


def test_shipped_detector_answers_the_same_from_device_decoded_jpegs(
    detector: tuple[Runner, ModelSpec],
) -> None:
    runner, spec = detector
    scenes = [generate(seed, fmt="JPEG", orientation=(1, 3, 6, 8)[seed % 4]) for seed in range(8)]
    data = [s.data for s in scenes]
    resize = _resize_spec(spec)
    cpu = runner.run(_samples(data, resize, gpu_decode=False))
    device = runner.run(_samples(data, resize, gpu_decode=True))
    task, labels = tasks.get("detection"), resolve(spec).labels
    options = {"score_threshold": 0.5, "max_detections": 100}
    compared = 0
    for sample, a, b in zip(_samples(data, resize, True), cpu, device, strict=True):
        assert isinstance(a, RawOutput) and isinstance(b, RawOutput)
        assert a.item_id == b.item_id == sample.item_id and b.batch_size == 8
        assert all(v.dtype != np.float16 for v in b.arrays.values())
        mine, _ = task.answer(b.arrays, sample.meta, labels, options)
        theirs, _ = task.answer(a.arrays, sample.meta, labels, options)
        # The same objects (near-equal scores may swap places in the order).
        assert sorted(p.label for p in mine) == sorted(p.label for p in theirs)
        for p in theirs:
            assert p.box is not None
            q = min(mine, key=lambda q: _box_distance(p.box, q.box) if p.label == q.label else 1e9)
            # Within a model-input pixel or so (a displayed pixel is `scale` of one); Pillow's
            # draft decode of these 1000-4000 px scenes accounts for most of the difference.
            scale = max(sample.meta.geometry.scale_x, sample.meta.geometry.scale_y)
            assert _box_distance(p.box, q.box) * scale < 1.5  # measured: at most 0.9
            assert abs(p.score - q.score) < 0.1  # measured: at most 0.07
            compared += 1
    assert compared >= 8  # the scenes hold objects the detector finds


def _box_distance(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> float:
    assert a is not None and b is not None
    return float(np.abs(np.subtract(a, b)).max())


def test_seeded_resnet18_logits_match_the_cpu_path() -> None:
    spec = ModelSpec(name="resnet18", weights="none", seed=0)
    resolved = resolve(spec)
    runner = Runner.for_model(spec, resolved, CPU)
    data = [_jpeg(images.picture(640, 480, seed=s), orientation=1 + s) for s in range(4)]
    resize = replace(_resize_spec(spec), draft=True)  # as served (jpeg_draft: true)

    def logits(pixels: np.ndarray) -> torch.Tensor:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (resolved.mean, resolved.std))
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.inference_mode():
            out: torch.Tensor = runner.module(x)
        return out

    cpu = logits(np.stack([decode(d, resize, LIMITS).pixels for d in data]))
    device = logits(np.stack([_on_device(_deferred(d, resize)) for d in data]))
    assert cpu.std() > 0.5  # logits spread enough for the bound below to mean something
    assert torch.equal(cpu.argmax(dim=1), device.argmax(dim=1))
    assert (cpu - device).abs().max() < 0.01  # measured: 0.001
    # And through the Runner, as the Model runs them: the same top-5, scores within 0.5 %.
    for a, b in zip(
        runner.run(_samples(data, resize, gpu_decode=False)),
        runner.run(_samples(data, resize, gpu_decode=True)),
        strict=True,
    ):
        assert isinstance(a, RawOutput) and isinstance(b, RawOutput)
        np.testing.assert_array_equal(a.arrays["class_ids"][:5], b.arrays["class_ids"][:5])
        np.testing.assert_allclose(a.arrays["scores"][:5], b.arrays["scores"][:5], rtol=5e-3)


def test_a_corrupt_jpeg_fails_alone_and_png_shares_the_forward_pass(
    detector: tuple[Runner, ModelSpec],
) -> None:
    runner, spec = detector
    resize = _resize_spec(spec)
    data = [
        generate(1, fmt="JPEG").data,
        images.bad_huffman_jpeg(),
        generate(2, fmt="PNG").data,
        generate(3, fmt="JPEG").data,
    ]
    samples = _samples(data, resize, gpu_decode=True)
    assert [type(s.pixels) for s in samples] == [Jpeg, Jpeg, np.ndarray, Jpeg]
    outs = runner.run(samples)
    assert [o.item_id for o in outs] == [s.item_id for s in samples]
    bad = outs[1]
    assert isinstance(bad, ItemError) and bad.status == 422 and bad.code == "corrupt_image"
    good = [o for o in outs if isinstance(o, RawOutput)]
    assert len(good) == 3 and {o.batch_size for o in good} == {3}  # one pass, PNG included
    alone = runner.run([samples[2]])[0]
    assert isinstance(alone, RawOutput)
    np.testing.assert_allclose(good[1].arrays["scores"], alone.arrays["scores"], atol=1e-4)
