"""Which model to serve and how its inputs look: resolution (no weights) and loading.

Pure functions, no Ray. `resolve` runs at build time and fixes everything the other stages need
(task, labels, input geometry, normalisation) without touching weights; `load` runs once in each
Model replica. Model sources:
  * a torchvision model name (`resnet50`, `fasterrcnn_resnet50_fpn_v2`, ...);
  * an import path `package.module:factory` returning an `nn.Module` that follows torchvision's
    output contract (see `shapes/model.py`), optionally declaring `task`, `categories`,
    `input_size`, `mean`, `std` as attributes.
Weights: a torchvision weights name (`DEFAULT`, `IMAGENET1K_V2`, ...), a local state_dict path,
or `none` (seeded random init, for smoke tests).
"""

from __future__ import annotations

import importlib
import json
import os
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

from deployments import tasks
from deployments.items import ResizeMode
from deployments.runtime.spec import ModelSpec, Resolved
from deployments.tasks.base import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, Task

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ModelLoadError(ValueError):
    """The configured model cannot be resolved or loaded; the message names the setting to fix."""


def is_import_path(name: str) -> bool:
    return ":" in name


def resolve_path(path: str) -> Path:
    """Relative paths are taken from the project root, so they work from any working directory."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else PROJECT_ROOT / p


def _weights_kind(weights: str) -> Literal["torchvision", "file", "none"]:
    if weights.lower() == "none":
        return "none"
    if "/" in weights or os.sep in weights or weights.endswith((".pt", ".pth", ".bin")):
        return "file"
    return "torchvision"


def _torchvision_task(name: str) -> Task:
    import torchvision  # only for a torchvision name: a model of its own starts 1.4 s sooner

    models = torchvision.models
    task = tasks.for_torchvision(name)
    if task is not None:
        return task
    if name in models.list_models():
        raise ModelLoadError(
            f"model {name!r} is a torchvision model of a task this service does not serve; "
            f"the tasks are {', '.join(tasks.REGISTRY)}"
        )
    raise ModelLoadError(
        f"unknown model {name!r}: use a torchvision model name of one of the tasks "
        f"{', '.join(tasks.REGISTRY)} (see torchvision.models.list_models()) or an import path "
        "`package.module:factory`"
    )


def _weights_entry(name: str, weights: str) -> WeightsEnum | None:
    """The torchvision weights entry named by `weights`, else the model's DEFAULT (for metadata)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        return None
    if _weights_kind(weights) != "torchvision":
        return enum.DEFAULT if "DEFAULT" in enum.__members__ else None
    member = weights.split(".")[-1]
    if member not in enum.__members__:
        raise ModelLoadError(
            f"weights {weights!r} do not exist for {name}; choose one of "
            f"{sorted(enum.__members__)}, a state_dict path, or `none`"
        )
    return enum[member]


