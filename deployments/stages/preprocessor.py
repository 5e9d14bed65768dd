"""Preprocessor: decode and validate a bundle of images, emit one `Bundle` of `Sample`s.

Each item is decoded on its own (in the replica's threads) and becomes a `Sample` whose `Meta`
travels with it, or that item's `ItemError`; the bundle is one object for the whole call. For a
model that sets `gpu_decode`, a JPEG's header is read and checked here and its bytes travel on
for the Model's device to decode (`imaging.prepare`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ray import serve

from deployments.errors import DeadlineExceeded, VisionError
from deployments.items import Bundle, Item, ItemError, Meta, Sample
from deployments.metrics import StageMetrics
from deployments.pixels.imaging import Deferred, ResizeSpec, prepare
from deployments.settings import Limits
from deployments.tracing import Tracing

logger = logging.getLogger("ray.serve")


@serve.deployment
class Preprocessor:
    def __init__(self, limits: Limits, threads: int, draft: bool) -> None:
        self._limits = limits
        self._draft = draft  # args.jpeg_draft: the front's, whatever the model
        # Pillow releases the GIL while decoding and resizing, so threads use every core.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self._metrics = StageMetrics()
        self._tracing = Tracing.from_env("Preprocessor")

    async def __call__(self, items: Sequence[Item], resize: ResizeSpec) -> Bundle:
        """Items of one model version -> a `Bundle` with a `Sample` or an `ItemError` per item,
        in order; `resize` is that version's input (the Ingress sends its card's)."""
        if resize.draft != self._draft:
            resize = replace(resize, draft=self._draft)
        decoded = await asyncio.gather(
            *(self._tracing.decoding(item, self._one(item, resize)) for item in items)
        )
        return Bundle(items=tuple(decoded))

    async def _one(self, item: Item, resize: ResizeSpec) -> Sample | ItemError:
        start = time.perf_counter()
        if item.expired(time.time()):
            logger.info(
                "request %s item %s: deadline passed before decoding", item.request_id, item.item_id
            )
            expired = DeadlineExceeded("the deadline passed before the image was decoded")
            return ItemError.from_exception(item.item_id, expired)
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(
                self._pool,
                prepare,
                item.data,
                resize,
                self._limits,
            )
        except VisionError as exc:  # the client's input, or a fault that is this item's alone
            logger.info(
                "request %s item %s rejected: %s", item.request_id, item.item_id, exc.message
            )
            return ItemError.from_exception(item.item_id, exc)
        finally:
            self._metrics.observe(
                "preprocess", time.perf_counter() - start, item.model, item.version
            )
        meta = Meta(
            item_id=item.item_id,
            request_id=item.request_id,
            image=done.image,
            geometry=done.geometry,
            options=item.options,
            deadline=item.deadline,
            preprocess_ms=(time.perf_counter() - start) * 1000.0,
            model=item.model,
            trace=item.trace,
            version=item.version,
        )
        return Sample(meta=meta, pixels=done.jpeg if isinstance(done, Deferred) else done.pixels)

    def ready(self) -> bool:
        return True
