"""Which model versions an Ingress routes, and what each needs: the catalogue.

A model version is served one of two ways:

- **bound** into the front application (its `args.models`), as `serve run graph:app` builds it:
  fixed for the Ingress replica's life, since changing the front's args restarts its replicas;
- **its own application** (`import_path: ...graph:build_model`, `args.front` naming the front
  application): added, replaced and removed alone, through the Serve config or the repository
  API, without restarting any other model or stage. The Ingress finds these by asking the
  controller for the applications' configs (`AppSource`) every second (`Readiness.refresh`) and
  at once when a request names a model it does not know.

What the Ingress, the Preprocessor and the Postprocessor need of a version (its task, input
geometry and labels) is its `ModelCard`. A bound version's card comes with the front's args; a
model application's is written by its builder, which resolves the model anyway, into Ray's
key-value store under the digest of its args (`publish_card`), and read from there. No stage
imports torch for it, and nothing asks a model that may be scaled to zero.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from deployments import tasks
from deployments.items import latest_version
from deployments.pixels.imaging import ResizeSpec

logger = logging.getLogger("ray.serve")

ModelKey = tuple[str, str]  # a served model's name and version
KV_NAMESPACE = "vision-serve"
MODEL_APP_BUILDER = "graph:build_model"  # a model application's import path ends with this
MODEL_DEPLOYMENT = "Model"  # the one deployment of a model application
# What a served model's name and version may be (the config's, and a load's).
MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
MODEL_VERSION_PATTERN = r"^[0-9A-Za-z]([0-9A-Za-z._-]{0,30}[0-9A-Za-z])?$"


@dataclass(frozen=True, slots=True)
class ModelAnswers:
    """What the Postprocessor needs to answer for one served model version."""

    source: str  # the model's own name (torchvision name or factory), as results report it
    task: str  # a name in deployments.tasks.REGISTRY
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelCard:
    """Everything the stages other than the Model need to know of one served model version."""

    name: str  # the name requests route by
    version: str
    task: str  # a name in deployments.tasks.REGISTRY
    source: str  # the model's own name (torchvision name or factory)
    labels: tuple[str, ...]
    max_candidates: int  # what the Model keeps per image (classification's max_top_k)
    resize: ResizeSpec  # how the Preprocessor brings an image to the model's input

    @property
    def answers(self) -> ModelAnswers:
        return ModelAnswers(self.source, self.task, self.labels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        data = json.loads(text)
        data["labels"] = tuple(data["labels"])
        data["resize"] = ResizeSpec(**data["resize"])
        return cls(**data)


def args_digest(args: Mapping[str, Any]) -> str:
    """The key a model application's card is published under: its args, as the config has them
    (the builder and the Ingress see the same dict)."""
    text = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _card_key(digest: str) -> bytes:
    return f"card/{digest}".encode()


def publish_card(digest: str, card: ModelCard) -> None:
    """Write a model application's card (its builder does, in a Ray task)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(
        _card_key(digest), card.to_json().encode(), overwrite=True, namespace=KV_NAMESPACE
    )


def read_card(digest: str) -> ModelCard | None:
    """A published card (None: its builder has not run yet, or failed). Blocks on the GCS."""
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(_card_key(digest), namespace=KV_NAMESPACE)
    return None if raw is None else ModelCard.from_json(raw)


def is_model_app(config: Mapping[str, Any], front: str) -> bool:
    """Whether an application's config is a model application routed by the front `front`."""
    args = config.get("args") or {}
    return str(config.get("import_path", "")).endswith(MODEL_APP_BUILDER) and (
        args.get("front") == front
    )


@dataclass(frozen=True, slots=True)
class Served:
    """One model version the Ingress routes: its card, and where its Model deployment runs."""

    card: ModelCard
    handle: Any  # DeploymentHandle of its Model deployment
    app: str  # the Serve application the deployment belongs to
    deployment: str
    own_app: bool = False  # its own application (loaded and unloaded alone), else bound

    @property
    def key(self) -> ModelKey:
        return (self.card.name, self.card.version)


