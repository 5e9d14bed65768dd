"""OpenTelemetry tracing that shows the batch; off, and next to free, unless `OTEL_*` asks for it.

Spans, and where each starts:

    ingress     Caller (one / many): one per request, a child of the client's `traceparent`
    decode      Preprocessor: one per item
    batch_wait  Model: one per item, from arriving at the Model until its forward pass starts
    forward     Model (Runner): one per forward pass, a root span with a link to the batch_wait
                span of every item it carried and `vision.batch.size`; each batch_wait span
                links back to the pass that ended it
    join        Postprocessor: one per item (not per bundle: a bundle may hold several requests'
                items, and each request's trace should show its own join, which is where that
                item's options, geometry and masks are applied)

A request's trace is ingress -> decode, batch_wait, join; the forward pass belongs to no single
request, so it is its own trace, linked both ways with every item in it.

Context crosses Ray hops explicitly, as a W3C carrier string on what already travels (`Item.trace`,
`Meta.trace`): `"<traceparent>"` or `"<traceparent> <tracestate>"` (a traceparent has no space).

Configuration is the standard OpenTelemetry environment, read once per replica in `__init__`:

    OTEL_SDK_DISABLED=true           off, whatever else is set
    OTEL_TRACES_EXPORTER             otlp, console or none (a comma-separated list); unset means
                                     off, unless an OTLP endpoint is set, which means otlp
    OTEL_EXPORTER_OTLP_ENDPOINT      (or ..._TRACES_ENDPOINT) where OTLP/HTTP spans go
    OTEL_EXPORTER_OTLP_PROTOCOL      (or ..._TRACES_PROTOCOL) http/protobuf, the exporter installed

The SDK reads the rest itself: OTEL_SERVICE_NAME (default here: vision), OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER[_ARG], OTEL_BSP_* (export batching), OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT,
_COMPRESSION, ...
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from deployments.items import Item, ItemError, RawOutput, Result, Sample

logger = logging.getLogger("ray.serve")

EXPORTERS = ("otlp", "console", "none")
PROTOCOL = "http/protobuf"
DEFAULT_SERVICE_NAME = "vision"
# A traceparent is 55 characters and a valid tracestate at most 512: longer header values are
# not parsed at all (they come from clients).
MAX_CARRIER_CHARS = 55 + 1 + 512

_PROPAGATOR = TraceContextTextMapPropagator()


class TracingConfigError(ValueError):
    """An `OTEL_*` setting this service cannot honour; the replica does not start."""


def carrier(headers: Mapping[str, str]) -> str | None:
    """The W3C carrier string of a request's `traceparent` and `tracestate` headers, or None."""
    parent = headers.get("traceparent")
    if not parent:
        return None
    state = headers.get("tracestate")
    joined = f"{parent.strip()} {state.strip()}" if state else parent.strip()
    if len(joined) <= MAX_CARRIER_CHARS:
        return joined
    return parent.strip() if len(parent) <= MAX_CARRIER_CHARS else None


def context_of(trace_carrier: str | None) -> Context:
    """The parent context a carrier string names; an empty one (a new trace) when it names none
    or is malformed."""
    if not trace_carrier:
        return Context()
    parent, _, state = trace_carrier.partition(" ")
    fields = {"traceparent": parent, "tracestate": state} if state else {"traceparent": parent}
    return _PROPAGATOR.extract(fields, context=Context())


