"""The service's own metrics, exported through Ray's metrics endpoint (names get a `ray_` prefix).

Create them inside a replica (`StageMetrics()` in `__init__`), never at import: a metric belongs to
the process that records it. Serve adds `deployment`, `replica` and `application` tags itself.
Every one carries the served model (`model`: its name in the routes, `models:` in
serve_config.yaml) and that model's `version` (`model_tags`). Times are in seconds.

    vision_requests_total{model,version}                counter    requests that reached the
                                                                   request flow (each model a
                                                                   request names counts it once)
    vision_items_total{model,version,outcome}           counter    images answered: ok, or the
                                                                   error code (corrupt_image, ...)
    vision_stage_latency_seconds{model,version,stage}   histogram  preprocess, inference,
                                                                   postprocess, total
    vision_batch_size{model,version}                    histogram  images per forward pass
    vision_batch_wait_seconds{model,version}            histogram  per image: arrival at the Model
                                                                   to the start of its pass
    vision_model_queue_depth{model,version}             gauge      images waiting in a Model
                                                                   replica's batch queue
"""

from __future__ import annotations

from typing import cast

from ray.serve import metrics

LATENCY_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2, 5, 10, 30]
# Half-integer bounds: a bucket up to 8 holds one batch size, whose value is then exact in the
# histogram's quantiles and sum (Ray exports the sum from bucket midpoints).
BATCH_SIZES = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 16.5, 32.5, 64.5, 128.5, 256.5, 512.5]


def _tag_keys(*keys: str) -> tuple[str]:
    # Ray annotates `tag_keys` as `Tuple[str]`, a one-key tuple; it takes any number of keys.
    return cast("tuple[str]", keys)


MODEL_TAGS = _tag_keys("model", "version")


def model_tags(model: str, version: str) -> dict[str, str]:
    """The tags that name a served model (by its routing name) and its version."""
    return {"model": model, "version": version}


class StageMetrics:
    def __init__(self) -> None:
        self.latency = metrics.Histogram(
            "vision_stage_latency_seconds",
            description="Time an item spends in one stage (total: end to end at the ingress).",
            boundaries=LATENCY_S,
            tag_keys=_tag_keys("stage", *MODEL_TAGS),
        )
        self.items = metrics.Counter(
            "vision_items_total",
            description="Items answered, by outcome: ok or the error code.",
            tag_keys=_tag_keys("outcome", *MODEL_TAGS),
        )

    def observe(self, stage: str, seconds: float, model: str, version: str) -> None:
        self.latency.observe(seconds, tags={"stage": stage, **model_tags(model, version)})

    def outcome(self, outcome: str, model: str, version: str) -> None:
        self.items.inc(tags={"outcome": outcome, **model_tags(model, version)})


class IngressMetrics(StageMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.requests = metrics.Counter(
            "vision_requests_total",
            description="Requests that reached the request flow, by each model they name.",
            tag_keys=MODEL_TAGS,
        )

    def request(self, models: set[tuple[str, str]]) -> None:
        """One request that names each (model, version) in `models`."""
        for model, version in models:
            self.requests.inc(tags=model_tags(model, version))


class ModelMetrics(StageMetrics):
    """A Model replica's metrics: it serves one model, so every one is tagged with it."""

    def __init__(self, model: str, version: str) -> None:
        super().__init__()
        self.model = model
        self.version = version
        self.batch_size = metrics.Histogram(
            "vision_batch_size",
            description="Items in each forward pass.",
            boundaries=BATCH_SIZES,
            tag_keys=MODEL_TAGS,
        )
        self.batch_wait = metrics.Histogram(
            "vision_batch_wait_seconds",
            description="Per item: from arrival at the Model to the start of its forward pass.",
            boundaries=LATENCY_S,
            tag_keys=MODEL_TAGS,
        )
        self.queue_depth = metrics.Gauge(
            "vision_model_queue_depth",
            description="Items waiting in the Model replica's batch queue.",
            tag_keys=MODEL_TAGS,
        )
        for metric in (self.batch_size, self.batch_wait, self.queue_depth):
            metric.set_default_tags(model_tags(model, version))
