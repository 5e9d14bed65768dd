"""The Open Inference Protocol over REST (`/v2`): JSON, or JSON and binary tensor data, in and out.

Parsing a body into an `InferRequest`, and the response as Triton's REST API writes it; errors are
`{"error": "<message>"}` with `/v1`'s statuses (`deployments.transports.oip_tensors` has the rest).
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from deployments.errors import (
    BadRequest,
    NotSupported,
    PayloadTooLarge,
    ServerError,
    VisionError,
)
from deployments.items import new_item_id
from deployments.settings import Limits
from deployments.tracing import carrier
from deployments.transports.http_io import (
    TIMEOUT_HEADER,
    Reservation,
    error_headers,
    json_response,
    read_body,
    valid_request_id,
    within_deadline,
)
from deployments.transports.oip_repository import OipRepository
from deployments.transports.oip_tensors import (
    HEADER_LENGTH,
    MAX_JSON_BYTES,
    InferRequest,
    OipFlow,
    RequestedOutput,
    Tensor,
    check_input,
    collect_options,
    flag_param,
    image_count,
    model_metadata,
    server_metadata,
    split_bytes_elements,
    timeout_param,
)

if TYPE_CHECKING:
    from deployments.transports.base import Front


# The repository index's body is at most `{"ready": true}` and a repository name.
_INDEX_BODY_BYTES = 64 * 1024


def version() -> str:
    """This package's version, as OIP server metadata reports it."""
    try:
        return importlib.metadata.version("vision-serve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class OipRest(OipFlow):
    """The `/v2` routes' work; the Ingress binds the routes."""

    def __init__(self, front: Front, repository: OipRepository | None = None) -> None:
        super().__init__(front)
        self._repository = repository

    def error(self, exc: VisionError) -> Response:
        headers = {"content-type": "application/json"}
        headers.update(error_headers(exc, self._front.settings.retry_after_s))
        return Response(content=error_json(exc), status_code=exc.status, headers=headers)

    async def server_metadata(self, request: Request) -> Response:
        try:
            self._front.authorize(request.headers.get("authorization"))
        except VisionError as exc:
            return self.error(exc)
        return json_response(server_metadata(version()))

    @staticmethod
    def live() -> Response:
        return json_response({"live": True})

    async def ready(self) -> Response:
        ready = await self._ready(None)
        return json_response({"ready": ready}, status=200 if ready else 503)

    async def model_metadata(self, request: Request, name: str, version: str | None) -> Response:
        try:
            self._front.authorize(request.headers.get("authorization"))
            await self._check_model(name, version)
        except VisionError as exc:
            return self.error(exc)
        return json_response(
            model_metadata(name, self._front.versions[name], self._front.tasks[name])
        )

    async def model_ready(self, name: str, version: str | None) -> Response:
        try:
            await self._check_model(name, version)
        except VisionError as exc:
            return self.error(exc)
        ready = await self._ready(name, version)
        return json_response({"name": name, "ready": ready}, status=200 if ready else 503)

    # --- Triton's extensions (`oip_repository`) ---------------------------------------------

    async def config(self, request: Request, name: str, version: str | None) -> Response:
        return await self._extension(request, lambda r, _: r.config(name, version))

    async def statistics(self, request: Request, name: str | None, version: str | None) -> Response:
        return await self._extension(request, lambda r, _: r.statistics(name, version))

    async def index(self, request: Request) -> Response:
        async def index(repository: OipRepository, reservation: Reservation) -> Any:
            asked = await _json_object(request, reservation, "the index request's body")
            return await repository.index("", flag_param(asked, "ready", "index") or False)

        return await self._extension(request, index)

    async def load(self, request: Request, name: str) -> Response:
        """Triton's load; a body's `parameters.config` (a JSON string) adds a model."""

        async def load(repository: OipRepository, reservation: Reservation) -> Any:
            asked = await _json_object(request, reservation, "the load request's body")
            parameters = asked.get("parameters", {})
            if not isinstance(parameters, dict):
                raise BadRequest('the load request\'s body must be {"parameters": {...}} or empty')
            config = parameters.get("config")
            if config is not None and not isinstance(config, str):
                raise BadRequest("parameters.config must be a string of JSON")
            return await repository.load(name, config)

        return await self._extension(request, load, management=True)

    async def unload(self, request: Request, name: str) -> Response:
        return await self._extension(request, lambda r, _: r.unload(name), management=True)

    async def _extension(
        self,
        request: Request,
        work: Callable[[OipRepository, Reservation], Awaitable[Any]],
        management: bool = False,
    ) -> Response:
        async def answer(reservation: Reservation) -> Response:
            if self._repository is not None and management:
                self._repository.authorize_management(request.headers.get("authorization"))
            else:
                self._front.authorize(request.headers.get("authorization"))
            if self._repository is None:
                raise NotSupported("this server offers none of Triton's extensions")
            return json_response(await work(self._repository, reservation))

        return await self._front.guarded(
            request.headers.get("x-request-id") or new_item_id(),
            answer,
            self.error,
            ServerError("the service failed on this request; logged"),
        )

    async def infer(self, request: Request, name: str, version: str | None) -> Response:
        header_id = request.headers.get("x-request-id", "")
        request_id = header_id if valid_request_id(header_id) else new_item_id()

        async def work(reservation: Reservation) -> Response:
            front = self._front
            front.authorize(request.headers.get("authorization"))
            await self._check_model(name, version)
            deadline = front.deadline(request.headers.get(TIMEOUT_HEADER), TIMEOUT_HEADER)
            read = read_body(request, self._limits.max_body_bytes, reservation)
            body = await within_deadline(read, deadline)
            parsed = parse_rest(body, request.headers.get(HEADER_LENGTH), self._limits)
            trace = carrier(request.headers)
            tensors, parameters, answered = await self._infer(
                name, version, parsed, deadline, request_id, trace
            )
            content, headers = rest_response(name, answered, parsed, tensors, parameters)
            return Response(content=content, headers=headers)

        return await self._front.guarded(
            request_id,
            work,
            self.error,
            ServerError("the service failed on this request; logged"),
            gone="the client disconnected before the whole body",
        )


def parse_rest(body: bytes, header_length: str | None, limits: Limits) -> InferRequest:
    """A REST infer body (JSON, or JSON and binary data) -> `InferRequest`; 400/413 when bad."""
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"the body is {len(body)} bytes; the limit is {limits.max_body_bytes} bytes"
        )
    json_end = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length must be the byte length of the JSON part, at "
                f"most the body's {len(body)} bytes; got {header_length!r}"
            )
        json_end = int(header_length)
    if json_end > MAX_JSON_BYTES:
        raise PayloadTooLarge(
            f"the JSON part is {json_end} bytes; the limit is {MAX_JSON_BYTES}: send the "
            "images as binary data (Inference-Header-Content-Length; tritonclient's default)"
        )
    try:
        header = orjson.loads(body[:json_end])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request's JSON is malformed: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequest("the request's JSON must be an object with 'inputs'")
    binary = memoryview(body)[json_end:]
    parameters = _mapping(header.get("parameters"), "the request's 'parameters'")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise BadRequest("the request needs 'inputs': a list with one input named 'image'")
    first = inputs[0] if inputs and isinstance(inputs[0], dict) else {}
    check_input(str(first.get("name", "")), str(first.get("datatype", "")), len(inputs))
    count = image_count(_list(first.get("shape"), "input 'image' shape"), limits)
    input_parameters = _mapping(first.get("parameters"), "input 'image' parameters")
    size = input_parameters.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"binary_data_size must be a byte count; got {size!r}")
        if size != len(binary):
            raise BadRequest(
                f"input 'image' declares binary_data_size {size}, but {len(binary)} bytes "
                "follow the JSON part"
            )
        if "data" in first:
            raise BadRequest("input 'image' has both 'data' and binary_data_size; send one")
        images = split_bytes_elements(binary, count, limits)
    else:
        if len(binary):
            raise BadRequest(
                f"{len(binary)} bytes follow the JSON part, but no input declares binary_data_size"
            )
        images = _json_images(first.get("data"), count, limits)
    options: list[tuple[str, str | int | float]] = []
    collect_options(parameters, "request", options)
    collect_options(input_parameters, "input 'image'", options)
    outputs = tuple(_requested_rest(o) for o in _list(header.get("outputs", []), "'outputs'"))
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise BadRequest(f"the request's 'id' must be a string; got {request_id!r}")
    return InferRequest(
        id=request_id,
        images=tuple(images),
        options=tuple(options),
        outputs=outputs,
        binary_output=bool(flag_param(parameters, "binary_data_output", "request")),
        timeout_s=timeout_param(parameters),
    )


