"""Pure maths for the benchmark: percentiles, histograms, per-point summaries and the targets.

No Ray, no HTTP, no torch: `tests/tools/test_bench.py` checks these directly.
"""

from __future__ import annotations

import math
import random
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
    checked: int = 0  # answered items compared with their image's reference top-5
    mismatched: int = 0  # ... and found to carry another image's answer (a mis-join)
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
        "checked_items": sum(s.checked for s in ok),
        "mismatched_items": sum(s.mismatched for s in ok),
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
    measured_both: bool = True  # False: a side of the comparison was not measured in this run

    @property
    def verdict(self) -> str:
        if not self.measured_both:
            return "not measured"
        return "PASS" if self.passed else "MISS"

    def line(self) -> str:
        return f"{self.verdict}  {self.name}: {self.detail}"


def not_measured(name: str, why: str) -> Target:
    """A target one of whose sides this run did not measure: never a PASS."""
    return Target(name, False, math.nan, math.nan, why, measured_both=False)


def best_of(values: Mapping[str, float], higher: bool = True) -> tuple[str, float] | None:
    """The best (name, value) of `values`, NaN ignored: the largest, or the smallest with
    `higher=False`; None when nothing was measured. Ties go to the first name."""
    measured = [(name, v) for name, v in values.items() if v == v]
    if not measured:
        return None
    pick = max if higher else min
    return pick(measured, key=lambda kv: kv[1])


def cores_per_1000_ips(cpu_s: float, images: int) -> float:
    """CPU cores a system needs per 1,000 images/s: its processes' CPU seconds per image x 1000
    (numerically its CPU ms per image)."""
    return cpu_s / images * 1000.0 if images > 0 else math.nan


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


# --- mis-joins: every served top-5 against the in-process reference for that exact image ------

SCORE_TOLERANCE = 1e-4  # batch composition moves a score by ~1e-8 on the CPU; images ~1e-3 apart


def with_join_tolerances(
    refs: Mapping[str, Mapping[str, Any]], k: int = 5, floor: float = SCORE_TOLERANCE
) -> dict[str, dict[str, Any]]:
    """Each reference with the widest score tolerance that still tells it from every other image.

    On a GPU (TF32 convolutions, algorithms chosen per batch size) a deep random model's scores
    move by more than `floor` between batch compositions, while two images differ by far more.
    Half the distance from an image's top-k scores to the nearest other image's scores for those
    classes (a class outside another's list counts as 0) keeps every answer within it nearer its
    own image than any other, so the check still finds every mis-join.
    """

    def scores(ref: Mapping[str, Any]) -> dict[int, float]:
        return dict(zip(ref["class_ids"], ref["scores"], strict=True))

    table = {name: scores(ref) for name, ref in refs.items()}
    out = {}
    for name, ref in refs.items():
        own = table[name]
        top = list(own)[:k]
        gaps = [
            max(abs(own[c] - other.get(c, 0.0)) for c in top)
            for other_name, other in table.items()
            if other_name != name
        ]
        out[name] = {**ref, "tolerance": max(floor, min(gaps, default=0.0) / 2)}
    return out


def top_k_matches(
    predictions: Sequence[Mapping[str, Any]],
    reference: Mapping[str, Sequence[Any]],
    k: int = 5,
    tolerance: float = SCORE_TOLERANCE,
) -> bool:
    """Whether a served top-k is the reference image's: same classes, same scores within tolerance.

    `reference` holds the image's top (k + a few) class ids and scores computed alone in-process,
    so near-ties that swap order between batch sizes still match. The ids alone would not do: a
    randomly initialised model ranks the same few classes first for every image, but the scores
    differ per image. A `tolerance` in the reference (`with_join_tolerances`) overrides the
    given one.
    """
    tolerance = float(reference.get("tolerance", tolerance))
    ref = dict(zip(reference["class_ids"], reference["scores"], strict=True))
    if len(predictions) != min(k, len(ref)):
        return False
    for p in predictions:
        score = ref.get(int(p["class_id"]))
        if score is None or abs(float(p["score"]) - float(score)) > tolerance:
            return False
    return True


# --- serving overhead: service CPU outside the forward pass and the decode, by process -----------

PROCESS_GROUP_ORDER = (
    "Ingress",
    "Preprocessor",
    "Model",
    "Postprocessor",
    "HTTP proxy",
    "raylet",
    "GCS/controller/other",
)
_OTHER_ROLES = frozenset(
    {
        "controller",
        "gcs_server",
        "dashboard",
        "dashboard agent",
        "runtime_env agent",
        "log monitor",
        "monitor",
        "serve run driver",
        "ray worker (idle)",
        "gone",
        "other",
    }
)


def process_group(role: str) -> str:
    """The column a process's CPU lands in: a Serve replica by its deployment name, the HTTP
    proxy, the raylet, or everything else Ray runs (GCS, Serve controller, dashboard, monitors).
    Roles of peers that are not Ray (LitServe's processes) pass through unchanged."""
    if role in ("HTTP proxy", "raylet"):
        return role
    if role in _OTHER_ROLES or role.startswith(("ray::", "other")):
        return "GCS/controller/other"
    return role