def _read_labels(labels: str | list[str]) -> tuple[str, ...]:
    if isinstance(labels, list):
        return tuple(labels)
    path = resolve_path(labels)
    if not path.is_file():
        raise ModelLoadError(f"labels file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        loaded = json.loads(text)
        if not isinstance(loaded, list) or not all(isinstance(x, str) for x in loaded):
            raise ModelLoadError(f"labels file {path} must hold a JSON list of strings")
        return tuple(loaded)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _import_factory(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import model factory {name!r}: {exc}") from None


def _size(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _task_named(name: str) -> Task:
    try:
        return tasks.get(name)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None


def resolve(spec: ModelSpec) -> Resolved:
    """Fix task, labels, input geometry and normalisation; explicit spec values win."""
    kind = _weights_kind(spec.weights)
    labels: tuple[str, ...] = ()
    if is_import_path(spec.name):
        module = _import_factory(spec.name)(**spec.kwargs)
        task = _task_named(spec.task or getattr(module, "task", None) or "classification")
        labels = tuple(getattr(module, "categories", ()))
        preset = Preprocessing(
            input_size=getattr(module, "input_size", task.custom_input_size),
            resize=task.preprocessing(None, spec).resize,
            resize_size=None,
            mean=tuple(getattr(module, "mean", IMAGENET_MEAN)),
            std=tuple(getattr(module, "std", IMAGENET_STD)),
        )
        if kind == "torchvision":
            raise ModelLoadError(
                f"weights {spec.weights!r} look like a torchvision weights name, but {spec.name} "
                "is not a torchvision model; give a state_dict path or `none`"
            )
    else:
        task = _torchvision_task(spec.name)
        if spec.task is not None and spec.task != task.name:
            raise ModelLoadError(f"model {spec.name} does {task.name}, but task is {spec.task!r}")
        entry = _weights_entry(spec.name, spec.weights)
        meta_labels = tuple(entry.meta.get("categories", ())) if entry is not None else ()
        if spec.num_classes is None or spec.num_classes == len(meta_labels):
            labels = meta_labels
        preset = task.preprocessing(entry, spec)
    if spec.labels is not None:
        labels = _read_labels(spec.labels)
    if spec.num_classes is not None and labels and len(labels) != spec.num_classes:
        raise ModelLoadError(
            f"num_classes is {spec.num_classes} but there are {len(labels)} labels; make them agree"
        )
    width, height = _size(spec.input_size if spec.input_size is not None else preset.input_size)
    resize: ResizeMode = spec.resize or preset.resize
    resize_size = spec.resize_size or preset.resize_size
    if resize == "resize_crop" and resize_size is not None and resize_size < min(width, height):
        raise ModelLoadError(
            f"resize_size {resize_size} is smaller than the input {width}x{height}; "
            "the centre crop needs resize_size >= the input's shorter side"
        )
    return Resolved(
        name=spec.name,
        task=task.name,
        labels=labels,
        input_width=width,
        input_height=height,
        resize=resize,
        resize_size=resize_size if resize == "resize_crop" else None,
        mean=_triple(spec.mean or preset.mean),
        std=_triple(spec.std or preset.std),
        weights=spec.weights,
        weights_kind=kind,
        max_candidates=spec.max_top_k,
    )


def _triple(values: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


def _constructor_kwargs(spec: ModelSpec, resolved: Resolved) -> dict[str, Any]:
    if is_import_path(spec.name):
        return dict(spec.kwargs)
    kwargs = tasks.get(resolved.task).constructor_kwargs(spec, resolved)
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    elif resolved.weights_kind != "torchvision" and resolved.labels:
        kwargs["num_classes"] = len(resolved.labels)
    return {**kwargs, **spec.kwargs}  # the spec's own constructor args win


def _cached_weights_file(entry: WeightsEnum) -> Path:
    url: str = entry.url
    return Path(str(torch.hub.get_dir())) / "checkpoints" / os.path.basename(url)


def _offline_hint(spec: ModelSpec, entry: WeightsEnum) -> str:
    cached = _cached_weights_file(entry)
    return (
        f"download {entry.url} on a machine with internet, then either set "
        f"`weights: /path/to/{cached.name}` in the model args (labels and preprocessing still "
        f"come from {type(entry).__name__}.DEFAULT) or copy the file to {cached}"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ModelLoadError(f"weights file {path} is not a readable state_dict: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"weights file {path} holds {type(loaded).__name__}, not a state_dict")
    return {
        k.removeprefix("module."): v.float() if v.is_floating_point() else v
        for k, v in loaded.items()
    }


def load(spec: ModelSpec, resolved: Resolved) -> nn.Module:
    """Build the module and load its weights, in eval mode on the CPU."""
    torch.manual_seed(spec.seed)
    kwargs = _constructor_kwargs(spec, resolved)
    if is_import_path(spec.name):
        module: nn.Module = _import_factory(spec.name)(**kwargs)
        return _with_weights(module, spec, resolved).eval()
    import torchvision

    if resolved.weights_kind == "torchvision":
        entry = _weights_entry(spec.name, spec.weights)
        assert entry is not None
        if not _cached_weights_file(entry).is_file() and not spec.allow_download:
            raise ModelLoadError(
                f"weights {spec.weights} for {spec.name} are not in the local cache and "
                f"allow_download is false: {_offline_hint(spec, entry)}"
            )
        try:
            module = torchvision.models.get_model(spec.name, weights=entry, **kwargs)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise ModelLoadError(
                f"could not download weights {spec.weights} for {spec.name} ({exc}); "
                f"this machine may be offline: {_offline_hint(spec, entry)}"
            ) from None
    else:
        module = torchvision.models.get_model(spec.name, weights=None, **kwargs)
    return _with_weights(module, spec, resolved).eval()


def _with_weights(module: nn.Module, spec: ModelSpec, resolved: Resolved) -> nn.Module:
    """`module` with the state_dict file of `weights` loaded, where it names one."""
    if resolved.weights_kind == "file":
        state = _read_state_dict(resolve_path(spec.weights))
        result = module.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelLoadError(
                f"weights file {spec.weights} does not match {spec.name}: "
                f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]} "
                "(check num_classes and the model name)"
            )
    return module