class View:
    """One state of the catalogue: what is routed, by name and version. Built whole, never
    changed: a request reads one state throughout."""

    def __init__(self, served: Mapping[ModelKey, Served]) -> None:
        self.served = dict(served)
        versions: dict[str, list[str]] = {}
        for name, version in self.served:
            versions.setdefault(name, []).append(version)
        # Every version of each model, in found order; what a request naming none gets; the
        # task (every version of a model serves one); the Postprocessor's answers by version.
        self.versions = {n: tuple(vs) for n, vs in versions.items()}
        self.latest = {n: latest_version(vs) for n, vs in self.versions.items()}
        self.tasks = {n: tasks.get(self.served[(n, v)].card.task) for n, v in self.latest.items()}
        self._answers = {
            n: {(n, v): self.served[(n, v)].card.answers for v in vs}
            for n, vs in self.versions.items()
        }

    def card(self, name: str, version: str) -> ModelCard:
        return self.served[(name, version)].card

    def answers(self, name: str) -> dict[ModelKey, ModelAnswers]:
        """Every version of `name`'s answers, by (name, version): a bundle's outputs name the
        version that produced each."""
        return self._answers.get(name, {})


AppConfigs = Callable[[], Mapping[str, Mapping[str, Any]]]  # app name -> its config, as a dict
CardReader = Callable[[str], "ModelCard | None"]
HandleMaker = Callable[[str, str], Any]  # (deployment, app) -> DeploymentHandle


class Catalogue:
    """One Ingress replica's catalogue: its bound versions and the model applications found.

    `refresh` is the only writer; readers take `view`, which is replaced whole, never changed.
    """

    def __init__(
        self,
        front: str,
        bound: Mapping[ModelKey, Served],
        app_configs: AppConfigs | None = None,
        read: CardReader = read_card,
        handle: HandleMaker | None = None,
    ) -> None:
        self.front = front
        self._bound = dict(bound)
        self._app_configs = app_configs  # None: only the bound versions (unit tests, fakes)
        self._read = read
        self._handle = handle
        self._entries: dict[tuple[str, str], Served] = {}  # by (app, args digest): read once
        self._found: dict[str, Served] = {}  # by model application name
        self._problems: dict[str, str] = {}  # app -> why it is not routed (logged once)
        self._stamp: object = None  # the applications' statuses at the last read
        self.view = View(dict(self._bound))

    def refresh(self, stamp: object = None) -> bool:
        """Ask the controller which model applications there are (blocking: run it off the
        event loop); True when what is routed changed.

        `stamp`: what the applications' statuses say of them (`serve.status()`: each one's
        name, deploy time and status). While it is the last read's and every model
        application found was routed, the configs cannot have changed and are not read.
        """
        if self._app_configs is None:
            return False
        if stamp is not None and stamp == self._stamp and not self._problems:
            return False
        found: dict[str, Served] = {}
        problems: dict[str, str] = {}
        for app, config in sorted(self._app_configs().items()):
            if not is_model_app(config, self.front):
                continue
            served = self._served(app, config)
            if isinstance(served, str):
                problems[app] = served
            else:
                found[app] = served
        for app, why in problems.items():
            if self._problems.get(app) != why:
                logger.info("model application %s is not routed yet: %s", app, why)
        self._problems = problems
        self._stamp = stamp
        self._entries = {k: v for k, v in self._entries.items() if k[0] in found}
        if found == self._found:
            return False
        self._found = found
        self.view = View(self._merged(found))
        return True

    def _served(self, app: str, config: Mapping[str, Any]) -> Served | str:
        digest = args_digest(config.get("args") or {})
        entry = self._entries.get((app, digest))
        if entry is None:
            card = self._read(digest)
            if card is None:
                return "its builder has not published its card yet (or failed: see its status)"
            handle = self._handle(MODEL_DEPLOYMENT, app) if self._handle is not None else None
            entry = Served(card, handle, app, MODEL_DEPLOYMENT, own_app=True)
            self._entries = {k: v for k, v in self._entries.items() if k[0] != app}
            self._entries[(app, digest)] = entry
        return entry

    def _merged(self, found: Mapping[str, Served]) -> dict[ModelKey, Served]:
        served = dict(self._bound)
        for app, entry in found.items():
            others = {s.card.task for k, s in served.items() if k[0] == entry.card.name}
            if others and entry.card.task not in others:
                logger.warning(
                    "model application %s serves %s as %s, but its other versions do %s; "
                    "it is not routed (every version of a model serves one task)",
                    app,
                    entry.card.name,
                    entry.card.task,
                    sorted(others),
                )
                continue
            holder = served.get(entry.key)
            if holder is not None:
                logger.warning(
                    "model application %s serves %s version %s, which %s already serves; "
                    "it is not routed",
                    app,
                    *entry.key,
                    holder.app,
                )
                continue
            served[entry.key] = entry
        return served