def forward_cpu_per_image(table: Mapping[str, float], batch_size: int) -> float:
    """Raw forward CPU ms per image at `batch_size`, the nearest measured size when not measured."""
    if not table:
        return math.nan
    sizes = sorted(int(k) for k in table)
    nearest = min(sizes, key=lambda s: (abs(s - batch_size), -s))
    return float(table[str(nearest)])


def serving_overhead(
    by_role_s: Mapping[str, float],
    images: int,
    batch_hist: Mapping[int, int] | Mapping[str, int],
    decode_cpu_ms: float,
    forward_cpu_ms_by_batch: Mapping[str, float],
    forward_role: str,
    decode_role: str,
) -> dict[str, Any]:
    """Service CPU ms per image with the work any server must do taken out, split by process.

    The forward pass costs what the raw pipeline measured per image at the batch size each item
    was actually in (`batch_hist`, per item); it is taken from the process that runs the model.
    The decode costs the raw pipeline's decode CPU per image, taken from the process that decodes.
    What is left is serving: HTTP, (de)serialisation, hops between processes, queues, Ray's own
    processes. Items without a reported batch size count at the largest measured size.
    """
    if images <= 0:
        return {
            "total_ms": math.nan,
            "by_group_ms": {},
            "forward_ms": math.nan,
            "decode_ms": math.nan,
        }
    groups: dict[str, float] = {}
    for role, secs in by_role_s.items():
        g = process_group(role)
        groups[g] = groups.get(g, 0.0) + secs * 1000.0
    hist = {int(k): int(v) for k, v in batch_hist.items()}
    counted = sum(hist.values())
    largest = max((int(k) for k in forward_cpu_ms_by_batch), default=1)
    forward_ms = sum(n * forward_cpu_per_image(forward_cpu_ms_by_batch, b) for b, n in hist.items())
    forward_ms += max(0, images - counted) * forward_cpu_per_image(forward_cpu_ms_by_batch, largest)
    decode_ms = images * decode_cpu_ms
    for role, ms in ((forward_role, forward_ms), (decode_role, decode_ms)):
        key = role if role in groups else "unattributed"
        groups[key] = groups.get(key, 0.0) - ms
    order = {g: i for i, g in enumerate(PROCESS_GROUP_ORDER)}
    by_group = {
        g: ms / images
        for g, ms in sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    }
    return {
        "total_ms": sum(by_group.values()),
        "by_group_ms": by_group,
        "forward_ms": forward_ms / images,
        "decode_ms": decode_ms / images,
    }


# --- open loop: a fixed arrival rate, bounded in count and time ---------------------------------


def arrival_offsets(
    rate: float, count: int, process: str = "poisson", seed: int = 0
) -> list[float]:
    """Send times in seconds from the start: Poisson (exponential gaps, seeded) or uniform."""
    if rate <= 0 or count <= 0:
        return []
    if process == "uniform":
        return [i / rate for i in range(count)]
    if process != "poisson":
        raise ValueError(f"arrival process must be poisson or uniform; got {process!r}")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def open_loop_plan(
    peak_rps: float,
    fractions: Sequence[float],
    duration_s: float,
    min_requests: int = 20,
    max_requests: int = 2000,
) -> list[tuple[float, float, int]]:
    """(fraction of the closed-loop peak, offered requests/s, requests) per open-loop point."""
    plan = []
    for f in fractions:
        rate = f * peak_rps
        if not rate > 0:
            continue
        n = max(min_requests, min(max_requests, round(rate * duration_s)))
        plan.append((f, rate, n))
    return plan


# --- the targets, generic forms -----------------------------------------------------------


def ratio_target(name: str, measured: float, reference: float, ratio: float, what: str) -> Target:
    """measured >= ratio x reference (throughputs)."""
    limit = ratio * reference
    ok = reference > 0 and measured >= limit
    detail = (
        f"{measured:.1f} img/s vs {ratio:.2f} x {what} {reference:.1f} = {limit:.1f} "
        f"({measured / reference:.2f} x)"
        if reference > 0
        else f"no {what} measurement"
    )
    return Target(name, ok, measured, limit, detail)


def ceiling_target(name: str, measured: float, limit: float, unit: str) -> Target:
    """measured <= limit; a NaN measurement misses."""
    return Target(
        name, measured <= limit, measured, limit, f"{measured:.1f} vs <= {limit:g} {unit}"
    )


def peer_latency_target(
    name: str, p50_ms: float, peer_p50_ms: float, slack_ms: float, peer: str = "peer"
) -> Target:
    """p50 <= the peer's p50 + slack."""
    limit = peer_p50_ms + slack_ms
    return Target(
        name,
        p50_ms <= limit,
        p50_ms,
        limit,
        f"p50 {p50_ms:.1f} ms vs {peer} {peer_p50_ms:.1f} + {slack_ms:g} = {limit:.1f} ms "
        f"({p50_ms - peer_p50_ms:+.1f} ms)",
    )


def mismatch_target(name: str, mismatched: int, checked: int) -> Target:
    return Target(
        name,
        mismatched == 0 and checked > 0,
        float(mismatched),
        0.0,
        f"{mismatched} of {checked} answered items did not match their image's reference top-5",
    )
