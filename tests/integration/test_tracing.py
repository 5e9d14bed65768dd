"""Traces over the real graph and real HTTP: every replica exports its spans over OTLP/HTTP to a
receiver in this process (configured only by OTEL_* variables on the deployments), a forward
pass shows every item it carried, and each client's traceparent is honoured."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from ray import serve

from tests import images
from tests.fixtures.models import ECHO, colour_in
from tests.serving import (
    APP,
    BASE_URL,
    ONE_MODEL,
    app_config,
    deploy,
    fixed_replicas,
    post_many,
    wait_until,
)

OTLP_PORT = 4318  # the standard OTLP/HTTP port, on loopback
N = 4  # images per forward pass
TRACING_ENV = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{OTLP_PORT}",
    "OTEL_SERVICE_NAME": "vision-test",
    "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export soon after a span ends
}


@dataclass(frozen=True)
class Received:
    stage: str  # the replica's `vision.stage` resource attribute
    service: str
    span: SpanProto

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    def attribute(self, key: str) -> Any:
        for kv in self.span.attributes:
            if kv.key == key:
                value = kv.value
                kind = value.WhichOneof("value")
                if kind == "array_value":
                    return [v.string_value for v in value.array_value.values]
                return getattr(value, kind)
        raise KeyError(key)


class OtlpReceiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP (protobuf) trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", OTLP_PORT), _Handler)
        self.lock = threading.Lock()
        self.spans: list[Received] = []

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {
                    kv.key: kv.value.string_value for kv in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Received(
                                resource.get("vision.stage", ""),
                                resource.get("service.name", ""),
                                span,
                            )
                        )

    def named(self, name: str) -> list[Received]:
        with self.lock:
            return [s for s in self.spans if s.span.name == name]


class _Handler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        self.server.add(ExportTraceServiceRequest.FromString(body))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per export
        pass


@pytest.fixture(scope="session")
def otlp_server() -> Iterator[OtlpReceiver]:
    """Up until the session ends, not just this module: the app's replicas export to it until
    the next module's deploy replaces them, and they flush what they hold as they stop."""
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def receiver(otlp_server: OtlpReceiver) -> OtlpReceiver:
    config = app_config(
        model=ECHO,
        user_configs={"Model": {"max_batch_size": N, "batch_wait_timeout_s": 5.0}},
        # One Model replica, so N concurrent requests meet in one pass. An update keeps the
        # replica count autoscaling reached before it (a slow model in an earlier module).
        options={"Model": fixed_replicas(1)},
    )
    for deployment in config["applications"][0]["deployments"]:
        actor = deployment.setdefault("ray_actor_options", {})
        runtime_env = actor.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **TRACING_ENV}
    deploy(config)
    return otlp_server


def _client(n: int) -> tuple[str, str]:
    """A client span of its own: (trace id, span id)."""
    return f"{0xC1 << 120 | n:032x}", f"{0xC1 << 56 | n:016x}"


def _one_trace(receiver: OtlpReceiver, trace_id: str, items: int) -> dict[str, list[Received]]:
    """The request's spans by name, once all of them (and the pass over its items) arrived."""

    def complete() -> dict[str, list[Received]] | None:
        spans: dict[str, list[Received]] = {}
        for name in ("ingress", "decode", "batch_wait", "join"):
            spans[name] = [s for s in receiver.named(name) if s.trace_id == trace_id]
        wanted = {"ingress": 1, "decode": items, "batch_wait": items, "join": items}
        if any(len(spans[name]) != count for name, count in wanted.items()):
            return None
        waits = {s.span_id for s in spans["batch_wait"]}
        spans["forward"] = [
            s
            for s in receiver.named("forward")
            if any(link.span_id.hex() in waits for link in s.span.links)
        ]
        return spans if spans["forward"] else None

    return wait_until(complete, 30, f"the spans of trace {trace_id}")