def carrier_of(span: Span) -> str | None:
    """`span`'s context as a carrier string (what its children in other replicas start from)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    parent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    state = ctx.trace_state.to_header()
    return f"{parent} {state}" if state else parent


def exporters_from_env(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters the environment asks for; none means tracing is off.

    Raises:
        TracingConfigError: an exporter or protocol that is not available, naming the variable.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if not names:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        names = ["otlp"] if endpoint else []
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={environ.get('OTEL_TRACES_EXPORTER')!r}: {unknown} not "
            f"available; use one or more of {', '.join(EXPORTERS)}"
        )
    exporters: list[SpanExporter] = []
    for name in dict.fromkeys(names):
        if name == "otlp":
            for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
                protocol = environ.get(variable)
                if protocol:
                    if protocol.strip() != PROTOCOL:
                        raise TracingConfigError(
                            f"{variable}={protocol!r}: only {PROTOCOL} is installed (OTLP over "
                            "HTTP; a collector listens for it on port 4318)"
                        )
                    break
            # Imported only when asked for: the exporter brings requests and protobuf with it.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
    return exporters


class _Request:
    """One request's ingress span: stamps its items with the span's context, notes the answers."""

    __slots__ = ("_carrier", "_span")

    def __init__(self, span: Span | None) -> None:
        self._span = span
        self._carrier = None if span is None else carrier_of(span)

    def stamp(self, item: Item) -> Item:
        """`item`, carrying this request's context to the stages."""
        if self._carrier is None:
            return item
        return replace(item, trace=self._carrier)

    def answered(self, answers: Result | ItemError | Sequence[Result | ItemError]) -> None:
        if self._span is None:
            return
        answers = answers if isinstance(answers, Sequence) else [answers]
        errors = sorted({a.code for a in answers if isinstance(a, ItemError)})
        self._span.set_attribute("vision.items", len(answers))
        self._span.set_attribute(
            "vision.items.failed", sum(isinstance(a, ItemError) for a in answers)
        )
        if errors:
            self._span.set_attribute("vision.error.codes", errors)


_UNTRACED = _Request(None)
_UNTRACED_REQUEST = nullcontext(_UNTRACED)
_NOTHING: AbstractContextManager[None] = nullcontext()  # reusable: what every call gets when off


