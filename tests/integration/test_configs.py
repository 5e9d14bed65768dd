"""The shipped example configs start and answer, with `weights: none` (nothing is downloaded)."""

from __future__ import annotations

import httpx
import pytest

from tests import images
from tests.serving import BASE_URL, ROOT, app_config, deploy, load_config, post_image
from tools.serve_process import default_model_spec

# A smaller input keeps the 800 px Faster R-CNN's CPU forward passes cheap (42 s -> ~15 s); the
# config's model, weights entry, labels and the rest of its preprocessing are what is under test.
CHEAPER = {"fasterrcnn_coco.yaml": {"input_size": 320}}
EXAMPLES = [
    ("resnet50_imagenet.yaml", "classification", 1000),
    ("fasterrcnn_coco.yaml", "detection", 91),
]


@pytest.mark.parametrize(("name", "task", "labels"), EXAMPLES)
def test_example_config_starts_offline_with_weights_none(name: str, task: str, labels: int) -> None:
    base = load_config(ROOT / "configs" / name)
    model = {
        **default_model_spec(base["applications"][0]),
        "weights": "none",
        "allow_download": False,
        **CHEAPER.get(name, {}),
    }
    # One image per pass: a replica warms its max_batch_size up at start, and a pass of 8 is
    # most of this test's time on CPU; batching is test_batching's.
    deploy(app_config(base, model=model, user_configs={"Model": {"max_batch_size": 1}}))
    r = post_image(images.jpeg(640, 480, seed=1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["task"]) == (model["name"], task)
    info = httpx.get(f"{BASE_URL}/v1/model").json()
    assert len(info["labels"]) == labels
