"""Issue 9 over HTTP: tiny files claiming thin, huge images get a 413 at once from the real graph,
the Preprocessor's memory stays where it was, and the service keeps answering.

One model, `resize-crop` (232 -> 224, as configs/resnet50_imagenet.yaml; tests.serving's
RESIZE_CROP_ECHO): the only mode in which a thin image is resized past the pixel limit.
Letterbox and stretch, and every shipped config, are covered in tests/unit/test_hostile_images.py,
where a mode costs milliseconds, not a deployment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import images
from tests.serving import (
    BASE_URL,
    RESIZE_CROP_ECHO,
    deploy,
    model_zoo_config,
    post_image,
    post_multipart,
    wait_until,
)

# Loose on purpose (a loaded 2-core CI machine): the memory bound is the tight check.
MAX_SECONDS = 5.0
MAX_GROWTH_MB = 50.0
HOSTILE = {
    f"{w}x{h}": images.encode(Image.new("RGB", (w, h), (40, 90, 200)), "PNG")
    for w, h in [(1, 20_000), (1, 200_000), (200_000, 1)]
}
MODEL = RESIZE_CROP_ECHO[0]


@pytest.fixture(scope="module", autouse=True)
def resize_crop_app() -> None:
    """`MODEL` by name, beside test_detection's and test_segmentation's models; one
    Preprocessor replica (tests.serving.model_zoo_config)."""
    deploy(model_zoo_config())


def _preprocessor_pid() -> int:
    """The Preprocessor replica of this session's Ray (a descendant of this process)."""

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            status = Path(f"/proc/{pid}/status").read_text()
            pid = int(next(ln for ln in status.splitlines() if ln.startswith("PPid:")).split()[1])
        return False

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"ServeReplica:vision:Preprocessor" in cmdline and ours(int(entry.name)):
                found.append(int(entry.name))
        except OSError:  # a process that ended while we looked
            continue
    assert len(found) == 1, f"expected one Preprocessor replica, found {found}"
    return found[0]


def _memory_kb(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = (line.split(":", 1) for line in lines)
    return {k: int(v.split()[0]) for k, v in fields if k.startswith("Vm")}


def test_thin_images_get_a_413_at_once_and_the_preprocessor_stays_small() -> None:
    assert (
        post_image(images.png(640, 480, seed=1), "image/png", model=MODEL).status_code == 200
    )  # warm up
    pid = _preprocessor_pid()
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # its peak RSS starts again from now
    before = _memory_kb(pid)["VmRSS"]
    for name, data in HOSTILE.items():
        start = time.perf_counter()
        r = post_image(data, "image/png", model=MODEL)
        elapsed = time.perf_counter() - start
        assert r.status_code == 413, (name, r.text)
        error = r.json()["error"]
        assert error["code"] == "too_many_pixels", (name, error)
        assert "limit is 40.0 megapixels" in error["message"], (name, error)
        assert elapsed < MAX_SECONDS, f"{name}: answered in {elapsed:.2f} s"
    growth_mb = (_memory_kb(pid)["VmHWM"] - before) / 1024
    assert growth_mb < MAX_GROWTH_MB, f"the Preprocessor's peak memory grew by {growth_mb:.0f} MB"
    assert _preprocessor_pid() == pid, "the Preprocessor replica was replaced"
    # Ready again within a probe or two (its first check asks every stage and Serve afresh).
    wait_until(
        lambda: httpx.get(f"{BASE_URL}/v1/health/ready").status_code == 200,
        15,
        "readiness after the attack",
    )
    assert post_image(images.png(480, 640, seed=2), "image/png", model=MODEL).status_code == 200


def test_thin_images_fail_alone_in_a_multipart_request() -> None:
    parts = [(f"{name}.png", data, "image/png") for name, data in HOSTILE.items()]
    good = ("good.png", images.png(320, 240, seed=3), "image/png")
    r = post_multipart([*parts, good], model=MODEL)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res.get("error", {}).get("status") for res in results] == [413, 413, 413, None]
    assert results[-1]["predictions"]
