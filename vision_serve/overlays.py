"""Overlays: a Serve config that holds only what differs from a base, merged into it.

`vision-serve config render OVERLAY...` prints the packaged serve_config.yaml merged with them; in
a checkout, `python -m tools.render` renders configs/ and the KubeRay manifest the same way. An
overlay is merged into the base by `deep_merge`:
- mappings merge key by key; a key the base lacks is added;
- lists of mappings that all have a `name` (applications, deployments) merge item by item, matched
  by `name`; a name the base lacks is an error, so a misspelt deployment cannot slip in;
- anything else (scalars, other lists) replaces the base's value;
- a value tagged `!replace` replaces the base's value whole instead of merging into it (e.g. a
  deployment's `user_config: !replace {top_k: 5}` drops the base's other keys);
- a named-list item tagged `!drop` (`- !drop {name: Model-shapes-segmenter}`) removes the base's
  item of that name (an overlay that serves fewer models drops their deployments).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import yaml

from vision_serve.files import SERVE_CONFIG as DEFAULT_CONFIG


class Replace:
    """An overlay value that replaces the base's value whole (`!replace` in YAML)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Replace) and other.value == self.value

    def __repr__(self) -> str:
        return f"Replace({self.value!r})"


class Drop:
    """A named-list item that removes the base's item of the same name (`!drop` in YAML)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Drop) and other.name == self.name

    def __repr__(self) -> str:
        return f"Drop({self.name!r})"


class _OverlayLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types here
    pass


def _construct_drop(loader: yaml.SafeLoader, node: yaml.Node) -> Drop:
    if not isinstance(node, yaml.MappingNode):
        raise ValueError("!drop takes a mapping with the `name` of the item to remove")
    fields = loader.construct_mapping(node, deep=True)
    if set(fields) != {"name"}:
        raise ValueError(f"!drop takes only `name`; got {sorted(fields)}")
    return Drop(str(fields["name"]))


def _construct_replace(loader: yaml.SafeLoader, node: yaml.Node) -> Replace:
    if isinstance(node, yaml.MappingNode):
        return Replace(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Replace(loader.construct_sequence(node, deep=True))
    return Replace(loader.construct_scalar(node))


_OverlayLoader.add_constructor("!replace", _construct_replace)
_OverlayLoader.add_constructor("!drop", _construct_drop)


def _plain(value: Any) -> Any:
    """A deep copy of `value` with every `Replace` unwrapped."""
    if isinstance(value, Replace):
        return _plain(value.value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)


def _is_named_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(item, Drop) or (isinstance(item, dict) and "name" in item)
            for item in map(_plain, value)
        )
    )


def deep_merge(base: Any, override: Any) -> Any:
    """`override` merged into a copy of `base` by the rules in this module's docstring."""
    if isinstance(override, Replace):
        return _plain(override)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = deep_merge(base[key], value) if key in base else _plain(value)
        return merged
    if _is_named_list(base) and _is_named_list(override):
        merged_items = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(base)}
        dropped = set()
        for item in override:
            name = item.name if isinstance(item, Drop) else _plain(item)["name"]
            if name not in index:
                raise ValueError(f"override names {name!r}, which is not one of {sorted(index)}")
            if isinstance(item, Drop):
                dropped.add(index[name])
            else:
                merged_items[index[name]] = deep_merge(base[index[name]], item)
        return [item for i, item in enumerate(merged_items) if i not in dropped]
    return _plain(override)


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping; `!replace` tags load as `Replace` values."""
    loaded = yaml.load(path.read_text(), Loader=_OverlayLoader)  # a SafeLoader plus one tag
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return loaded


def merged_config(*overlays: Path, base: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """`base` (the packaged serve_config.yaml unless given) with each overlay merged into it."""
    config = load_yaml(base)
    for overlay in overlays:
        config = deep_merge(config, load_yaml(overlay))
    return cast(dict[str, Any], _plain(config))


def dump_config(config: dict[str, Any]) -> str:
    return str(yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100))
