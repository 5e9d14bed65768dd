"""Synthetic-shapes image generator: deterministic per seed, exact boxes, encoded like uploads.

Boxes are xyxy in displayed pixels (after EXIF orientation) with pixel i spanning [i, i + 1).
Shapes are drawn with anti-aliased edges from signed distances clipped to the shape's box, so no
pixel outside the box is touched and the box is the true geometric extent. The semantic label map
(`GeneratedImage.labels`) gives a pixel a shape's class when that shape covers at least half of it.

Colours: most objects differ from the background in brightness; `LOW_CONTRAST_FRACTION` of them
have about the background's brightness and differ in colour (hue) only. Each object records its
brightness contrast: the smallest |Rec. 601 luma difference| between its colour and the noise-free
background colours under its box.

CLI: ``python -m shapes.generate --out DIR --count N --seed S`` writes image ``i`` from seed
``S + i``, plus ``annotations.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from shapes import CATEGORIES
from shapes.metrics import Box, GroundTruth

MIN_SIDE = 64
MAX_SIDE = 4096
MAX_ASPECT = 4.0
MIN_OBJECT_FRACTION = 0.08
MAX_OBJECT_FRACTION = 0.40
MAX_OBJECTS = 5
MIN_COLOUR_DISTANCE = 100.0  # RGB Euclidean, from every background colour
MIN_LUMA_DIFFERENCE = 48.0  # Rec. 601 brightness, from every background colour
# Objects drawn near the background's brightness; about 0.36 get there (near-black and near-white
# backgrounds have no distinct colour of their brightness and fall back to brightness contrast).
LOW_CONTRAST_FRACTION = 0.4
MIN_HUE_DISTANCE = 120.0  # RGB Euclidean from every background colour, for low-contrast objects
MAX_GRADIENT_LUMA_RANGE = 96.0
_GAP = 2.0  # px between boxes, so anti-aliased edges of neighbours never share a pixel
_TRIANGLE_RATIO = math.sqrt(3) / 2  # height / side of an equilateral triangle
_ORIENTATION_TAG = 0x0112
# Transpose that turns the displayed image into the stored one; exif_transpose applies the inverse.
_STORE_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}

Colour = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Background:
    """Background recipe: ``solid`` (colour0), ``gradient`` (colour0 to colour1) or ``noise``."""

    kind: str
    colour0: Colour
    colour1: Colour
    angle: float
    noise_sigma: float
    noise_seed: int


@dataclasses.dataclass(frozen=True)
class Shape:
    """One filled shape to paint; `contrast` is its brightness contrast (see the module doc)."""

    label: str
    box: Box
    colour: Colour
    contrast: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything needed to render and encode one image (sizes are displayed)."""

    width: int
    height: int
    fmt: str
    quality: int | None
    orientation: int
    background: Background
    shapes: tuple[Shape, ...]


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
    """An encoded image file and its ground truth in displayed pixels."""

    data: bytes
    fmt: str
    width: int
    height: int
    orientation: int
    quality: int | None
    objects: tuple[GroundTruth, ...]
    scene: Scene

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Semantic label map, uint8 H x W in displayed pixels: 0 background, else class index + 1.

        Made on first use (a frozen dataclass may still cache through its `__dict__`), so
        detection-only callers never pay for it.
        """
        return label_map(self.scene)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _sample_size(rng: np.random.Generator) -> tuple[int, int]:
    """Log-uniform sizes with the extremes (64 px, 4096 px, 1:1, 4:1) each given real mass."""
    u, v, portrait = rng.random(), rng.random(), rng.random() < 0.5
    aspect = 1.0 if u < 0.15 else MAX_ASPECT if u < 0.3 else _log_uniform(rng, 1.0, MAX_ASPECT)
    if 0.1 <= v < 0.2:
        short_px, long_px = max(MIN_SIDE, math.ceil(MAX_SIDE / aspect - 1e-9)), MAX_SIDE
    else:
        short = MIN_SIDE if v < 0.1 else _log_uniform(rng, MIN_SIDE, MAX_SIDE / aspect)
        short_px = max(MIN_SIDE, int(short))
        long_px = max(short_px, min(MAX_SIDE, int(short_px * aspect)))
    return (short_px, long_px) if portrait else (long_px, short_px)


def _luma(colour: np.ndarray) -> np.ndarray:
    return np.asarray(colour @ np.array([0.299, 0.587, 0.114]))


def _sample_background(rng: np.random.Generator) -> Background:
    kind = ("solid", "gradient", "noise")[int(rng.integers(3))]
    c0 = rng.integers(0, 256, 3)
    c1 = c0
    if kind == "gradient":
        # A bounded brightness range leaves room for object colours that contrast with all of it.
        candidates = rng.integers(0, 256, (256, 3))
        ok = np.abs(_luma(candidates) - _luma(c0)) <= MAX_GRADIENT_LUMA_RANGE
        c1 = candidates[int(np.argmax(ok))] if ok.any() else c0
    return Background(
        kind=kind,
        colour0=(int(c0[0]), int(c0[1]), int(c0[2])),
        colour1=(int(c1[0]), int(c1[1]), int(c1[2])),
        angle=float(rng.uniform(0, 2 * math.pi)),
        noise_sigma=float(rng.uniform(3.0, 10.0)),
        noise_seed=int(rng.integers(2**31)),
    )


def _segment_distances(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of `points` from the segment a-b."""
    ab = b - a
    t = np.clip((points - a) @ ab / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.asarray(np.linalg.norm(points - (a + t[:, None] * ab), axis=1))


def background_luma_range(
    background: Background, width: int, height: int, box: Box
) -> tuple[float, float]:
    """Lowest and highest noise-free background brightness under `box`."""
    y0 = float(_luma(np.array(background.colour0, dtype=np.float64)))
    if background.kind != "gradient":
        return y0, y0
    y1 = float(_luma(np.array(background.colour1, dtype=np.float64)))
    # The ramp is linear, so its extremes under a box are at the box's corners.
    ts = [
        _gradient_t(background.angle, width, height, x, y)
        for x in (box[0], box[2])
        for y in (box[1], box[3])
    ]
    values = [y0 + (y1 - y0) * min(1.0, max(0.0, t)) for t in ts]
    return min(values), max(values)


def _gradient_t(angle: float, width: int, height: int, x: float, y: float) -> float:
    """Position along the gradient (0 at colour0, 1 at colour1) of displayed point (x, y)."""
    ux, uy = math.cos(angle), math.sin(angle)
    extent = abs(width * ux) + abs(height * uy)
    return ((x - width / 2) * ux + (y - height / 2) * uy) / extent + 0.5


def brightness_contrast(colour: Colour, luma_range: tuple[float, float]) -> float:
    """Smallest |luma difference| between `colour` and a brightness in `luma_range`."""
    y = float(_luma(np.array(colour, dtype=np.float64)))
    return max(0.0, luma_range[0] - y, y - luma_range[1])


def _sample_colour(
    rng: np.random.Generator, background: Background, luma_range: tuple[float, float]
) -> Colour:
    """A colour that differs clearly from every colour the background takes.

    Clearly means far in RGB and, for most objects, far in brightness too. The rest
    (`LOW_CONTRAST_FRACTION`) take about the brightness of the background under their box (the
    luma difference is drawn, most of them below 16) and must then be farther in RGB
    (`MIN_HUE_DISTANCE`), so they differ in hue and saturation alone: JPEG keeps colour at half
    resolution, which the detector and segmenter must learn to live with. Where no such colour
    exists (near-black or near-white backgrounds) the object falls back to brightness contrast.
    """
    a = np.array(background.colour0, dtype=np.float64)
    b = np.array(background.colour1, dtype=np.float64)
    lo, hi = sorted((float(_luma(a)), float(_luma(b))))
    low_contrast = rng.random() < LOW_CONTRAST_FRACTION
    difference = float(rng.uniform(0.0, 16.0) if rng.random() < 0.6 else rng.uniform(16.0, 40.0))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    target = (luma_range[0] + luma_range[1]) / 2 + sign * difference
    for attempt in range(64):
        candidates = rng.integers(0, 256, (256, 3)).astype(np.float64)
        luma = _luma(candidates)
        distance = _segment_distances(candidates, a, b)
        if low_contrast and attempt < 8:
            ok = (np.abs(luma - target) <= 2.0) & (distance >= MIN_HUE_DISTANCE)
        else:
            ok = (distance >= MIN_COLOUR_DISTANCE) & (
                (luma <= lo - MIN_LUMA_DIFFERENCE) | (luma >= hi + MIN_LUMA_DIFFERENCE)
            )
        if ok.any():
            c = candidates[int(np.argmax(ok))]
            return (int(c[0]), int(c[1]), int(c[2]))
    raise RuntimeError(f"no colour contrasts with background {background}")


def _disjoint(box: Box, others: list[Box]) -> bool:
    return all(
        box[0] >= o[2] + _GAP
        or o[0] >= box[2] + _GAP
        or box[1] >= o[3] + _GAP
        or o[1] >= box[3] + _GAP
        for o in others
    )


def _sample_shapes(
    rng: np.random.Generator, width: int, height: int, background: Background
) -> tuple[Shape, ...]:
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    short = min(width, height)
    lo, hi = MIN_OBJECT_FRACTION * short, MAX_OBJECT_FRACTION * short
    shapes: list[Shape] = []
    boxes: list[Box] = []
    attempts = 0
    while len(shapes) < count and attempts < 400:
        attempts += 1
        label = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        # Later attempts draw smaller shapes so crowded images still reach their count.
        size = _log_uniform(rng, lo, hi if attempts < 100 else max(lo, hi / 2))
        h = size
        w = size / _TRIANGLE_RATIO if label == "triangle" else size
        x0 = float(rng.uniform(0, width - w))
        y0 = float(rng.uniform(0, height - h))
        box = (x0, y0, x0 + w, y0 + h)
        luma_range = background_luma_range(background, width, height, box)
        colour = _sample_colour(rng, background, luma_range)
        if _disjoint(box, boxes):
            boxes.append(box)
            contrast = brightness_contrast(colour, luma_range)
            shapes.append(Shape(label=label, box=box, colour=colour, contrast=contrast))
    return tuple(shapes)


def sample_scene(
    seed: int,
    *,
    width: int | None = None,
    height: int | None = None,
    fmt: str | None = None,
    orientation: int | None = None,
    quality: int | None = None,
) -> Scene:
    """Draw a scene from the domain distribution; given arguments override the draws."""
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")
    if fmt is not None and fmt not in ("JPEG", "PNG"):
        raise ValueError(f"fmt must be 'JPEG' or 'PNG', not {fmt!r}")
    if orientation is not None and orientation not in (1, 3, 6, 8):
        raise ValueError(f"orientation must be 1, 3, 6 or 8, not {orientation}")
    if fmt == "PNG" and orientation not in (None, 1):
        raise ValueError("only JPEG images carry an EXIF orientation here")
    rng = np.random.default_rng(seed)
    # Every draw happens whatever is overridden, so an override changes only its own aspect.
    drawn_w, drawn_h = _sample_size(rng)
    drawn_fmt = "JPEG" if rng.random() < 0.75 else "PNG"
    drawn_quality = 60 if rng.random() < 0.15 else int(rng.integers(60, 96))
    drawn_orientation = (1, 3, 6, 8)[int(rng.integers(4))] if rng.random() < 0.3 else 1
    width, height = (drawn_w, drawn_h) if width is None or height is None else (width, height)
    if not (1 <= width <= 16384 and 1 <= height <= 16384):
        raise ValueError(f"size {width}x{height} out of range")
    fmt = fmt or ("JPEG" if orientation not in (None, 1) else drawn_fmt)
    orientation = orientation or (drawn_orientation if fmt == "JPEG" else 1)
    background = _sample_background(rng)
    shapes = _sample_shapes(rng, width, height, background)
    return Scene(
        width=width,
        height=height,
        fmt=fmt,
        quality=(quality or drawn_quality) if fmt == "JPEG" else None,
        orientation=orientation,
        background=background,
        shapes=shapes,
    )


def render_background(scene: Scene) -> np.ndarray:
    """The background alone as uint8 HxWx3 (displayed orientation)."""
    bg, w, h = scene.background, scene.width, scene.height
    c0 = np.array(bg.colour0, dtype=np.float32)
    if bg.kind == "solid":
        return np.broadcast_to(c0.astype(np.uint8), (h, w, 3)).copy()
    if bg.kind == "noise":
        tile = 251  # odd, so the tiling never lines up with 8x8 JPEG blocks
        noise = np.random.default_rng(bg.noise_seed).normal(0.0, bg.noise_sigma, (tile, tile, 3))
        patch = np.clip(c0 + noise + 0.5, 0, 255).astype(np.uint8)
        reps = (-(-h // tile), -(-w // tile), 1)
        return np.ascontiguousarray(np.tile(patch, reps)[:h, :w])
    # Linear gradient across the whole image along `angle`. It is computed on a grid 8x coarser and
    # upsampled bilinearly (which reproduces a linear ramp), because full-size float maths is slow.
    ux, uy = math.cos(bg.angle), math.sin(bg.angle)
    extent = abs(w * ux) + abs(h * uy)
    sw, sh = -(-w // 8), -(-h // 8)
    tx = ((np.arange(sw) + 0.5) * (w / sw) - w / 2) * ux / extent
    ty = ((np.arange(sh) + 0.5) * (h / sh) - h / 2) * uy / extent + 0.5
    t = np.add.outer(ty, tx)[..., None]
    delta = np.array(bg.colour1, dtype=np.float64) - c0
    small = np.clip(c0 + delta * t + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)).copy()


def _coverage(shape: Shape, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of pixels centred at (xs, ys), clipped to the box."""
    x0, y0, x1, y1 = shape.box
    px = xs[None, :]
    py = ys[:, None]
    box_sd = np.maximum(np.maximum(x0 - px, px - x1), np.maximum(y0 - py, py - y1))
    if shape.label == "circle":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        sd = np.maximum(np.sqrt((px - cx) ** 2 + (py - cy) ** 2) - r, box_sd)
    elif shape.label == "triangle":
        side, h, cx = x1 - x0, y1 - y0, (x0 + x1) / 2
        # Outward normals of the slanted edges through the apex (cx, y0), each of length `side`.
        left = (-h * (px - cx) - side / 2 * (py - y0)) / side
        right = (h * (px - cx) - side / 2 * (py - y0)) / side
        sd = np.maximum(np.maximum(left, right), box_sd)
    else:
        sd = box_sd
    return np.clip(0.5 - sd, 0.0, 1.0).astype(np.float32)


def paint(canvas: np.ndarray, shape: Shape) -> None:
    """Blend one shape into a uint8 HxWx3 canvas in place."""
    x0, y0, x1, y1 = shape.box
    c0, c1 = max(0, math.floor(x0)), min(canvas.shape[1], math.ceil(x1))
    r0, r1 = max(0, math.floor(y0)), min(canvas.shape[0], math.ceil(y1))
    alpha = _coverage(shape, _centres(c0, c1), _centres(r0, r1))
    region = canvas[r0:r1, c0:c1]
    # Only edge pixels need blending; the interior (most of a big shape) is a plain fill.
    region[alpha >= 1.0] = shape.colour
    edge = np.nonzero((alpha > 0.0) & (alpha < 1.0))
    a = alpha[edge][:, None]
    under = region[edge].astype(np.float32)
    colour = np.array(shape.colour, dtype=np.float32)
    region[edge] = (under + (colour - under) * a + 0.5).astype(np.uint8)


def _centres(start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.float32) + np.float32(0.5)


def label_map(
    scene: Scene,
    xs: np.ndarray | None = None,
    ys: np.ndarray | None = None,
) -> np.ndarray:
    """Semantic labels (uint8, 0 background, else index in CATEGORIES + 1) sampled at points.

    By default the points are the displayed pixel centres, and a pixel takes a shape's label when
    the shape's anti-aliased coverage of it (as painted) is at least 0.5. Given `xs` (columns) and
    `ys` (rows), increasing displayed coordinates, the same rule is applied at those points: a
    label map for any resampling of the image, such as a model input's pixel centres.
    """
    xs = _centres(0, scene.width) if xs is None else np.asarray(xs, dtype=np.float32)
    ys = _centres(0, scene.height) if ys is None else np.asarray(ys, dtype=np.float32)
    labels = np.zeros((len(ys), len(xs)), dtype=np.uint8)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.box
        # Coverage is 0 beyond half a pixel outside the box; only points nearer can be labelled.
        c0, c1 = np.searchsorted(xs, x0 - 0.5), np.searchsorted(xs, x1 + 0.5, side="right")
        r0, r1 = np.searchsorted(ys, y0 - 0.5), np.searchsorted(ys, y1 + 0.5, side="right")
        inside = _coverage(shape, xs[c0:c1], ys[r0:r1]) >= 0.5
        labels[r0:r1, c0:c1][inside] = CATEGORIES.index(shape.label) + 1
    return labels


def render(scene: Scene) -> np.ndarray:
    """The displayed image as uint8 HxWx3."""
    canvas = render_background(scene)
    for shape in scene.shapes:
        paint(canvas, shape)
    return canvas


def encode(scene: Scene, pixels: np.ndarray) -> bytes:
    """Encode displayed pixels as the scene's file, stored rotated when it has an orientation."""
    image = Image.fromarray(pixels)
    buf = io.BytesIO()
    if scene.fmt == "PNG":
        # Level 1: PNG size is not under test, encoding time of 4096 px images is.
        image.save(buf, "PNG", compress_level=1)
        return buf.getvalue()
    exif = Image.Exif()
    if scene.orientation != 1:
        image = image.transpose(_STORE_TRANSPOSE[scene.orientation])
        exif[_ORIENTATION_TAG] = scene.orientation
    image.save(buf, "JPEG", quality=scene.quality, exif=exif.tobytes())
    return buf.getvalue()


def generate(
    seed: int,
    *,
    width: int | None = None,
    height: int | None = None,
    fmt: str | None = None,
    orientation: int | None = None,
    quality: int | None = None,
) -> GeneratedImage:
    """One encoded image and its ground truth; unspecified parameters come from the domain."""
    scene = sample_scene(
        seed, width=width, height=height, fmt=fmt, orientation=orientation, quality=quality
    )
    return GeneratedImage(
        data=encode(scene, render(scene)),
        fmt=scene.fmt,
        width=scene.width,
        height=scene.height,
        orientation=scene.orientation,
        quality=scene.quality,
        objects=tuple(
            GroundTruth(label=s.label, box=s.box, contrast=s.contrast) for s in scene.shapes
        ),
        scene=scene,
    )


def main(argv: list[str] | None = None) -> None:
    """Write ``count`` images and ``annotations.json`` into ``out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    annotations: dict[str, object] = {}
    for i in range(args.count):
        seed = args.seed + i
        image = generate(seed)
        name = f"{seed:08d}.{'jpg' if image.fmt == 'JPEG' else 'png'}"
        (args.out / name).write_bytes(image.data)
        annotations[name] = {
            "seed": seed,
            "width": image.width,
            "height": image.height,
            "format": image.fmt,
            "orientation": image.orientation,
            "quality": image.quality,
            "objects": [
                {"label": o.label, "box": list(o.box), "contrast": o.contrast}
                for o in image.objects
            ],
        }
    (args.out / "annotations.json").write_text(json.dumps(annotations, indent=1))


if __name__ == "__main__":
    main()
