"""The Python handle API: images and keyword options in, `Result`s out; errors raise by type."""

from __future__ import annotations

from collections.abc import Mapping

from deployments.items import ItemError, Result, new_item_id
from deployments.transports.base import Front


class HandleApi:
    def __init__(self, front: Front) -> None:
        self._front = front

    async def predict(
        self,
        image: bytes,
        model: str | None,
        version: str | None,
        request_id: str | None,
        timeout_s: float | None,
        traceparent: str | None,
        options: Mapping[str, int | float | str | None],
    ) -> Result:
        """One image -> its `Result`; a bad image raises the typed `VisionError` subclass."""
        front = self._front
        await front.find(model)
        name = front.model_named(model)
        parsed = front.options(name, options, version)
        rid = request_id or new_item_id()
        item = front.item(image, parsed, rid, front.deadline(timeout_s), name, version)
        out = await front.caller.one(item, traceparent)
        if isinstance(out, ItemError):
            raise out.to_exception()
        return out

    async def predict_many(
        self,
        images: list[bytes],
        model: str | None,
        version: str | None,
        request_id: str | None,
        timeout_s: float | None,
        traceparent: str | None,
        options: Mapping[str, int | float | str | None],
    ) -> list[Result | ItemError]:
        """Several images -> one `Result` or `ItemError` each, in input order."""
        front = self._front
        await front.find(model)
        name = front.model_named(model)
        parsed = front.options(name, options, version)
        rid = request_id or new_item_id()
        deadline = front.deadline(timeout_s)
        items = [front.item(i, parsed, rid, deadline, name, version) for i in images]
        return await front.caller.many(items, traceparent)