class Tracing:
    """One replica's tracer. Built by `from_env` in a replica's `__init__`; `OFF` (no provider)
    when the environment asks for no tracing, and then every method returns at its first line.
    Spans still buffered are exported when the replica's process exits (the SDK's atexit)."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._tracer: Tracer | None = None if provider is None else provider.get_tracer(__name__)
        # item id -> its batch_wait span, from arrival at the Model until its predict call ends
        # (a forward pass retried on halves links the same spans again).
        self._waits: dict[str, Span] = {}

    @classmethod
    def from_env(cls, stage: str) -> Tracing:
        """The tracing the standard `OTEL_*` environment asks for, for replicas of `stage`."""
        exporters = exporters_from_env(os.environ)
        if not exporters:
            return OFF
        resource = Resource.create({"vision.stage": stage})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
        provider = TracerProvider(resource=resource)
        for exporter in exporters:  # spans are exported off the request path, in batches
            provider.add_span_processor(BatchSpanProcessor(exporter))
        logger.info(
            "tracing on: %s spans of service %s",
            ", ".join(type(e).__name__ for e in exporters),
            resource.attributes.get(SERVICE_NAME),
        )
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    # --- Ingress ---------------------------------------------------------------------------

    @contextmanager
    def _ingress(self, parent: str | None, request_id: str, model: str) -> Iterator[_Request]:
        assert self._tracer is not None
        span = self._tracer.start_span(
            "ingress",
            context=context_of(parent),
            kind=SpanKind.SERVER,
            attributes={"vision.request_id": request_id, "vision.model": model},
        )
        with _ended(span):
            yield _Request(span)

    def request(
        self, parent: str | None, request_id: str, model: str = ""
    ) -> AbstractContextManager[_Request]:
        """The ingress span of one request, a child of `parent` (the client's carrier string)."""
        if self._tracer is None:
            return _UNTRACED_REQUEST
        return self._ingress(parent, request_id, model)

    # --- Preprocessor ----------------------------------------------------------------------

    def decoding(
        self, item: Item, work: Awaitable[Sample | ItemError]
    ) -> Awaitable[Sample | ItemError]:
        """`work` (the awaitable decode of `item`), inside that item's decode span."""
        if self._tracer is None:
            return work
        return self._decode(item, work)

    async def _decode(self, item: Item, work: Awaitable[Sample | ItemError]) -> Sample | ItemError:
        assert self._tracer is not None
        span = self._tracer.start_span(
            "decode",
            context=context_of(item.trace),
            attributes=_item_attributes(item.item_id, item.request_id, item.model)
            | {"vision.image.bytes": len(item.data)},
        )
        with _ended(span):
            out = await work
            if isinstance(out, ItemError):
                _failed(span, out)
            else:
                image = out.meta.image
                span.set_attribute("vision.image.width", image.width)
                span.set_attribute("vision.image.height", image.height)
                span.set_attribute("vision.image.format", image.format)
            return out

    # --- Model -----------------------------------------------------------------------------

    def waiting(self, samples: Sequence[Sample]) -> None:
        """Items arrived at the Model: each one's batch_wait span starts."""
        if self._tracer is None:
            return
        for sample in samples:
            meta = sample.meta
            earlier = self._waits.pop(meta.item_id, None)
            if earlier is not None:
                earlier.end()
            self._waits[meta.item_id] = self._tracer.start_span(
                "batch_wait",
                context=context_of(meta.trace),
                attributes=_item_attributes(meta.item_id, meta.request_id, meta.model),
            )

    def waited(self, item_ids: Sequence[str]) -> None:
        """The Model is done with these items; a batch_wait span still open (the item's caller
        gave up, or its deadline passed before any pass) ends here, marked as never run."""
        if self._tracer is None:
            return
        for item_id in item_ids:
            span = self._waits.pop(item_id, None)
            if span is not None and span.is_recording():
                span.set_attribute("vision.forward.ran", False)
                span.end()

    def forward(self, samples: Sequence[Sample]) -> AbstractContextManager[None]:
        """One forward pass over `samples`: its span, linked to each item's batch_wait span (or
        to the context the item carried, when it has none), ends their waits."""
        if self._tracer is None:
            return _NOTHING
        return self._forward(samples)

    @contextmanager
    def _forward(self, samples: Sequence[Sample]) -> Iterator[None]:
        assert self._tracer is not None
        links: list[Link] = []
        ending: list[Span] = []
        for sample in samples:
            meta = sample.meta
            wait = self._waits.get(meta.item_id)
            if wait is not None:
                linked = wait.get_span_context()
                if wait.is_recording():
                    ending.append(wait)
            else:
                linked = trace.get_current_span(context_of(meta.trace)).get_span_context()
            if linked.is_valid:
                links.append(Link(linked, {"vision.item_id": meta.item_id}))
        started_ns = time.time_ns()  # the waits end exactly where the pass starts
        span = self._tracer.start_span(
            "forward",
            context=Context(),  # a root: the pass belongs to every request in it, not one
            start_time=started_ns,
            links=links,
            attributes={
                "vision.model": samples[0].meta.model if samples else "",
                "vision.batch.size": len(samples),
                "vision.batch.item_ids": [s.item_id for s in samples],
            },
        )
        own = span.get_span_context()
        for wait in ending:
            wait.add_link(own)
            wait.set_attribute("vision.batch.size", len(samples))
            wait.end(end_time=started_ns)
        with _ended(span):
            yield

    # --- Postprocessor ---------------------------------------------------------------------

    def join(self, raw: RawOutput | ItemError, sample: Sample) -> AbstractContextManager[None]:
        """The join span of one item (an item that failed before the Model is not joined)."""
        if self._tracer is None:
            return _NOTHING
        return self._join(raw, sample)

    @contextmanager
    def _join(self, raw: RawOutput | ItemError, sample: Sample) -> Iterator[None]:
        assert self._tracer is not None
        meta = sample.meta
        span = self._tracer.start_span(
            "join",
            context=context_of(meta.trace),
            attributes=_item_attributes(meta.item_id, meta.request_id, meta.model),
        )
        with _ended(span):
            if isinstance(raw, ItemError):
                _failed(span, raw)
            else:
                span.set_attribute("vision.batch.size", raw.batch_size)
            yield


OFF = Tracing(None)


def _item_attributes(item_id: str, request_id: str, model: str) -> dict[str, str]:
    return {"vision.item_id": item_id, "vision.request_id": request_id, "vision.model": model}


def _failed(span: Span, error: ItemError) -> None:
    span.set_attribute("vision.error.code", error.code)
    span.set_status(Status(StatusCode.ERROR, error.message))


@contextmanager
def _ended(span: Span) -> Iterator[None]:
    """End `span` on the way out; an exception is recorded on it and marks it failed."""
    try:
        yield
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.end()
