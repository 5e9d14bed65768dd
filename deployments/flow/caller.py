"""The request flow, once: bundles, deadlines, the replica-failure retry, the fan-out and the join.

Transports (HTTP `/v1`, the Python handle API) parse and format; everything between receiving the
bytes and holding one `Result` or `ItemError` per image happens here. For each bundle it calls the
Preprocessor, hands the reference to its answer to the Model and to the Postprocessor, and the
Model's response to the Postprocessor; Ray resolves them in the receiving replicas, so pixels
never come back through the caller.

- Single images are coalesced (`batching.Coalescer`): those that arrive while earlier bundles are
  in flight travel on together; at low load an image goes at once, alone.
- Items that arrive together (a multipart request, `predict_many`) are a bundle from the start.
- Each item keeps its own deadline: past it, that item is answered 504 and its neighbours go on.
- A replica that dies holding a bundle: each of its items is retried once, alone, one retry at a
  time per caller, so an input that kills replicas takes at most two with it and its neighbours
  are answered. One whose solo retry dies too is quarantined by content hash (`poison`) and
  refused with 422 for a while; its request retries nothing more (the rest get 503), so a
  multipart of many such inputs cannot take two replicas each.
- One request, one model version: while a rollout runs, the bundles of one request can meet old
  and new Model replicas. The items answered by any version but the request's most common one
  are sent again (at most `_VERSION_ROUNDS` times); those still on another version get 503, so
  no answer ever mixes versions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.errors import DeadlineExceeded, Overloaded, PoisonImage, UnknownModel
from deployments.flow.batching import Coalescer, chunks
from deployments.flow.catalogue import Catalogue, ModelCard
from deployments.flow.poison import Quarantine, Retries, content_hash
from deployments.items import Item, ItemError, Result
from deployments.metrics import IngressMetrics
from deployments.settings import Bundles, Poison
from deployments.tracing import OFF, Tracing

logger = logging.getLogger("ray.serve")

# Failures that mean a replica (or its node) went away while it held the item: worth one retry.
_REPLICA_FAILURES = (RayActorError, WorkerCrashedError, ObjectLostError)
_AT_CAPACITY = "the service is at capacity; retry shortly"

Answer = Result | ItemError
# Hashing releases the GIL; above this an image is hashed off the event loop.
_HASH_INLINE_BYTES = 256 * 1024
# How often a request's items answered by a minority model version are sent again.
_VERSION_ROUNDS = 3
_VERSION_CHANGED = "the model's version changed while this request ran; retry it"

__all__ = ["Caller", "failure_kind"]


def failure_kind(exc: BaseException) -> str | None:
    """'overloaded' (a full queue), 'replica' (a replica died holding the item) or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BackPressureError | DeploymentUnavailableError):
            return "overloaded"
        if isinstance(seen, _REPLICA_FAILURES):
            return "replica"
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def _expired(item_id: str) -> ItemError:
    return ItemError.from_exception(
        item_id, DeadlineExceeded("the request's deadline passed before an answer")
    )


