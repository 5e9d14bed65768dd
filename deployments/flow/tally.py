"""Cumulative counts for the Open Inference Protocol's statistics, Ray-free.

Each replica keeps its own `Tally` and records into it where the fact is known, for nothing but a
lock and a few additions:

- an Ingress replica, per image answered (`answered`): success or fail, and a success's time in
  each stage from the timings its `Result` already carries (batch wait, preprocess, inference,
  postprocess; the whole request's time as `success`);
- a Model replica, per forward pass (`executed`): one execution of that many images, its time.

A snapshot is plain data (`Counts.as_data`) keyed by the served model's name and version
(`models:` in serve_config.yaml; `ModelKey`); `merged` sums the snapshots of every replica
(`deployments.flow.stats` collects them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deployments.items import ItemError, Result

# inference_stats' durations, and where a success's come from in its `Result.timings_ms`.
STAGE_TIMINGS = {
    "queue": "batch_wait",
    "compute_input": "preprocess",
    "compute_infer": "inference",
    "compute_output": "postprocess",
}
DURATIONS = ("success", "fail", *STAGE_TIMINGS)

__all__ = ["DURATIONS", "Counts", "ModelKey", "Tally", "merged"]

ModelKey = tuple[str, str]  # a served model's name and version: each version counts apart


def _ns(ms: float) -> int:
    return max(0, round(ms * 1e6))


@dataclass(slots=True)
class Counts:
    """One model's counts (from one replica, or summed). Durations are `[count, ns]`."""

    last_inference_ms: int = 0  # ms since the epoch
    inference_count: int = 0  # images through a forward pass
    execution_count: int = 0  # forward passes
    durations: dict[str, list[int]] = field(default_factory=dict)
    batches: dict[int, list[int]] = field(default_factory=dict)  # size -> [passes, ns]

    def duration(self, name: str) -> tuple[int, int]:
        count, ns = self.durations.get(name, (0, 0))
        return count, ns

    def add_duration(self, name: str, ns: int, count: int = 1) -> None:
        entry = self.durations.setdefault(name, [0, 0])
        entry[0] += count
        entry[1] += ns

    def add(self, other: Counts) -> None:
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        for name, (count, ns) in other.durations.items():
            self.add_duration(name, ns, count)
        for size, (passes, ns) in other.batches.items():
            entry = self.batches.setdefault(size, [0, 0])
            entry[0] += passes
            entry[1] += ns

    def as_data(self) -> dict[str, Any]:
        """Plain data, for a snapshot that crosses a process boundary."""
        return {
            "last_inference_ms": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "durations": {k: list(v) for k, v in self.durations.items()},
            "batches": {int(k): list(v) for k, v in self.batches.items()},
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Counts:
        return cls(
            last_inference_ms=int(data.get("last_inference_ms", 0)),
            inference_count=int(data.get("inference_count", 0)),
            execution_count=int(data.get("execution_count", 0)),
            durations={str(k): [int(c), int(n)] for k, (c, n) in data.get("durations", {}).items()},
            batches={int(k): [int(c), int(n)] for k, (c, n) in data.get("batches", {}).items()},
        )


class Tally:
    """One replica's counts by served model and version; safe to record from any thread."""

    def __init__(self, now_ms: Callable[[], int] | None = None) -> None:
        self._counts: dict[ModelKey, Counts] = {}
        self._lock = threading.Lock()
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.version = 0  # bumps on every record: a reporter sends only what changed

    def answered(
        self, model: ModelKey, answers: Sequence[Result | ItemError], elapsed_ms: float
    ) -> None:
        """The Ingress answered these images of one request to `model` (name, version), after
        `elapsed_ms` (a failed image's time in `fail`)."""
        with self._lock:
            counts = self._counts.setdefault(model, Counts())
            for answer in answers:
                if isinstance(answer, ItemError):
                    counts.add_duration("fail", _ns(elapsed_ms))
                    continue
                timings = answer.timings_ms
                counts.add_duration("success", _ns(timings.get("total", elapsed_ms)))
                for name, timing in STAGE_TIMINGS.items():
                    counts.add_duration(name, _ns(timings.get(timing, 0.0)))
            counts.last_inference_ms = max(counts.last_inference_ms, self._now_ms())
            self.version += 1

    def executed(self, model: ModelKey, images: int, ms: float) -> None:
        """A Model replica of `model` (name, version) ran one forward pass over `images` in
        `ms`."""
        with self._lock:
            counts = self._counts.setdefault(model, Counts())
            counts.execution_count += 1
            counts.inference_count += images
            entry = counts.batches.setdefault(images, [0, 0])
            entry[0] += 1
            entry[1] += _ns(ms)
            counts.last_inference_ms = max(counts.last_inference_ms, self._now_ms())
            self.version += 1

    def snapshot(self) -> dict[ModelKey, dict[str, Any]]:
        """Every model version's counts so far, as plain data."""
        with self._lock:
            return {name: c.as_data() for name, c in self._counts.items()}


def merged(
    snapshots: Iterable[Mapping[ModelKey, Mapping[str, Any]]],
) -> dict[ModelKey, Counts]:
    """The sum, by served model and version, of several replicas' snapshots."""
    out: dict[ModelKey, Counts] = {}
    for snapshot in snapshots:
        for key, data in snapshot.items():
            out.setdefault(key, Counts()).add(Counts.from_data(data))
    return out