def _check_request(spans: dict[str, list[Received]], client_span: str, request_id: str) -> Received:
    (ingress,) = spans["ingress"]
    assert ingress.parent_id == client_span, "the request's span is not the client's child"
    assert ingress.stage == "Ingress" and ingress.service == "vision-test"
    assert ingress.attribute("vision.request_id") == request_id
    assert ingress.attribute("vision.model") == ONE_MODEL
    for name, stage in (
        ("decode", "Preprocessor"),
        ("batch_wait", "Model"),
        ("join", "Postprocessor"),
    ):
        for span in spans[name]:
            assert span.parent_id == ingress.span_id, f"{name} is not under the request"
            assert span.stage == stage
    return ingress


def test_concurrent_requests_share_one_forward_span_that_links_each_of_them(
    receiver: OtlpReceiver,
) -> None:
    colours = images.distinct_colours(N, seed=4100)
    clients = [_client(i) for i in range(N)]
    headers = [
        {"traceparent": f"00-{t}-{s}-01", "x-request-id": f"traced-{i}"}
        for i, (t, s) in enumerate(clients)
    ]
    headers[0]["tracestate"] = "vendor=opaque"
    responses = asyncio.run(
        post_many([images.solid_png(c) for c in colours], content_type="image/png", headers=headers)
    )
    assert [colour_in(r.json()["predictions"]) for r in responses] == colours
    assert [r.json()["batch_size"] for r in responses] == [N] * N

    traces = [_one_trace(receiver, t, items=1) for t, _ in clients]
    for i, (spans, (_, client_span)) in enumerate(zip(traces, clients, strict=True)):
        _check_request(spans, client_span, f"traced-{i}")
    assert traces[0]["ingress"][0].span.trace_state == "vendor=opaque"

    # One pass carried the N requests: one forward span, N links, one to each request's wait.
    forwards = {s.span_id: s for spans in traces for s in spans["forward"]}
    assert len(forwards) == 1, "the images were not in one pass"
    (forward,) = forwards.values()
    assert forward.stage == "Model" and forward.parent_id == ""
    assert forward.attribute("vision.batch.size") == N
    assert forward.attribute("vision.model") == ONE_MODEL
    assert len(forward.span.links) == N
    linked = {(link.trace_id.hex(), link.span_id.hex()) for link in forward.span.links}
    waits = {
        (t, spans["batch_wait"][0].span_id) for (t, _), spans in zip(clients, traces, strict=True)
    }
    assert linked == waits
    item_ids = {r.json()["item_id"] for r in responses}
    assert set(forward.attribute("vision.batch.item_ids")) == item_ids


def test_a_multipart_request_is_one_trace_whose_pass_links_every_image(
    receiver: OtlpReceiver,
) -> None:
    colours = images.distinct_colours(N, seed=4200)
    trace_id, client_span = _client(100)
    files = [
        ("image", (f"{i}.png", images.solid_png(c), "image/png")) for i, c in enumerate(colours)
    ]
    response = httpx.post(
        f"{BASE_URL}/v1/predict",
        files=files,
        headers={"traceparent": f"00-{trace_id}-{client_span}-01", "x-request-id": "multi"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [colour_in(r["predictions"]) for r in results] == colours

    spans = _one_trace(receiver, trace_id, items=N)
    ingress = _check_request(spans, client_span, "multi")
    assert ingress.attribute("vision.items") == N
    (forward,) = spans["forward"]
    assert forward.attribute("vision.batch.size") == N
    assert {link.trace_id.hex() for link in forward.span.links} == {trace_id}
    assert {link.span_id.hex() for link in forward.span.links} == {
        s.span_id for s in spans["batch_wait"]
    }
    assert {s.attribute("vision.item_id") for s in spans["join"]} == {r["item_id"] for r in results}


def test_the_handle_api_takes_a_traceparent_beside_the_tasks_options(
    receiver: OtlpReceiver,
) -> None:
    colours = images.distinct_colours(N, seed=4300)
    trace_id, client_span = _client(200)
    handle = serve.get_app_handle(APP)
    results = handle.predict_many.remote(
        [images.solid_png(c) for c in colours],
        request_id="by-handle",
        traceparent=f"00-{trace_id}-{client_span}-01",
        top_k=3,
    ).result()
    assert [colour_in([p.to_dict() for p in r.predictions]) for r in results] == colours

    spans = _one_trace(receiver, trace_id, items=N)
    _check_request(spans, client_span, "by-handle")
    (forward,) = spans["forward"]
    assert len(forward.span.links) == N
