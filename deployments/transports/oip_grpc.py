"""The Open Inference Protocol over gRPC: `GRPCInferenceService`'s messages in and out.

Serve's proxy calls the Ingress method named after the RPC (serve_config.yaml `grpc_options`); each
delegates here. Errors are the gRPC status matching `/v1`'s HTTP status, the message as details
and the error code as the trailing metadata `vision-error-code`.

The RPC's own deadline (`grpc-timeout`, what a client sets with `timeout=`) bounds the request as
`x-request-timeout-seconds` does on HTTP; Triton's `timeout` parameter can only tighten it. Serve's
context carries it as `RPC_DEADLINE` (`oip_proto.proxy.keep_rpc_deadlines`); where it does not, the
configured default applies.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from deployments.errors import (
    BadRequest,
    DeadlineExceeded,
    NotSupported,
    PayloadTooLarge,
    ServerError,
    VisionError,
)
from deployments.items import new_item_id
from deployments.oip_proto.proxy import RPC_DEADLINE
from deployments.settings import Limits
from deployments.tracing import carrier
from deployments.transports.http_io import Reservation
from deployments.transports.oip_repository import OipRepository
from deployments.transports.oip_rest import version
from deployments.transports.oip_tensors import (
    InferRequest,
    OipFlow,
    RequestedOutput,
    Tensor,
    check_input,
    collect_options,
    image_count,
    model_metadata,
    server_metadata,
    split_bytes_elements,
    timeout_param,
)

if TYPE_CHECKING:
    from deployments.transports.base import Front

# How the client must send the API key over gRPC.
_AUTH_HINT = "the metadata 'authorization: Bearer <key>'"


def pb() -> Any:
    """The generated OIP messages, imported on first use: tritonclient's gRPC modules register
    the same `inference.*` names in protobuf's default pool, so a process that imports this module
    with them (a test) must not also load ours."""
    from deployments.oip_proto import grpc_predict_v2_pb2

    return grpc_predict_v2_pb2


# At most this much of the RPC's deadline is kept back for the answer's way out (rpc_timeout_s).
RPC_ANSWER_MARGIN_S = 2.0


def rpc_timeout_s(context: Any, now: float) -> float | None:
    """The request's timeout from the RPC's deadline (None: it has none, or it was not seen); 504
    when it has already passed. A quarter of what is left, up to `RPC_ANSWER_MARGIN_S`, is kept
    back, so that the service's own DEADLINE_EXCEEDED, with its message, reaches the client
    through the edge before the client's timer gives up on the call."""
    deadline = getattr(context, RPC_DEADLINE, None)
    if deadline is None:
        return None
    left = float(deadline) - now
    if left <= 0:
        raise DeadlineExceeded("the RPC's deadline passed before the request was read")
    return left - min(RPC_ANSWER_MARGIN_S, 0.25 * left)


GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_code(status: int) -> str:
    """The gRPC status code name for one of our HTTP statuses."""
    return GRPC_CODES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


