"""Image files for tests, made from seeds: good ones of every mode, and every kind of bad one."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, distinctive RGB picture: a few colour blocks on a gradient, unique per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    grad = rng.uniform(-1, 1, size=(2, 3))
    arr = (
        base
        + xx[..., None] / max(width, 1) * grad[0] * 120
        + yy[..., None] / max(height, 1) * grad[1] * 120
    )
    for _ in range(4):
        x0, x1 = sorted(rng.integers(0, width, size=2))
        y0, y1 = sorted(rng.integers(0, height, size=2))
        arr[y0 : y1 + 1, x0 : x1 + 1] = rng.uniform(0, 255, size=3)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(width: int = 320, height: int = 240, seed: int = 0, quality: int = 90) -> bytes:
    return encode(picture(width, height, seed), "JPEG", quality=quality)


def png(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return encode(picture(width, height, seed), "PNG")


def rotated_jpeg(upright: Image.Image, orientation: int, quality: int = 95) -> bytes:
    """Store `upright` so that a viewer applying the EXIF `orientation` shows it upright again."""
    stored = {
        3: upright.transpose(Image.Transpose.ROTATE_180),
        6: upright.transpose(Image.Transpose.ROTATE_90),
        8: upright.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif.tobytes())


def png16_gray(width: int = 64, height: int = 48) -> tuple[bytes, np.ndarray]:
    """A 16-bit grayscale PNG and the 8-bit values a correct decoder must produce."""
    ramp = np.linspace(0, 65535, width, dtype=np.float64)
    arr16 = np.tile(ramp, (height, 1)).astype(np.uint16)
    img = Image.fromarray(arr16)
    assert img.mode.startswith("I;16")
    return encode(img, "PNG"), (arr16.astype(np.uint32) * 255 // 65535).astype(np.uint8)


def palette_png(width: int = 96, height: int = 64, seed: int = 1) -> bytes:
    return encode(picture(width, height, seed).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def cmyk_jpeg(width: int = 96, height: int = 64, seed: int = 2) -> bytes:
    return encode(picture(width, height, seed).convert("CMYK"), "JPEG", quality=95)


def gray_jpeg(width: int = 96, height: int = 64, seed: int = 3) -> bytes:
    return encode(picture(width, height, seed).convert("L"), "JPEG", quality=95)


def rgba_png(width: int = 96, height: int = 64, seed: int = 4) -> bytes:
    img = picture(width, height, seed).convert("RGBA")
    alpha = np.zeros((height, width), dtype=np.uint8)
    alpha[:, : width // 2] = 255  # left half opaque, right half fully transparent
    img.putalpha(Image.fromarray(alpha, "L"))
    return encode(img, "PNG")


def animated_gif(width: int = 80, height: int = 60) -> tuple[bytes, tuple[int, int, int]]:
    """Three solid frames; returns the bytes and the first frame's colour."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (width, height), c) for c in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return data, colours[0]


def multipage_tiff(width: int = 80, height: int = 60) -> tuple[bytes, tuple[int, int, int]]:
    colours = [(10, 120, 240), (240, 120, 10)]
    frames = [Image.new("RGB", (width, height), c) for c in colours]
    return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]), colours[0]


def truncated_jpeg() -> bytes:
    data = jpeg(320, 240, seed=5)
    return data[: len(data) // 2]


def png_bad_header_crc() -> bytes:
    """A PNG whose IHDR chunk fails its CRC check."""
    data = bytearray(png(64, 48, seed=6))
    ihdr = data.index(b"IHDR")
    crc_at = ihdr + 4 + 13
    data[crc_at : crc_at + 4] = bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4])
    return bytes(data)


def png_corrupt_data() -> bytes:
    """A PNG whose IDAT chunk holds a broken zlib stream."""
    data = bytearray(png(64, 48, seed=6))
    start = data.index(b"IDAT") + 4
    data[start : start + 16] = b"\xde\xad\xbe\xef" * 4
    return bytes(data)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def decompression_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid PNG header claiming 3.6 gigapixels, in a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    idat = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def random_bytes(n: int = 4096, seed: int = 7) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


TEXT_FILE = b"name,score\nalice,1\nbob,2\n"


def solid_png(colour: tuple[int, int, int], width: int = 48, height: int = 40) -> bytes:
    """A lossless single-colour image: what the `echo` test model answers is a function of it."""
    return encode(Image.new("RGB", (width, height), colour), "PNG")


def distinct_colours(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    picked: set[tuple[int, int, int]] = set()
    while len(picked) < n:
        r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
        picked.add((r, g, b))
    return sorted(picked)


RED, GREEN, GREY = (230, 20, 20), (20, 200, 30), (128, 128, 128)


def two_rectangles(
    width: int, height: int, red: tuple[int, int, int, int], green: tuple[int, int, int, int]
) -> tuple[Image.Image, np.ndarray]:
    """A grey image with a red and a green rectangle (x0, y0, x1, y1, exclusive ends), and its
    true label map: 0 grey, 1 red, 2 green."""
    pixels = np.full((height, width, 3), GREY, dtype=np.uint8)
    labels = np.zeros((height, width), dtype=np.uint8)
    for (x0, y0, x1, y1), colour, label in ((red, RED, 1), (green, GREEN, 2)):
        pixels[y0:y1, x0:x1] = colour
        labels[y0:y1, x0:x1] = label
    return Image.fromarray(pixels), labels


def bad_huffman_jpeg() -> bytes:
    """A JPEG whose header Pillow reads (it skips Huffman tables) and whose first Huffman table
    is nonsense, so every decoder fails on it: a file that passes the Preprocessor's checks and
    fails on the Model's device."""
    data = bytearray(jpeg(320, 240, seed=5))
    table = data.index(b"\xff\xc4")  # marker, length (2), class and id (1), 16 code counts
    data[table + 5 : table + 21] = b"\xff" * 16
    return bytes(data)
