"""Tracing without Ray: the batch shows (one forward span, a link per item), contexts cross the
stages as carrier strings, the client's traceparent is honoured, and it is off unless configured."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from opentelemetry import trace as api
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from torch import nn

from deployments import tasks
from deployments.flow.batching import ForwardQueue
from deployments.flow.catalogue import ModelAnswers
from deployments.items import (
    Bundle,
    ImageInfo,
    Item,
    ItemError,
    Meta,
    Options,
    RawOutput,
    Result,
    Sample,
)
from deployments.pixels.geometry import plan
from deployments.runtime.inference import Runner
from deployments.runtime.spec import Resolved
from deployments.stages.postprocessor import join_bundle
from deployments.tracing import (
    OFF,
    Tracing,
    TracingConfigError,
    carrier,
    context_of,
    exporters_from_env,
)
from tests import settings

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SETTINGS = Resolved(
    name="tiny",
    task="classification",
    labels=(),
    input_width=16,
    input_height=16,
    resize="stretch",
    resize_size=None,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    weights="none",
    weights_kind="none",
    max_candidates=4,
)


class Tiny(nn.Module):
    """Four class scores from the mean colour; fails on batches larger than `fail_above`."""

    def __init__(self, fail_above: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3, 4)
        self.fail_above = fail_above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_above is not None and len(x) > self.fail_above:
            raise RuntimeError("out of memory")
        out: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return out


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exported: InMemorySpanExporter) -> Iterator[Tracing]:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    yield Tracing(provider)
    provider.shutdown()


def _sample(item_id: str, trace: str | None, size: int = 16) -> Sample:
    pixels = np.full((size, size, 3), len(item_id) * 20, dtype=np.uint8)
    geometry = plan("stretch", size, size, size, size)
    image = ImageInfo(size, size, "PNG")
    meta = Meta(item_id, f"req-{item_id}", image, geometry, Options(), trace=trace)
    return Sample(meta=meta, pixels=pixels)


def _trace_id(trace: str | None) -> int:
    return api.get_current_span(context_of(trace)).get_span_context().trace_id


def _named(exported: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exported.get_finished_spans() if s.name == name]


def _client(n: int) -> str:
    """The carrier of a distinct client span per item: its own trace id."""
    return f"00-{n + 1:032x}-{n + 1:016x}-01"


def _through_queue(runner: Runner, samples: list[Sample], max_batch_size: int) -> list[object]:
    async def go() -> list[object]:
        queue: ForwardQueue[Sample, RawOutput | ItemError] = ForwardQueue(
            lambda chunk: asyncio.to_thread(runner.run, chunk), max_batch_size
        )
        return list(await asyncio.gather(*queue.put(samples)))

    return asyncio.run(go())


def test_n_items_in_one_forward_pass_give_one_forward_span_with_n_links(
    tracing: Tracing, exported: InMemorySpanExporter
) -> None:
    n = 5
    samples = [_sample(f"item{i}", _client(i)) for i in range(n)]
    runner = Runner(Tiny(), SETTINGS, torch.device("cpu"), tracing=tracing)
    tracing.waiting(samples)  # what the Model does as the items arrive
    outputs = _through_queue(runner, samples, max_batch_size=n)
    tracing.waited([s.item_id for s in samples])
    assert all(isinstance(o, RawOutput) and o.batch_size == n for o in outputs)

    (forward,) = _named(exported, "forward")
    assert forward.attributes is not None
    assert forward.attributes["vision.batch.size"] == n
    assert list(forward.attributes["vision.batch.item_ids"]) == [s.item_id for s in samples]
    assert forward.parent is None, "a pass belongs to no single request"
    waits = {s.attributes["vision.item_id"]: s for s in _named(exported, "batch_wait")}
    assert sorted(waits) == sorted(s.item_id for s in samples)
    assert len(forward.links) == n
    for link, sample in zip(forward.links, samples, strict=True):
        wait = waits[sample.item_id]
        # Each link is that item's own batch_wait span, in the item's own (client's) trace.
        assert link.context == wait.context
        assert link.context.trace_id == _trace_id(sample.meta.trace)
        assert link.attributes is not None and link.attributes["vision.item_id"] == sample.item_id
        # The wait ends as the pass starts, and links back to it.
        assert wait.end_time is not None and forward.start_time is not None
        assert wait.end_time <= forward.start_time
        assert [w.context for w in wait.links] == [forward.context]
        assert wait.attributes is not None and wait.attributes["vision.batch.size"] == n


def test_items_taken_in_two_passes_give_two_forward_spans(
    tracing: Tracing, exported: InMemorySpanExporter
) -> None:
    samples = [_sample(f"item{i}", _client(i)) for i in range(6)]
    runner = Runner(Tiny(), SETTINGS, torch.device("cpu"), tracing=tracing)
    tracing.waiting(samples)
    _through_queue(runner, samples, max_batch_size=4)
    forwards = _named(exported, "forward")
    sizes = sorted(f.attributes["vision.batch.size"] for f in forwards if f.attributes)
    assert sizes == [2, 4]
    linked = [link.context.span_id for f in forwards for link in f.links]
    assert sorted(linked) == sorted(w.context.span_id for w in _named(exported, "batch_wait"))


def test_a_failed_pass_is_a_failed_span_and_its_halves_link_the_same_items(
    tracing: Tracing, exported: InMemorySpanExporter
) -> None:
    samples = [_sample(f"item{i}", _client(i)) for i in range(4)]
    runner = Runner(Tiny(fail_above=2), SETTINGS, torch.device("cpu"), tracing=tracing)
    tracing.waiting(samples)
    outputs = runner.run(samples)
    assert [o.batch_size for o in outputs if isinstance(o, RawOutput)] == [2, 2, 2, 2]
    forwards = _named(exported, "forward")
    failed = [f for f in forwards if f.status.status_code is StatusCode.ERROR]
    assert [len(f.links) for f in failed] == [4]
    assert failed[0].events[0].name == "exception"
    halves = [f for f in forwards if f not in failed]
    assert [len(f.links) for f in halves] == [2, 2]
    waits = {w.context.span_id for w in _named(exported, "batch_wait")}
    assert len(waits) == 4, "each item's wait ends once"
    assert {link.context.span_id for f in halves for link in f.links} == waits


def test_a_request_is_one_trace_under_the_clients_span(
    tracing: Tracing, exported: InMemorySpanExporter
) -> None:
    """ingress (child of the client's span) -> decode, batch_wait and join per item."""
    state = "vendor=abc,other=1"
    parent = carrier({"traceparent": CLIENT, "tracestate": state})

    async def flow() -> tuple[Result | ItemError, ...]:
        with tracing.request(parent, "req-1") as request:
            items = [
                request.stamp(Item(f"item{i}", "req-1", b"bytes", Options())) for i in range(3)
            ]

            async def decode(item: Item) -> Sample:
                return _sample(item.item_id, item.trace)

            decoded = [await tracing.decoding(item, decode(item)) for item in items]
            samples = [s for s in decoded if isinstance(s, Sample)]
            tracing.waiting(samples)
            runner = Runner(Tiny(), SETTINGS, torch.device("cpu"), tracing=tracing)
            outputs = runner.run(samples)
            tracing.waited([s.item_id for s in samples])
            task = tasks.get("classification")
            answers = join_bundle(
                outputs,
                Bundle(tuple(samples)),
                models={("", ""): ModelAnswers("tiny", task.name, ())},
                defaults={task.name: settings.task_defaults(task)},
                tracing=tracing,
            )
            request.answered(answers)
            return answers

    answers = asyncio.run(flow())
    assert all(isinstance(a, Result) for a in answers)
    (ingress,) = _named(exported, "ingress")
    assert ingress.parent is not None
    assert f"{ingress.context.trace_id:032x}" == CLIENT_TRACE
    assert f"{ingress.parent.span_id:016x}" == CLIENT_SPAN
    assert ingress.context.trace_state.to_header() == state
    assert ingress.attributes is not None and ingress.attributes["vision.items"] == 3
    for name in ("decode", "batch_wait", "join"):
        spans = _named(exported, name)
        assert len(spans) == 3, name
        for span in spans:
            assert span.parent is not None and span.parent.span_id == ingress.context.span_id
            assert span.context.trace_id == ingress.context.trace_id
    (forward,) = _named(exported, "forward")
    assert len(forward.links) == 3
    assert {link.context.trace_id for link in forward.links} == {ingress.context.trace_id}


def test_a_decode_error_marks_its_span(tracing: Tracing, exported: InMemorySpanExporter) -> None:
    item = Item("bad", "req", b"not an image", Options(), trace=CLIENT)

    async def decode() -> ItemError:
        return ItemError("bad", "corrupt_image", "the image could not be decoded", 422)

    out = asyncio.run(_awaited(tracing.decoding(item, decode())))
    assert isinstance(out, ItemError)
    (span,) = _named(exported, "decode")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["vision.error.code"] == "corrupt_image"
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE


async def _awaited(work: object) -> object:
    return await work  # type: ignore[misc]


def test_an_item_that_never_ran_ends_its_wait(
    tracing: Tracing, exported: InMemorySpanExporter
) -> None:
    samples = [_sample("gone", CLIENT)]
    tracing.waiting(samples)
    tracing.waited(["gone"])  # its caller gave up before a pass took it
    (wait,) = _named(exported, "batch_wait")
    assert wait.attributes is not None and wait.attributes["vision.forward.ran"] is False
    assert _named(exported, "forward") == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"traceparent": CLIENT}, CLIENT),
        ({"traceparent": CLIENT, "tracestate": "a=1"}, f"{CLIENT} a=1"),
        ({"traceparent": CLIENT, "tracestate": "a=" + "x" * 600}, CLIENT),  # too long to carry
        ({"traceparent": "x" * 600}, None),
    ],
)
def test_the_carrier_holds_both_headers_within_a_bound(
    headers: dict[str, str], expected: str | None
) -> None:
    assert carrier(headers) == expected


