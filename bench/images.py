"""Photographic-looking JPEGs made from seeds, with the quality tuned to hit a file size.

Real photos compress to about 3-4 bits per pixel at the quality cameras and phones use; flat
synthetic pictures compress ten times better, which would flatter the decoder and the HTTP path.
So each picture has what makes photos expensive: smooth multi-scale noise (textures, sky), soft
gradients (light), overlapping shapes with shading (objects), a slight blur (optics) and sensor
grain, and its JPEG quality is bisected until the file is within a few percent of the target.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (width, height, target KB). 640x480 at ~150 KB is the target configuration; the others make a
# mix of the sizes that clients send (thumbnails, phone photos downscaled or not).
TARGET_SIZE = (640, 480, 150)
MIXED_SIZES = ((320, 240, 45), (640, 480, 150), (1280, 960, 450), (1920, 1080, 700))


@dataclass(frozen=True, slots=True)
class Jpeg:
    name: str
    width: int
    height: int
    quality: int
    data: bytes

    @property
    def kb(self) -> float:
        return len(self.data) / 1000.0


def _smooth_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    out = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((3, 55.0), (12, 28.0), (48, 14.0), (192, 6.0)):
        gw = max(2, width * cells // 640)
        gh = max(2, height * cells // 640)
        small = rng.normal(0.0, 1.0, size=(gh, gw, 3)).astype(np.float32)
        for c in range(3):
            layer = Image.fromarray(small[..., c]).resize((width, height), Image.Resampling.BICUBIC)
            out[..., c] += np.asarray(layer) * amplitude
    return out


def picture(width: int, height: int, seed: int, grain: float = 6.0) -> Image.Image:
    """A distinctive, photo-like RGB picture for `seed`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tilt = rng.uniform(-1.0, 1.0, size=(2, 3)).astype(np.float32)
    base = rng.uniform(70.0, 180.0, size=3).astype(np.float32)
    arr = (
        base
        + _smooth_noise(rng, width, height)
        + xx[..., None] / width * tilt[0] * 80.0
        + yy[..., None] / height * tilt[1] * 80.0
    )
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    scale = min(width, height)
    for _ in range(int(rng.integers(6, 14))):
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.04, 0.22) * scale
        colour = (*(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(120, 230)))
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r], fill=colour)
        else:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = r * rng.uniform(0.5, 1.2, n)
            points = [
                (float(cx + rr * np.cos(a)), float(cy + rr * np.sin(a)))
                for a, rr in zip(angles, radii, strict=True)
            ]
            draw.polygon(points, fill=colour)
        img = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    noisy = (
        np.asarray(img, dtype=np.float32)
        + rng.normal(0.0, grain, size=(height, width, 1)).astype(np.float32)
        + rng.normal(0.0, grain / 2, size=(height, width, 3)).astype(np.float32)
    )
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_near(img: Image.Image, target_bytes: int) -> tuple[int, bytes]:
    """The JPEG quality (30..98) whose file is closest to `target_bytes`, and that file."""
    low, high = 30, 98
    best = (low, _encode(img, low))
    while low <= high:
        q = (low + high) // 2
        data = _encode(img, q)
        if abs(len(data) - target_bytes) < abs(len(best[1]) - target_bytes):
            best = (q, data)
        if len(data) < target_bytes:
            low = q + 1
        else:
            high = q - 1
    return best


def make_set(sizes: tuple[tuple[int, int, int], ...], per_size: int, seed: int = 0) -> list[Jpeg]:
    """`per_size` distinct JPEGs for each (width, height, KB), interleaved so sizes alternate."""
    out: list[Jpeg] = []
    for i in range(per_size):
        for j, (w, h, kb) in enumerate(sizes):
            s = seed * 100_003 + i * 97 + j
            quality, data = jpeg_near(picture(w, h, s), kb * 1000)
            out.append(Jpeg(name=f"{w}x{h}-{i}", width=w, height=h, quality=quality, data=data))
    return out


def multipart_body(images: list[bytes], boundary: str) -> bytes:
    """A multipart/form-data body with one file part named `image` per image."""
    chunks: list[bytes] = []
    for i, data in enumerate(images):
        chunks.append(
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="image"; filename="img{i}.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode("latin-1")
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("latin-1"))
    return b"".join(chunks)
