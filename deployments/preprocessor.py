"""Preprocessor: decode and validate one image, emit a `Sample` whose `Meta` travels with it."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from deployments.errors import ClientError, DeadlineExceeded
from deployments.imaging import DecodeLimits, ResizeSpec, decode
from deployments.metrics import StageMetrics
from deployments.types import ItemError, Meta, Options, Sample, new_item_id

logger = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=16)
class Preprocessor:
    def __init__(self, resize: ResizeSpec, limits: DecodeLimits, threads: int = 2) -> None:
        self._resize = resize
        self._limits = limits
        # Pillow releases the GIL while decoding and resizing, so threads use every core.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self._metrics = StageMetrics()

    async def __call__(
        self,
        data: bytes,
        options: Options,
        request_id: str,
        item_id: str | None = None,
        deadline: float | None = None,
    ) -> Sample | ItemError:
        """Bytes -> `Sample`, or the item's `ItemError` when the bytes are not a usable image."""
        item_id = item_id or new_item_id()
        start = time.perf_counter()
        if deadline is not None and time.time() >= deadline:
            logger.info("request %s item %s: deadline passed before decoding", request_id, item_id)
            expired = DeadlineExceeded("the deadline passed before the image was decoded")
            return ItemError.from_exception(item_id, expired)
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(self._pool, decode, data, self._resize, self._limits)
        except ClientError as exc:
            logger.info("request %s item %s rejected: %s", request_id, item_id, exc.message)
            return ItemError.from_exception(item_id, exc)
        finally:
            self._metrics.observe("preprocess", (time.perf_counter() - start) * 1000.0)
        meta = Meta(
            item_id=item_id,
            request_id=request_id,
            image=done.image,
            geometry=done.geometry,
            options=options,
            deadline=deadline,
            preprocess_ms=(time.perf_counter() - start) * 1000.0,
        )
        return Sample(meta=meta, pixels=done.pixels)

    def ready(self) -> bool:
        return True