async def _json_object(request: Request, reservation: Reservation, what: str) -> Mapping[str, Any]:
    """A small request body that is a JSON object, or empty (`{}`)."""
    body = await read_body(request, _INDEX_BODY_BYTES, reservation)
    try:
        asked = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request's JSON is malformed: {exc}") from None
    if not isinstance(asked, dict):
        raise BadRequest(f"{what} must be a JSON object or empty")
    return asked


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{what} must be a list; got {value!r}")
    return value


def _json_images(data: Any, count: int, limits: Limits) -> list[bytes]:
    """BYTES data in JSON: base64 strings, flat or nested by the shape."""
    if not isinstance(data, list):
        raise BadRequest(
            "input 'image' needs 'data' (base64 strings, one per image) or binary data "
            "(parameters.binary_data_size)"
        )
    flat = [e for row in data for e in (row if isinstance(row, list) else [row])]
    if len(flat) != count:
        raise BadRequest(f"input 'image' has shape for {count} image(s) but {len(flat)} elements")
    images = []
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise BadRequest(f"image {i} in 'data' must be a base64 string")
        if len(element) * 3 // 4 > limits.max_image_bytes:
            raise PayloadTooLarge(
                f"image {i} is over the limit of {limits.max_image_bytes} bytes (max_image_bytes)"
            )
        try:
            images.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"image {i} in 'data' is not base64; in JSON a BYTES element is the image file "
                "in base64 (or send binary data)"
            ) from None
    return images


