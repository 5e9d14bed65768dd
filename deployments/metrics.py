"""The service's own metrics, exported through Ray's metrics endpoint (names get a `ray_` prefix).

Create them inside a replica (`StageMetrics()` in `__init__`), never at import: a metric belongs to
the process that records it. Serve adds `deployment`, `replica` and `application` tags itself.

    vision_stage_latency_ms{stage}     histogram  preprocess, inference, postprocess, total
    vision_items_total{outcome}        counter    ok, or the error code (corrupt_image, ...)
    vision_batch_size                  histogram  items per forward pass
    vision_batch_wait_ms               histogram  per item: arrival at the Model to its forward pass
    vision_model_queue_depth           gauge      items waiting in the Model's batch queue
"""

from __future__ import annotations

from ray.serve import metrics

LATENCY_MS = [1.0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_SIZES = [1.0, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class StageMetrics:
    def __init__(self) -> None:
        self.latency = metrics.Histogram(
            "vision_stage_latency_ms",
            description="Time an item spends in one stage (total: end to end at the ingress).",
            boundaries=LATENCY_MS,
            tag_keys=("stage",),
        )
        self.items = metrics.Counter(
            "vision_items",
            description="Items answered, by outcome: ok or the error code.",
            tag_keys=("outcome",),
        )

    def observe(self, stage: str, ms: float) -> None:
        self.latency.observe(ms, tags={"stage": stage})

    def outcome(self, outcome: str) -> None:
        self.items.inc(tags={"outcome": outcome})


class ModelMetrics(StageMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = metrics.Histogram(
            "vision_batch_size",
            description="Items in each forward pass.",
            boundaries=BATCH_SIZES,
        )
        self.batch_wait = metrics.Histogram(
            "vision_batch_wait_ms",
            description="Per item: from arrival at the Model to the start of its forward pass.",
            boundaries=LATENCY_MS,
        )
        self.queue_depth = metrics.Gauge(
            "vision_model_queue_depth",
            description="Items waiting in the Model replica's batch queue.",
        )
