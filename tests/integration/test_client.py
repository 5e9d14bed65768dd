"""`python -m vision_client` against the real graph: a folder in, one JSON line per image out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import images
from tests.fixtures.models import ECHO, colour_in
from tests.serving import BASE_URL, ONE_MODEL, ROOT, app_config, deploy


@pytest.fixture(scope="module", autouse=True)
def echo_app() -> None:
    deploy(app_config(model=ECHO))


def test_cli_sends_a_folder_and_writes_a_line_per_image(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    names = ["a.png", "b.png", "more/c.png"]
    colours = dict(zip(names, images.distinct_colours(3, seed=7), strict=True))
    for name, colour in colours.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(images.solid_png(colour))
    (folder / "broken.jpg").write_bytes(images.truncated_jpeg())
    (folder / "notes.txt").write_bytes(images.TEXT_FILE)  # not an image suffix: not sent
    out = tmp_path / "results.jsonl"

    command = [sys.executable, "-m", "vision_client", str(folder), f"--url={BASE_URL}"]
    command += ["--option=top_k=3", "--concurrency=2", f"--out={out}", "--no-progress"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 1, done.stderr  # one image failed
    assert "1 of 4 images failed" in done.stderr
    lines = {Path(line["path"]).relative_to(folder).as_posix(): line for line in _read(out)}
    assert sorted(lines) == ["a.png", "b.png", "broken.jpg", "more/c.png"]
    for name, colour in colours.items():
        line = lines[name]
        assert (line["status"], line["attempts"], line["error"]) == (200, 1, None), line
        assert len(line["body"]["predictions"]) == 3
        assert colour_in(line["body"]["predictions"]) == colour, name  # its own answer
    broken = lines["broken.jpg"]
    assert broken["status"] == 422
    assert broken["body"]["error"]["code"] == "corrupt_image"


def test_cli_speaks_the_open_inference_protocol_too(tmp_path: Path) -> None:
    colours = images.distinct_colours(2, seed=8)
    for n, colour in enumerate(colours):
        (tmp_path / f"{n}.png").write_bytes(images.solid_png(colour))
    (tmp_path / "2.jpg").write_bytes(images.truncated_jpeg())
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "vision_client", str(tmp_path), f"--url={BASE_URL}"]
    command += ["--protocol=v2", f"--model={ONE_MODEL}", "--option=top_k=3", f"--out={out}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert done.returncode == 1, done.stderr
    lines = {Path(str(line["path"])).name: line for line in _read(out)}
    for n, colour in enumerate(colours):
        body: Any = lines[f"{n}.png"]["body"]
        assert lines[f"{n}.png"]["status"] == 200 and body["model_name"] == ONE_MODEL
        outputs = {o["name"]: o for o in body["outputs"]}
        labels = outputs["labels"]["data"]
        assert len(labels) == 3
        assert colour_in([{"label": label} for label in labels]) == colour  # its own answer
    assert lines["2.jpg"]["status"] == 422
    assert "error" in lines["2.jpg"]["body"]  # the protocol's error form


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