@pytest.mark.parametrize("bad", ["", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_a_malformed_traceparent_starts_a_new_trace(
    bad: str, tracing: Tracing, exported: InMemorySpanExporter
) -> None:
    with tracing.request(bad, "req"):
        pass
    (ingress,) = _named(exported, "ingress")
    assert ingress.parent is None and ingress.context.is_valid


def test_off_unless_the_environment_asks() -> None:
    assert exporters_from_env({}) == []
    assert exporters_from_env({"OTEL_TRACES_EXPORTER": "none"}) == []
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert [type(e).__name__ for e in exporters_from_env(endpoint)] == ["OTLPSpanExporter"]
    assert exporters_from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}) == []
    both = exporters_from_env({"OTEL_TRACES_EXPORTER": "otlp, console"})
    assert [type(e).__name__ for e in both] == ["OTLPSpanExporter", "ConsoleSpanExporter"]


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_a_setting_that_cannot_be_honoured_names_itself(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(TracingConfigError, match=named):
        exporters_from_env(environ)


def test_from_env_builds_nothing_when_unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert Tracing.from_env("Model") is OFF
    assert not OFF.enabled


def test_off_changes_nothing() -> None:
    samples = [_sample(f"item{i}", CLIENT) for i in range(3)]
    runner = Runner(Tiny(), SETTINGS, torch.device("cpu"))  # OFF by default
    OFF.waiting(samples)
    outputs = runner.run(samples)
    OFF.waited([s.item_id for s in samples])
    assert [o.batch_size for o in outputs if isinstance(o, RawOutput)] == [3, 3, 3]
    with OFF.request(CLIENT, "req") as request:
        item = Item("a", "req", b"", Options())
        assert request.stamp(item) is item