def _requested_rest(value: Any) -> RequestedOutput:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise BadRequest("each of 'outputs' must be an object with a 'name'")
    parameters = _mapping(value.get("parameters"), f"output {value['name']!r} parameters")
    unknown = sorted(set(parameters) - {"binary_data"})
    if unknown:
        raise BadRequest(
            f"output {value['name']!r} has parameter(s) {unknown}; only binary_data is supported "
            "(classification results are the top_k option)"
        )
    return RequestedOutput(value["name"], flag_param(parameters, "binary_data", "output"))


def _binary(tensor: Tensor, request: InferRequest) -> bool:
    for requested in request.outputs:
        if requested.name == tensor.name and requested.binary is not None:
            return requested.binary
    return request.binary_output


def rest_response(
    model: str,
    version: str,
    request: InferRequest,
    tensors: Sequence[Tensor],
    parameters: Mapping[str, Any],
) -> tuple[bytes, dict[str, str]]:
    """The REST infer response: its body and headers (binary outputs after the JSON part)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in tensors:
        out: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if _binary(tensor, request):
            blob = tensor.raw()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = tensor.json_data()
        outputs.append(out)
    body: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id:
        body["id"] = request.id
    body["parameters"] = dict(parameters)
    body["outputs"] = outputs
    header = orjson.dumps(body)
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def error_json(exc: VisionError) -> bytes:
    """The protocol's error body."""
    return orjson.dumps({"error": exc.message})
