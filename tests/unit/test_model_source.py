"""Model resolution and loading: names, tasks, labels, presets, checkpoints, and offline weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from deployments.runtime.model_source import ModelLoadError, load, resolve
from deployments.runtime.spec import ModelSpec


def test_classification_preset_comes_from_the_weights() -> None:
    r = resolve(ModelSpec(name="resnet50", weights="IMAGENET1K_V2"))
    assert (r.task, r.resize, r.input_width, r.resize_size) == (
        "classification",
        "resize_crop",
        224,
        232,
    )
    assert len(r.labels) == 1000 and r.labels[0] == "tench"
    assert r.mean == pytest.approx((0.485, 0.456, 0.406))
    assert resolve(ModelSpec(name="resnet50", weights="IMAGENET1K_V1")).resize_size == 256


def test_detection_defaults_to_letterbox_without_extra_normalisation() -> None:
    r = resolve(ModelSpec(name="fasterrcnn_resnet50_fpn_v2", weights="none", input_size=512))
    assert (r.task, r.resize, r.input_width, r.input_height) == ("detection", "letterbox", 512, 512)
    assert r.labels[1] == "person" and r.mean == (0.0, 0.0, 0.0) and r.std == (1.0, 1.0, 1.0)


def test_explicit_values_win() -> None:
    r = resolve(
        ModelSpec(
            name="resnet18",
            input_size=(160, 128),
            resize="stretch",
            labels=["a", "b"],
            num_classes=2,
        )
    )
    assert (r.input_width, r.input_height, r.resize, r.labels) == (160, 128, "stretch", ("a", "b"))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (ModelSpec(name="resnet5000"), "unknown model"),
        (ModelSpec(name="r3d_18"), "task this service does not serve"),
        (ModelSpec(name="resnet50", weights="IMAGENET9K"), "IMAGENET1K_V2"),
        (ModelSpec(name="resnet18", task="detection"), "does classification"),
        (ModelSpec(name="resnet18", labels=["a"], num_classes=2), "num_classes"),
        (ModelSpec(name="no.such.module:build"), "cannot import"),
        (ModelSpec(name="resnet18", labels="missing/labels.txt"), "does not exist"),
    ],
)
def test_misconfiguration_names_the_setting(spec: ModelSpec, says: str) -> None:
    with pytest.raises(ModelLoadError, match=says):
        resolve(spec)


def test_offline_named_weights_fail_with_how_to_point_at_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    spec = ModelSpec(name="resnet50", weights="IMAGENET1K_V2", allow_download=False)
    with pytest.raises(ModelLoadError) as caught:
        load(spec, resolve(spec))
    message = str(caught.value)
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "weights: /path/to/resnet50-11ad3fa6.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message


def test_seeded_init_is_reproducible() -> None:
    spec = ModelSpec(name="resnet18", seed=3)
    a, b = load(spec, resolve(spec)), load(spec, resolve(spec))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x))


def test_checkpoint_with_labels_file_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(5)
    trained = torchvision.models.resnet18(num_classes=3).eval()
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": trained.state_dict()}, ckpt)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["cat", "dog", "fox"]))
    spec = ModelSpec(name="resnet18", weights=str(ckpt), labels=str(labels))
    resolved = resolve(spec)
    assert resolved.labels == ("cat", "dog", "fox") and resolved.weights_kind == "file"
    loaded = load(spec, resolved)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), trained(x))


def test_mismatched_checkpoint_names_the_keys(tmp_path: Path) -> None:
    ckpt = tmp_path / "other.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), ckpt)
    spec = ModelSpec(name="resnet18", weights=str(ckpt))
    with pytest.raises(ModelLoadError, match="does not match resnet18"):
        load(spec, resolve(spec))