class OipGrpc(OipFlow):
    """The RPCs' work; the Ingress has one method per RPC that delegates here."""

    def __init__(self, front: Front, repository: OipRepository | None = None) -> None:
        super().__init__(front)
        self._repository = repository

    @staticmethod
    def error(context: Any, exc: VisionError, empty: Any) -> Any:
        """The RPC's status from the error's HTTP status, its message as details; `empty`
        returned."""
        context.set_code(getattr(grpc.StatusCode, grpc_code(exc.status)))
        context.set_details(exc.message)
        context.set_trailing_metadata([("vision-error-code", exc.code)])
        return empty

    def _authorize(self, context: Any) -> None:
        metadata = dict(context.invocation_metadata())
        self._front.authorize(metadata.get("authorization"), _AUTH_HINT)

    @staticmethod
    def server_live() -> Any:
        return pb().ServerLiveResponse(live=True)

    async def server_ready(self) -> Any:
        return pb().ServerReadyResponse(ready=await self._ready(None))

    async def model_ready(self, request: Any, context: Any) -> Any:
        try:
            await self._check_model(request.name, request.version)
        except VisionError as exc:
            return self.error(context, exc, pb().ModelReadyResponse())
        return pb().ModelReadyResponse(ready=await self._ready(request.name, request.version))

    async def server_metadata(self, context: Any) -> Any:
        try:
            self._authorize(context)
        except VisionError as exc:
            return self.error(context, exc, pb().ServerMetadataResponse())
        return pb().ServerMetadataResponse(**server_metadata(version()))

    async def model_metadata(self, request: Any, context: Any) -> Any:
        messages = pb()
        try:
            self._authorize(context)
            await self._check_model(request.name, request.version)
        except VisionError as exc:
            return self.error(context, exc, messages.ModelMetadataResponse())
        meta = model_metadata(
            request.name, self._front.versions[request.name], self._front.tasks[request.name]
        )
        tensor = messages.ModelMetadataResponse.TensorMetadata
        return messages.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    # --- Triton's extensions (`oip_repository`): its JSON parsed into the messages ---------

    async def config(self, request: Any, context: Any) -> Any:
        async def config(repository: OipRepository) -> Any:
            found = await repository.config(request.name, request.version)
            return pb().ModelConfigResponse(config=json_format.ParseDict(found, pb().ModelConfig()))

        return await self._extension(context, config, "ModelConfigResponse")

    async def statistics(self, request: Any, context: Any) -> Any:
        async def statistics(repository: OipRepository) -> Any:
            found = await repository.statistics(request.name, request.version)
            return json_format.ParseDict(found, pb().ModelStatisticsResponse())

        return await self._extension(context, statistics, "ModelStatisticsResponse")

    async def index(self, request: Any, context: Any) -> Any:
        async def index(repository: OipRepository) -> Any:
            found = await repository.index(request.repository_name, request.ready)
            return json_format.ParseDict({"models": found}, pb().RepositoryIndexResponse())

        return await self._extension(context, index, "RepositoryIndexResponse")

    async def load(self, request: Any, context: Any) -> Any:
        async def load(repository: OipRepository) -> Any:
            config = request.parameters.get("config") if "config" in request.parameters else None
            text = None
            if config is not None:
                which = config.WhichOneof("parameter_choice")
                if which not in ("string_param", "bytes_param"):
                    raise BadRequest("parameters.config must be a string of JSON")
                value = getattr(config, which)
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            await repository.load(request.model_name, text)
            return pb().RepositoryModelLoadResponse()

        return await self._extension(context, load, "RepositoryModelLoadResponse", True)

    async def unload(self, request: Any, context: Any) -> Any:
        async def unload(repository: OipRepository) -> Any:
            await repository.unload(request.model_name)
            return pb().RepositoryModelUnloadResponse()

        return await self._extension(context, unload, "RepositoryModelUnloadResponse", True)

    async def _extension(
        self,
        context: Any,
        work: Callable[[OipRepository], Awaitable[Any]],
        response: str,
        management: bool = False,
    ) -> Any:
        """`work`'s message, or the error's status and an empty `response` message."""

        async def answer(_: Reservation) -> Any:
            if self._repository is not None and management:
                metadata = dict(context.invocation_metadata())
                self._repository.authorize_management(metadata.get("authorization"))
            else:
                self._authorize(context)
            if self._repository is None:
                raise NotSupported("this server offers none of Triton's extensions")
            return await work(self._repository)

        return await self._front.guarded(
            context.request_id() or new_item_id(),
            answer,
            lambda exc: self.error(context, exc, getattr(pb(), response)()),
            ServerError("the service failed on this request; logged"),
        )

    async def infer(self, request: Any, context: Any) -> Any:
        messages = pb()
        request_id = context.request_id() or new_item_id()

        async def work(reservation: Reservation) -> Any:
            self._authorize(context)
            await self._check_model(request.model_name, request.model_version)
            reservation.ensure(request.ByteSize())  # already in memory; counted as /v1 bodies are
            deadline = self._front.deadline(rpc_timeout_s(context, time.time()), "the RPC deadline")
            parsed = parse_grpc(request, self._limits)
            trace = carrier(dict(context.invocation_metadata()))
            tensors, parameters, answered = await self._infer(
                request.model_name, request.model_version, parsed, deadline, request_id, trace
            )
            return grpc_response(
                messages, request.model_name, answered, parsed, tensors, parameters
            )

        return await self._front.guarded(
            request_id,
            work,
            lambda exc: self.error(context, exc, messages.ModelInferResponse()),
            ServerError("the service failed on this request; logged"),
        )


def parameter_value(parameter: Any) -> bool | int | float | str | None:
    """An `InferParameter` message's value, whichever of its fields is set."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def _parameters(message_map: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in message_map.items()}


def parse_grpc(request: Any, limits: Limits) -> InferRequest:
    """A `ModelInferRequest` message -> `InferRequest`; 400/413 when bad."""
    size = request.ByteSize()
    if size > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"the request is {size} bytes; the limit is {limits.max_body_bytes} bytes"
        )
    inputs = request.inputs
    check_input(inputs[0].name if inputs else "", inputs[0].datatype if inputs else "", len(inputs))
    first: Any = inputs[0]
    count = image_count(list(first.shape), limits)
    raw = request.raw_input_contents
    if len(raw):
        if len(raw) != len(inputs):
            raise BadRequest(
                f"raw_input_contents has {len(raw)} entries for {len(inputs)} input(s)"
            )
        images = split_bytes_elements(raw[0], count, limits)
    else:
        elements = first.contents.bytes_contents
        if len(elements) != count:
            raise BadRequest(
                f"input 'image' has shape for {count} image(s) but {len(elements)} elements"
            )
        for i, element in enumerate(elements):
            if len(element) > limits.max_image_bytes:
                raise PayloadTooLarge(
                    f"image {i} is {len(element)} bytes; the limit is {limits.max_image_bytes} "
                    "(max_image_bytes)"
                )
        images = [bytes(e) for e in elements]
    parameters = _parameters(request.parameters)
    options: list[tuple[str, str | int | float]] = []
    collect_options(parameters, "request", options)
    collect_options(_parameters(first.parameters), "input 'image'", options)
    outputs = []
    for requested in request.outputs:
        unknown = sorted(set(requested.parameters) - {"binary_data"})
        if unknown:
            raise BadRequest(
                f"output {requested.name!r} has parameter(s) {unknown}; only binary_data is "
                "supported (classification results are the top_k option)"
            )
        outputs.append(RequestedOutput(requested.name))
    return InferRequest(
        id=request.id,
        images=tuple(images),
        options=tuple(options),
        outputs=tuple(outputs),
        timeout_s=timeout_param(parameters),
    )


def set_parameter(parameter: Any, value: bool | int | float | str) -> None:
    """Fill an `InferParameter` message from a Python value."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def grpc_response(
    pb: Any,
    model: str,
    version: str,
    request: InferRequest,
    tensors: Sequence[Tensor],
    parameters: Mapping[str, Any],
) -> Any:
    """The `ModelInferResponse` (`pb` is the generated module): every output's data in
    `raw_output_contents`, as Triton answers and tritonclient reads."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request.id)
    for key, value in parameters.items():
        set_parameter(response.parameters[key], value)
    for tensor in tensors:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.raw())
    return response
