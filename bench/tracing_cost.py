"""CPU per image of tracing's call sites, off and on, in one process (no Ray, no model).

    .venv/bin/python -m bench.tracing_cost

Every image meets what it meets in the graph: the HTTP header lookup, the ingress span, decode,
batch wait, a share of a forward pass of 8, and join. `on` exports to a discarding exporter, so
it is the cost of making spans, not of sending them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from starlette.datastructures import Headers

from deployments.items import ImageInfo, Item, Meta, Options, RawOutput, Sample
from deployments.pixels.geometry import plan
from deployments.tracing import OFF, Tracing, carrier

BATCH = 8
HEADERS = Headers(
    {
        "content-type": "image/jpeg",
        "x-request-id": "r",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
)
PIXELS = np.zeros((4, 4, 3), np.uint8)
GEOMETRY = plan("stretch", 4, 4, 4, 4)


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _decode(item: Item) -> Sample:
    image = ImageInfo(4, 4, "PNG")
    meta = Meta(item.item_id, item.request_id, image, GEOMETRY, Options(), trace=item.trace)
    return Sample(meta, PIXELS)


async def _images(tracing: Tracing | None, count: int) -> None:
    """`count` images through the call sites; None: the same work with no tracing call at all."""
    for _ in range(count // BATCH):
        samples = []
        for i in range(BATCH):
            item = Item(f"i{i}", "r", b"", Options())
            if tracing is None:
                samples.append(await _decode(item))
                continue
            with tracing.request(carrier(HEADERS), "r") as request:
                item = request.stamp(item)
                decoded = await tracing.decoding(item, _decode(item))
                assert isinstance(decoded, Sample)
                samples.append(decoded)
                request.answered([])
        if tracing is None:
            continue
        tracing.waiting(samples)
        with tracing.forward(samples):
            pass
        for sample in samples:
            with tracing.join(RawOutput(sample.item_id, {}, BATCH, 0.0), sample):
                pass
        tracing.waited([s.item_id for s in samples])


def cpu_us_per_image(tracing: Tracing | None, count: int) -> float:
    asyncio.run(_images(tracing, count // 10))  # warm up
    start = time.process_time()
    asyncio.run(_images(tracing, count))
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    bare = cpu_us_per_image(None, 80_000)
    off = cpu_us_per_image(OFF, 80_000)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=1 << 20))
    on = cpu_us_per_image(Tracing(provider), 16_000)  # the export thread's CPU is included
    provider.shutdown()
    print(f"tracing off: +{off - bare:.1f} us of CPU per image")
    print(f"tracing on:  +{on - bare:.1f} us of CPU per image, before export")


if __name__ == "__main__":
    main()
