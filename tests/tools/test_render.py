"""tools/render.py: the overlay merge, and the drift check over every generated config."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from tools import render

# --- the merge ----------------------------------------------------------------------------------


def test_deep_merge_matches_named_items_and_keeps_the_rest() -> None:
    base = {
        "a": 1,
        "items": [{"name": "x", "opts": {"cpu": 1, "keep": True}}, {"name": "y", "v": 2}],
    }
    before = copy.deepcopy(base)
    merged = render.deep_merge(base, {"items": [{"name": "x", "opts": {"gpu": 1}}], "b": [1]})
    assert merged == {
        "a": 1,
        "items": [{"name": "x", "opts": {"cpu": 1, "keep": True, "gpu": 1}}, {"name": "y", "v": 2}],
        "b": [1],
    }
    assert base == before, "the merge must not modify its input"
    assert render.deep_merge({"l": [1, 2]}, {"l": [3]}) == {"l": [3]}, "plain lists are replaced"


def test_deep_merge_refuses_a_name_the_base_lacks() -> None:
    with pytest.raises(ValueError, match="'model'"):
        render.deep_merge({"d": [{"name": "Model"}]}, {"d": [{"name": "model", "x": 1}]})


def _overlay(text: str, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "overlay.yaml"
    path.write_text(text)
    return render.load_yaml(path)


def test_replace_tag_replaces_a_mapping_whole(tmp_path: Path) -> None:
    base = {"d": [{"name": "Post", "user_config": {"top_k": 5, "score_threshold": 0.5}}]}
    merged = render.deep_merge(
        base, _overlay("d:\n  - name: Post\n    user_config: !replace {top_k: 3}\n", tmp_path)
    )
    assert merged == {"d": [{"name": "Post", "user_config": {"top_k": 3}}]}
    untagged = render.deep_merge(
        base, _overlay("d:\n  - name: Post\n    user_config: {top_k: 3}\n", tmp_path)
    )
    assert untagged["d"][0]["user_config"] == {"top_k": 3, "score_threshold": 0.5}


def test_drop_tag_removes_a_named_item_and_refuses_a_name_the_base_lacks(
    tmp_path: Path,
) -> None:
    base = {"d": [{"name": "A", "x": 1}, {"name": "B"}, {"name": "C"}]}
    merged = render.deep_merge(
        base, _overlay("d:\n  - !drop {name: B}\n  - {name: C, y: 2}\n", tmp_path)
    )
    assert merged == {"d": [{"name": "A", "x": 1}, {"name": "C", "y": 2}]}
    with pytest.raises(ValueError, match="'Z'"):
        render.deep_merge(base, _overlay("d:\n  - !drop {name: Z}\n", tmp_path))
    with pytest.raises(ValueError, match="only `name`"):
        _overlay("d:\n  - !drop {name: B, x: 1}\n", tmp_path)


def test_replace_tag_works_on_a_named_item_and_inside_new_keys(tmp_path: Path) -> None:
    base = {"d": [{"name": "A", "x": 1, "y": 2}, {"name": "B"}]}
    overlay = _overlay(
        "d:\n  - !replace {name: A, x: 9}\nnew:\n  inner: !replace [1, 2]\n", tmp_path
    )
    assert render.deep_merge(base, overlay) == {
        "d": [{"name": "A", "x": 9}, {"name": "B"}],
        "new": {"inner": [1, 2]},
    }


# --- the generated files ------------------------------------------------------------------------


def test_every_generated_file_is_up_to_date() -> None:
    assert render.check() == [], "run `python -m tools.render`"
    assert render.main(["--check"]) == 0


def test_every_overlay_has_a_generated_config_with_its_header() -> None:
    overlays = sorted(render.OVERLAYS.glob("*.yaml"))
    assert overlays, "configs/overlays/ holds the example configs' overlays"
    for overlay in overlays:
        text = (render.CONFIGS / overlay.name).read_text()
        assert text.startswith(render.CONFIG_HEADER.format(name=overlay.name)), overlay.name


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of configs/ (overlays and generated files) that the renderer works on."""
    configs = tmp_path / "configs"
    shutil.copytree(render.CONFIGS, configs, ignore=shutil.ignore_patterns("*.md"))
    monkeypatch.setattr(render, "CONFIGS", configs)
    monkeypatch.setattr(render, "OVERLAYS", configs / "overlays")
    monkeypatch.setattr(render, "ROOT", tmp_path.parent)
    monkeypatch.setattr(render, "MANIFEST", tmp_path / "rayservice.yaml")
    return configs


def test_check_reports_an_edited_a_missing_and_an_orphaned_config(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert render.main([]) == 0, "rendering into the copy"
    assert render.check() == []
    edited = tree / "resnet50_imagenet.yaml"
    edited.write_text(edited.read_text().replace("max_batch_size: 8", "max_batch_size: 9"))
    (tree / "fasterrcnn_coco.yaml").unlink()
    shutil.copy(edited, tree / "gone.yaml")
    problems = "\n".join(render.check())
    (stale,) = [p for p in render.check() if "resnet50_imagenet.yaml is stale" in p]
    changed = [line.split() for line in stale.splitlines() if "max_batch_size" in line]
    assert changed == [["-", "max_batch_size:", "9"], ["+", "max_batch_size:", "8"]]
    assert "fasterrcnn_coco.yaml is stale" in problems
    assert "gone.yaml is generated but has no overlay" in problems
    assert render.main(["--check"]) == 1
    assert "tools.render" in capsys.readouterr().err


def test_a_hand_written_config_beside_them_is_not_an_orphan(tree: Path) -> None:
    assert render.main([]) == 0
    (tree / "mine.yaml").write_text(yaml.safe_dump({"applications": []}))
    assert render.check() == []