class Caller:
    """One per Ingress replica: sends items through Preprocessor -> Model -> Postprocessor."""

    def __init__(
        self,
        preprocessor: DeploymentHandle[Any],
        catalogue: Catalogue,
        postprocessor: DeploymentHandle[Any],
        bundles: Bundles,
        poison: Poison,
        tracing: Tracing = OFF,
    ) -> None:
        # Pinned by reference: a Bundle passes from the Preprocessor to the Model and the
        # Postprocessor as an object reference, so pixels never come back through here (Serve's
        # by-value mode, if switched on, would route every response through the caller).
        self._pre = preprocessor.options(_by_reference=True)
        # Each model version is its own deployment, bound or its own application; the catalogue
        # says which, and what the other stages need of it.
        self.catalogue = catalogue
        self._predict: dict[tuple[str, str], tuple[Any, Any]] = {}  # key -> (handle, predict)
        self._post = postprocessor.options(_by_reference=True)
        self._bundles = bundles
        # A bundle goes to one Model deployment, so single images wait for company by model and
        # version.
        self._coalescers: dict[tuple[str, str], Coalescer[Item, Answer]] = {}
        self._metrics = IngressMetrics()
        self._quarantine = Quarantine(poison.quarantine_ttl_s, poison.max_quarantined)
        # Solo retries go one at a time, so a retry that kills its replica takes no other
        # retry with it (which would then count as a second kill of an innocent image).
        self._retry_lock = asyncio.Lock()
        self._tracing = tracing

    async def one(self, item: Item, trace: str | None = None) -> Answer:
        """One image, sent with whatever else is waiting; never raises for the client's input.

        `trace`: the client's W3C trace context (`tracing.carrier`); the request's span joins it.
        """
        with self._tracing.request(trace, item.request_id, item.model) as request:
            answer = await self._one(request.stamp(item))
            request.answered(answer)
            return answer

    async def many(
        self, items: Sequence[Item | ItemError], trace: str | None = None
    ) -> list[Answer]:
        """Items that arrived together, as bundles of at most `max_items` (and of one model each);
        `ItemError`s (already decided by the transport) keep their places. One answer per entry,
        in order.

        `trace`: the client's W3C trace context; one span for the request, whatever its size.
        """
        first = next((i for i in items if isinstance(i, Item)), None)
        request_id, model = ("", "") if first is None else (first.request_id, first.model)
        with self._tracing.request(trace, request_id, model) as request:
            answers = await self._many(
                [request.stamp(i) if isinstance(i, Item) else i for i in items]
            )
            request.answered(answers)
            return answers

    async def _one(self, item: Item) -> Answer:
        started = time.perf_counter()
        self._metrics.request({(item.model, item.version)})
        refused = await self._refused(item)
        if refused is not None:
            return self._finish(refused, item, started)
        coalescer = self._coalescers.get((item.model, item.version))
        if coalescer is None:
            b = self._bundles
            coalescer = Coalescer(self._send, b.max_items, b.max_in_flight, b.max_wait_s)
            self._coalescers[(item.model, item.version)] = coalescer

        async def through(_: Sequence[Item]) -> dict[str, Answer]:
            out = await self._within_deadline(coalescer.submit(item), [item])
            return {item.item_id: out[0]}

        answers = await through([item])
        if item.pinned:  # one image agrees with itself unless the client named its version
            answers = await self._one_version([item], answers, through)
        return self._finish(answers[item.item_id], item, started)

    async def _many(self, items: Sequence[Item | ItemError]) -> list[Answer]:
        started = time.perf_counter()
        # An entry the transport already failed has no model of its own: it counts under the
        # request's first item's (no model when the transport failed them all).
        first = next((i for i in items if isinstance(i, Item)), None)
        asked = {(i.model, i.version) for i in items if isinstance(i, Item)}
        self._metrics.request(asked or {("", "")})
        owners = [i if isinstance(i, Item) else first for i in items]
        items = [(await self._refused(i) or i) if isinstance(i, Item) else i for i in items]
        to_send = [i for i in items if isinstance(i, Item)]
        retries = Retries()  # one request: its retries stop at its first double failure
        answers = await self._one_version(
            to_send,
            await self._sent(to_send, retries),
            lambda again: self._sent(again, retries),
        )
        return [
            self._finish(answers[i.item_id] if isinstance(i, Item) else i, owner, started)
            for i, owner in zip(items, owners, strict=True)
        ]

    @staticmethod
    async def _one_version(
        items: Sequence[Item],
        answers: dict[str, Answer],
        send: Callable[[Sequence[Item]], Awaitable[dict[str, Answer]]],
    ) -> dict[str, Answer]:
        """`answers` with every item answered by the version it must have (`_other_versions`):
        the others go through `send` again, at most `_VERSION_ROUNDS` times, then get 503."""
        for _ in range(_VERSION_ROUNDS):
            again = _other_versions(items, answers)
            if not again:
                return answers
            logger.info(
                "request %s: %d image(s) answered by another model version than the rest (or "
                "than the one the client named); sending them again",
                again[0].request_id,
                len(again),
            )
            answers.update(await send(again))
        for item in _other_versions(items, answers):
            answers[item.item_id] = ItemError.from_exception(
                item.item_id, Overloaded(_VERSION_CHANGED)
            )
        return answers

    async def _sent(self, items: Sequence[Item], retries: Retries) -> dict[str, Answer]:
        """`items` through the graph as bundles of one model version each -> each one's answer
        by id."""
        by_model: dict[tuple[str, str], list[Item]] = {}
        for i in items:
            by_model.setdefault((i.model, i.version), []).append(i)
        parts = [p for same in by_model.values() for p in chunks(same, self._bundles.max_items)]
        sent = await asyncio.gather(
            *(self._within_deadline(self._send(part, retries), part) for part in parts)
        )
        return {
            item.item_id: answer
            for part, out in zip(parts, sent, strict=True)
            for item, answer in zip(part, out, strict=True)
        }

    async def _within_deadline(
        self, work: Awaitable[Answer | Sequence[Answer]], items: Sequence[Item]
    ) -> list[Answer]:
        # The items of one call share a deadline (one request, or one coalesced image).
        deadline = items[0].deadline
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        try:
            out = await asyncio.wait_for(work, timeout=timeout)
        except TimeoutError:  # the bundle goes on for the others; these are answered now
            for item in items:
                logger.info(
                    "request %s item %s: deadline passed; answering 504",
                    item.request_id,
                    item.item_id,
                )
            return [_expired(i.item_id) for i in items]
        return list(out) if isinstance(out, Sequence) else [out]

    async def _refused(self, item: Item) -> ItemError | None:
        """The 422 for an image in quarantine; None for the rest (no hashing while it is empty)."""
        if not len(self._quarantine):
            return None
        left = self._quarantine.refused_for(await self._hash(item.data))
        if left is None:
            return None
        logger.info("request %s item %s: quarantined image refused", item.request_id, item.item_id)
        refused = PoisonImage(
            f"this image crashed the service twice; the same bytes are refused for another "
            f"{left:.0f} s (of {self._quarantine.ttl_s:.0f} s)"
        )
        return ItemError.from_exception(item.item_id, refused)

    @staticmethod
    async def _hash(data: bytes) -> str:
        if len(data) <= _HASH_INLINE_BYTES:
            return content_hash(data)
        return await asyncio.to_thread(content_hash, data)

    async def _send(self, items: list[Item], retries: Retries | None = None) -> list[Answer]:
        """One bundle through the graph; after a replica failure each item is retried alone.

        `retries` is the request's when all items belong to one; coalesced single images are
        each their own request.
        """
        try:
            return list(await self._through(items))
        except UnknownModel as exc:  # unloaded since these were admitted
            return [ItemError.from_exception(i.item_id, exc) for i in items]
        except Exception as exc:
            kind = failure_kind(exc)
            if kind == "overloaded":
                return [
                    ItemError.from_exception(i.item_id, Overloaded(_AT_CAPACITY)) for i in items
                ]
            if kind != "replica":
                raise
            logger.warning(
                "a replica failed holding %d item(s) (%s); retrying each alone once: %s",
                len(items),
                exc,
                ", ".join(f"{i.request_id}/{i.item_id}" for i in items),
            )
        return list(
            await asyncio.gather(
                *(
                    self._retry_alone(i, retries if retries is not None else Retries())
                    for i in items
                )
            )
        )

    async def _retry_alone(self, item: Item, retries: Retries) -> Answer:
        async with self._retry_lock:
            if not retries.allow():
                logger.warning(
                    "request %s item %s: not retried; another image of this request crashed "
                    "a replica twice",
                    item.request_id,
                    item.item_id,
                )
                skipped = Overloaded(
                    "a replica failed while holding this image; it was not retried because "
                    "another image in this request crashed the service twice; send it again"
                )
                return ItemError.from_exception(item.item_id, skipped)
            if item.expired(time.time()):
                return _expired(item.item_id)
            try:
                (out,) = await self._through([item])
            except Exception as exc:
                kind = failure_kind(exc)
                if kind is None:
                    raise
                if kind == "replica":
                    return await self._double_failure(item, retries, exc)
                return ItemError.from_exception(item.item_id, Overloaded(_AT_CAPACITY))
            return out

    async def _double_failure(self, item: Item, retries: Retries, exc: BaseException) -> Answer:
        """Its bundle's replica died, then its own: quarantine the bytes, stop the request."""
        retries.stop()
        self._quarantine.add(await self._hash(item.data))
        ttl = self._quarantine.ttl_s
        logger.error(
            "request %s item %s: a replica failed again with this image alone (%r); its bytes "
            "are refused for %.0f s",
            item.request_id,
            item.item_id,
            exc,
            ttl,
        )
        failed = Overloaded(
            f"a replica failed while holding this image, twice (the second time alone); the "
            f"same bytes are now refused for {ttl:.0f} s"
        )
        return ItemError.from_exception(item.item_id, failed)

    def _model(self, key: tuple[str, str]) -> tuple[ModelCard, Any]:
        """A model version's card and its Model's `predict` (a version unloaded since its
        request was admitted: `UnknownModel`)."""
        served = self.catalogue.view.served.get(key)
        if served is None:
            raise UnknownModel(f"model {key[0]!r} version {key[1]!r} is no longer served")
        cached = self._predict.get(key)
        if cached is None or cached[0] is not served.handle:
            predict = served.handle.options(method_name="predict", _by_reference=True)
            cached = self._predict[key] = (served.handle, predict)
        return served.card, cached[1]

    async def _through(self, items: list[Item]) -> tuple[Answer, ...]:
        # A bundle is one model version's; what the other stages need of it travels with it.
        card, predict = self._model((items[0].model, items[0].version))
        answers_of = self.catalogue.view.answers(card.name)
        pre: Any = self._pre.remote(tuple(items), card.resize)
        outputs: Any = None
        post: Any = None
        try:
            # The bundle goes to two calls. Resolved to an ObjectRef once, here: a response
            # handed to two calls is resolved by each, and the second spins on the event loop
            # until the Preprocessor has finished (bench/README.md: the Ingress's busiest code).
            bundle = await pre._to_object_ref()
            outputs = predict.remote(bundle)
            post = self._post.remote(outputs, bundle, answers_of)
            answers: tuple[Answer, ...] = await post
        except asyncio.CancelledError:
            for response in (post, outputs, pre):  # frees batch slots not yet run
                if response is not None:
                    response.cancel()
            raise
        return answers

    def stats(self) -> dict[str, Any]:
        """This replica's bundling so far: settings, bundles and images sent, mean bundle size."""
        bundles = sum(c.bundles_sent for c in self._coalescers.values())
        images = sum(c.items_sent for c in self._coalescers.values())
        return {
            "max_items": self._bundles.max_items,
            "max_in_flight": self._bundles.max_in_flight,
            "max_wait_s": self._bundles.max_wait_s,
            "coalesced_bundles": bundles,
            "coalesced_images": images,
            "mean_coalesced_size": round(images / bundles, 2) if bundles else 0,
        }

    def _finish(self, out: Answer, item: Item | None, started: float) -> Answer:
        """`out` with its total time, counted under its model and the version that answered (an
        error: the version `item` was sent to)."""
        model, version = ("", "") if item is None else (item.model, item.version)
        if isinstance(out, ItemError):
            self._metrics.outcome(out.code, model, version)
            return out
        elapsed_s = time.perf_counter() - started
        self._metrics.observe("total", elapsed_s, model, out.model_version)
        self._metrics.outcome("ok", model, out.model_version)
        return replace(out, timings_ms={**out.timings_ms, "total": round(elapsed_s * 1e3, 3)})


def _other_versions(items: Sequence[Item], answers: Mapping[str, Answer]) -> list[Item]:
    """The items answered by another version than the one they must have, in order: a pinned
    item's own (`Item.pinned`), else its model's most common one among `answers` (ties: the
    highest version string)."""
    counts: dict[str, Counter[str]] = {}
    for item in items:
        answer = answers[item.item_id]
        if isinstance(answer, Result) and not item.pinned:
            counts.setdefault(item.model, Counter())[answer.model_version] += 1
    keep = {m: _most_common(c) for m, c in counts.items() if len(c) > 1}
    wrong = []
    for item in items:
        answer = answers[item.item_id]
        if isinstance(answer, Result):
            want = item.version if item.pinned else keep.get(item.model, answer.model_version)
            if answer.model_version != want:
                wrong.append(item)
    return wrong


def _most_common(versions: Counter[str]) -> str:
    return max(versions, key=lambda v: (versions[v], v))
