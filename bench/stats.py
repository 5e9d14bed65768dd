"""Pure maths for the benchmark: percentiles, histograms, per-point summaries and the targets.

No Ray, no HTTP, no torch: `tests/unit/test_bench.py` checks these directly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics.

    Same definition as numpy's default ("linear"); NaN for an empty sequence.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in 0..100; got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def histogram(values: Iterable[int]) -> dict[int, int]:
    """Exact counts per integer value, keys ascending (batch sizes are small integers)."""
    return dict(sorted(Counter(values).items()))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def weighted_mean_batch(hist: Mapping[int, int]) -> float:
    """Mean batch size as the items saw it: each item reports the size of the pass it was in."""
    n = sum(hist.values())
    return sum(size * count for size, count in hist.items()) / n if n else math.nan


def forward_passes(hist: Mapping[int, int]) -> float:
    """How many forward passes the items' batch sizes imply (a pass of size s has s items)."""
    return sum(count / size for size, count in hist.items() if size > 0)


def pass_mean_batch(hist: Mapping[int, int]) -> float:
    """Mean batch size per forward pass (what the Model saw), not per item."""
    passes = forward_passes(hist)
    return sum(hist.values()) / passes if passes else math.nan


@dataclass
class Sample:
    """One completed request as the load generator saw it."""

    sent: float  # perf_counter seconds
    done: float
    status: int
    images: int  # images answered successfully in this request
    failed_items: int = 0  # multipart items answered with an error
    batch_sizes: list[int] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)

    @property
    def latency_ms(self) -> float:
        return (self.done - self.sent) * 1000.0


def summarise(samples: Sequence[Sample], window_s: float) -> dict[str, Any]:
    """Throughput, latency percentiles, errors, batch sizes and server timings for one point."""
    ok = [s for s in samples if s.status == 200]
    lat = [s.latency_ms for s in ok]
    images = sum(s.images for s in ok)
    hist = histogram(b for s in ok for b in s.batch_sizes)
    timing_keys = ("preprocess", "batch_wait", "inference", "postprocess", "total")
    timings = {k: mean([t[k] for s in ok for t in s.timings if k in t]) for k in timing_keys}
    errors = Counter(str(s.status) for s in samples if s.status != 200)
    item_errors = sum(s.failed_items for s in samples)
    return {
        "requests": len(samples),
        "ok_requests": len(ok),
        "images": images,
        "window_s": window_s,
        "throughput_rps": len(ok) / window_s if window_s > 0 else math.nan,
        "throughput_ips": images / window_s if window_s > 0 else math.nan,
        "latency_ms": {
            "mean": mean(lat),
            "p50": percentile(lat, 50),
            "p90": percentile(lat, 90),
            "p99": percentile(lat, 99),
            "max": max(lat) if lat else math.nan,
        },
        "errors": sum(errors.values()) + item_errors,
        "errors_by_status": dict(errors) | ({"item": item_errors} if item_errors else {}),
        "batch_size_hist": {str(k): v for k, v in hist.items()},
        "batch_size_mean": weighted_mean_batch(hist),
        "batch_size_mean_per_pass": pass_mean_batch(hist),
        "server_ms": timings,
    }


@dataclass(frozen=True)
class Target:
    name: str
    passed: bool
    measured: float
    limit: float
    detail: str

    def line(self) -> str:
        verdict = "PASS" if self.passed else "MISS"
        return f"{verdict}  {self.name}: {self.detail}"


def throughput_target(name: str, served_ips: float, raw_ips: float, ratio: float) -> Target:
    """served >= ratio x raw."""
    limit = ratio * raw_ips
    return Target(
        name,
        served_ips >= limit,
        served_ips,
        limit,
        f"{served_ips:.1f} img/s vs {ratio:.2f} x raw {raw_ips:.1f} = {limit:.1f} "
        f"({served_ips / raw_ips:.2f} x raw)"
        if raw_ips > 0
        else "no raw measurement",
    )


def p99_target(name: str, p99_ms: float, concurrency: int, throughput_rps: float) -> Target:
    """p99 <= 1.5 x (concurrency / throughput): the tail is at most 1.5 x the mean queueing time."""
    limit = 1.5 * concurrency / throughput_rps * 1000.0 if throughput_rps > 0 else math.nan
    return Target(
        name,
        p99_ms <= limit,
        p99_ms,
        limit,
        f"p99 {p99_ms:.0f} ms vs 1.5 x {concurrency} / {throughput_rps:.1f} req/s = {limit:.0f} ms",
    )


def batch_fill_target(name: str, mean_batch: float, max_batch: int) -> Target:
    """Mean batch size >= 0.9 x max_batch_size when the offered load can fill batches."""
    limit = 0.9 * max_batch
    return Target(
        name,
        mean_batch >= limit,
        mean_batch,
        limit,
        f"mean batch {mean_batch:.2f} vs 0.9 x {max_batch} = {limit:.1f}",
    )


def idle_latency_target(
    name: str, p50_ms: float, raw_single_ms: float, batch_wait_ms: float, slack_ms: float = 3.0
) -> Target:
    """At concurrency 1: p50 <= raw single-image latency + the batch wait + slack."""
    limit = raw_single_ms + batch_wait_ms + slack_ms
    overhead = p50_ms - raw_single_ms - batch_wait_ms
    return Target(
        name,
        p50_ms <= limit,
        p50_ms,
        limit,
        f"p50 {p50_ms:.1f} ms vs raw {raw_single_ms:.1f} + wait {batch_wait_ms:.0f} + "
        f"{slack_ms:.0f} = {limit:.1f} ms (overhead {overhead:+.1f} ms)",
    )


def effective_batch_wait_ms(max_batch_size: int, batch_wait_timeout_s: float) -> float:
    """The wait an idle request pays: none when a batch of one is already full."""
    return 0.0 if max_batch_size <= 1 else batch_wait_timeout_s * 1000.0
