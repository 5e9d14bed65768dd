"""The Open Inference Protocol (KServe v2): its tensor model, shared by REST and gRPC, Ray-free.

What both OIP transports (`oip_rest`, `oip_grpc`) agree on: the parsed `InferRequest`, the checks
on its one input, and how each image's `Result` or `ItemError` becomes output tensors. A request
becomes one `Item` per image (`infer`), and goes through the one request flow as `/v1`'s do.

Request. One input, `image`, datatype BYTES, shape [N] or [N, 1]: each element one encoded image
file (JPEG, PNG, ...). Over REST its data come with the binary-data extension (each element a
4-byte little-endian length, then the bytes; `Inference-Header-Content-Length` says where the JSON
ends), or in the JSON as base64 strings; over gRPC in `raw_input_contents` (the same framing) or in
`contents.bytes_contents`. Options are the model's task's (`top_k`, `score_threshold`, ...): in
the request's `parameters` or the input's, validated by the task as `/v1` query parameters are.

Response. Every image's predictions, one row each, concatenated in input order; `counts` (INT64,
[N]) says how many rows belong to each image (numpy: `np.split(rows, np.cumsum(counts)[:-1])`).
Tensors come from the task's prediction schema: `boxes` FP32 [R, 4] in original displayed pixels,
`scores` FP32 [R], `class_ids` INT64 [R], `labels` BYTES [R], segmentation's `areas` INT64 [R]
and `masks` BYTES [R] (COCO RLE, JSON text), and with `mask_format=png` `label_maps` BYTES [N]
(base64 PNG, one per image). The response's `parameters["items"]` is a JSON string with one entry
per image: its `item_id`, `width`, `height`, `orientation`, `format`, `batch_size` and `count`, or
its `error` (`code`, `message`, `status`). One failed image among several leaves the request a
success; a request of one image that fails gets that image's error and status, as on `/v1`.

Errors are `{"error": "<message>"}` with `/v1`'s status codes (REST), or the matching gRPC code
with the message as details. Every count and size is bounded before anything is allocated for it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from deployments.errors import (
    BadRequest,
    InvalidOption,
    PayloadTooLarge,
    UnknownModel,
)
from deployments.items import ItemError, Result
from deployments.settings import Limits
from deployments.tasks import Task
from deployments.transports.http_io import valid_request_id

if TYPE_CHECKING:
    from deployments.transports.base import Front
IMAGE_INPUT = "image"
SERVER_NAME = "vision-serve"
# Triton's names; `model_repository` is left out: its index works, loading and unloading do not.
EXTENSIONS = (
    "binary_tensor_data",
    "parameters",
    "model_configuration",
    "statistics",
    "model_repository",
)
HEADER_LENGTH = "inference-header-content-length"
# The JSON part of a REST body. Images belong in the binary part (tritonclient's default); this
# bounds what a JSON parser may be asked to build (a megabyte of `[0,0,...]` is a million objects).
MAX_JSON_BYTES = 4 * 1024 * 1024
# Request parameters the protocol itself uses (binary data, Triton's `timeout` in microseconds);
# the rest are the task's options.
_PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "binary_data_size", "timeout"})
_UNSUPPORTED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "shared_memory_region"}
)
_LENGTH = struct.Struct("<I")

# HTTP status -> gRPC status code name (grpc.StatusCode.<name>).
# --- what a request may hold ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # REST: this output's `binary_data` parameter, when given


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One parsed infer request: the images, and what the client asked about them."""

    id: str
    images: tuple[bytes, ...]
    options: tuple[tuple[str, str | int | float], ...]  # raw, for `tasks.parse_options`
    outputs: tuple[RequestedOutput, ...] = ()  # empty: all of them
    binary_output: bool = False  # REST: `binary_data_output`
    timeout_s: float | None = None  # Triton's `timeout` parameter (sent in microseconds)


def check_model(name: str, version: str | None, served: Mapping[str, Sequence[str]]) -> None:
    """404 (`UnknownModel`) unless `name` is served and `version` is empty (the latest) or one
    of the versions it is served as (`served`: each model's versions, by name)."""
    if name not in served:
        served_names = ", ".join(served) or "none"
        raise UnknownModel(
            f"model {name[:100]!r} is not served here; the models are: {served_names}"
        )
    if version and version not in served[name]:
        raise UnknownModel(
            f"model {name[:100]!r} has no version {str(version)[:100]!r}; its versions are "
            f"{', '.join(served[name])} (or leave the version out for the latest)"
        )


def answered_version(answers: Sequence[Result | ItemError], asked: str) -> str:
    """The model version an infer response names: its results' (the `Caller` never mixes
    them), or, when every image failed, the version the request was sent to."""
    return next((a.model_version for a in answers if isinstance(a, Result)), asked)


def collect_options(
    parameters: Mapping[str, Any], where: str, out: list[tuple[str, str | int | float]]
) -> None:
    for key, value in parameters.items():
        if key in _PROTOCOL_PARAMETERS:
            continue
        if key in _UNSUPPORTED_PARAMETERS:
            raise InvalidOption(f"{where} parameter {key!r} is not supported by this server")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidOption(
                f"{where} parameter {key!r} must be a string or a number; got {value!r}"
            )
        out.append((key, value))


def timeout_param(parameters: Mapping[str, Any]) -> float | None:
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BadRequest(
            f"parameter 'timeout' must be a positive number of microseconds; got {value!r}"
        )
    return float(value) / 1e6


def flag_param(parameters: Mapping[str, Any], name: str, where: str) -> bool | None:
    value = parameters.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise BadRequest(f"{where} parameter {name!r} must be true or false; got {value!r}")


def image_count(shape: Sequence[Any], limits: Limits) -> int:
    """N for a shape of [N] or [N, 1]; bounded by `max_images_per_request` before anything is
    read."""
    dims = list(shape)
    if not (1 <= len(dims) <= 2) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in dims
    ):
        raise BadRequest(
            f"input {IMAGE_INPUT!r} must have shape [N] or [N, 1] (one encoded image per "
            f"element); got {dims}"
        )
    if len(dims) == 2 and dims[1] != 1:
        raise BadRequest(f"input {IMAGE_INPUT!r} must have shape [N] or [N, 1]; got {dims}")
    n: int = dims[0]
    if n < 1:
        raise BadRequest(f"input {IMAGE_INPUT!r} holds no image (shape {dims})")
    if n > limits.max_images_per_request:
        raise PayloadTooLarge(
            f"{n} images in one request; the limit is {limits.max_images_per_request} "
            "(max_images_per_request)"
        )
    return n


def check_input(name: str, datatype: str, count: int) -> None:
    if count != 1 or name != IMAGE_INPUT:
        raise BadRequest(
            f"send exactly one input, named {IMAGE_INPUT!r} (datatype BYTES, one encoded image "
            f"per element); got {count} input(s)" + (f", the first named {name!r}" if count else "")
        )
    if datatype != "BYTES":
        raise BadRequest(
            f"input {IMAGE_INPUT!r} must have datatype BYTES (each element an encoded image "
            f"file); got {datatype!r}"
        )


def split_bytes_elements(raw: bytes | memoryview, count: int, limits: Limits) -> list[bytes]:
    """The elements of a BYTES tensor's raw data: `count` times a 4-byte little-endian length,
    then that many bytes. Each length is checked against `max_image_bytes` and against what is
    left before it is sliced."""
    view = memoryview(raw)
    out: list[bytes] = []
    at = 0
    for i in range(count):
        if len(view) - at < 4:
            raise BadRequest(
                f"input {IMAGE_INPUT!r} declares {count} element(s) but its data end after {i}"
            )
        (size,) = _LENGTH.unpack_from(view, at)
        at += 4
        if size > limits.max_image_bytes:
            raise PayloadTooLarge(
                f"image {i} is {size} bytes; the limit is {limits.max_image_bytes} "
                "(max_image_bytes)"
            )
        if size > len(view) - at:
            raise BadRequest(
                f"image {i} declares {size} bytes but only {len(view) - at} remain in the data"
            )
        out.append(bytes(view[at : at + size]))
        at += size
    if at != len(view):
        raise BadRequest(
            f"input {IMAGE_INPUT!r} has {len(view) - at} bytes after its {count} element(s); "
            "its shape and data disagree"
        )
    return out


def join_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """The raw form of a BYTES tensor (the inverse of `split_bytes_elements`)."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


# --- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An output tensor: its name, datatype and shape (-1: any size), and how a prediction (or,
    `per_image`, a result's extra field) fills it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    source: str  # the prediction field, or the result's extra field
    per_image: bool = False


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: npt.NDArray[Any] | list[bytes]  # numeric: a numpy array; BYTES: the elements
    parameters: dict[str, Any] = field(default_factory=dict)

    def raw(self) -> bytes:
        """Little-endian bytes in row-major order (BYTES: length-prefixed elements)."""
        if isinstance(self.values, list):
            return join_bytes_elements(self.values)
        return self.values.astype(self.values.dtype.newbyteorder("<"), copy=False).tobytes()

    def json_data(self) -> list[Any]:
        """The flat data as JSON holds it (BYTES as text: every BYTES output here is text)."""
        if isinstance(self.values, list):
            return [v.decode("utf-8") for v in self.values]
        flat: list[Any] = self.values.ravel().tolist()
        return flat


# Prediction fields, in the order outputs are listed. Anything a new task adds that is not here
# still gets an output: BYTES, one JSON text per prediction (`_fallback_spec`).
_PREDICTION_TENSORS = {
    "box": TensorSpec("boxes", "FP32", (-1, 4), "box"),
    "score": TensorSpec("scores", "FP32", (-1,), "score"),
    "class_id": TensorSpec("class_ids", "INT64", (-1,), "class_id"),
    "label": TensorSpec("labels", "BYTES", (-1,), "label"),
    "area": TensorSpec("areas", "INT64", (-1,), "area"),
    "mask": TensorSpec("masks", "BYTES", (-1,), "mask"),
}
COUNTS = TensorSpec("counts", "INT64", (-1,), "count", per_image=True)
# A result's extra fields (segmentation's `label_map` with mask_format=png), one per image.
LABEL_MAPS = TensorSpec("label_maps", "BYTES", (-1,), "label_map", per_image=True)
_DTYPES = {"FP32": np.float32, "INT64": np.int64}


def _fallback_spec(name: str) -> TensorSpec:
    return TensorSpec(f"{name}s", "BYTES", (-1,), name)


def output_specs(task: Task) -> tuple[TensorSpec, ...]:
    """Every output a model of `task` can return, from the task's prediction schema."""
    fields = list(task.prediction_schema.model_fields)
    ordered = [f for f in _PREDICTION_TENSORS if f in fields] + [
        f for f in fields if f not in _PREDICTION_TENSORS
    ]
    specs = [_PREDICTION_TENSORS.get(f) or _fallback_spec(f) for f in ordered]
    if "mask" in fields:  # tasks with masks give a label map instead with mask_format=png
        specs.append(LABEL_MAPS)
    return (*specs, COUNTS)


def input_metadata() -> list[dict[str, Any]]:
    return [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]


def model_metadata(name: str, versions: Sequence[str], task: Task) -> dict[str, Any]:
    """`GET /v2/models/{name}` (and gRPC ModelMetadata): the model's inputs and outputs, and
    every version it is served in (every version serves one task, so one set of tensors)."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": f"pytorch_{task.name}",
        "inputs": input_metadata(),
        "outputs": [
            {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
            for s in output_specs(task)
        ],
    }


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def _element(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return orjson.dumps(value)


def _column(spec: TensorSpec, answers: Sequence[Result | ItemError]) -> Tensor | None:
    """One output's tensor over every image's predictions (per-image outputs: one element per
    image, empty for a failed one); None when no prediction (or image) has the field."""
    results = [a for a in answers if isinstance(a, Result)]
    if spec.per_image:
        if not any(spec.source in r.extra for r in results):
            return None
        elements = [
            _element(a.extra[spec.source])
            if isinstance(a, Result) and spec.source in a.extra
            else b""
            for a in answers
        ]
        return Tensor(spec.name, spec.datatype, (len(elements),), elements)
    values = [getattr(p, spec.source, None) for r in results for p in r.predictions]
    if any(v is None for v in values):
        return None  # e.g. masks with mask_format=png: the label map carries them
    rows = len(values)
    if spec.datatype == "BYTES":
        return Tensor(spec.name, "BYTES", (rows,), [_element(v) for v in values])
    shape = (rows, *spec.shape[1:])
    array = np.asarray(values, dtype=_DTYPES[spec.datatype]).reshape(shape)
    return Tensor(spec.name, spec.datatype, shape, array)


def _item_entry(answer: Result | ItemError) -> dict[str, Any]:
    if isinstance(answer, ItemError):
        return {
            "item_id": answer.item_id,
            "error": {"code": answer.code, "message": answer.message, "status": answer.status},
        }
    return {
        "item_id": answer.item_id,
        **answer.image.to_dict(),
        "batch_size": answer.batch_size,
        "count": len(answer.predictions),
    }


def check_outputs(requested: Sequence[RequestedOutput], task: Task) -> None:
    """400 for a requested output the task does not have (checked before anything runs)."""
    names = [s.name for s in output_specs(task)]
    unknown = [r.name for r in requested if r.name not in names]
    if unknown:
        raise BadRequest(
            f"unknown output(s) {unknown}; this model's outputs are: {', '.join(names)}"
        )


def outputs_for(
    answers: Sequence[Result | ItemError], task: Task, requested: Sequence[RequestedOutput] = ()
) -> tuple[list[Tensor], dict[str, Any]]:
    """Each image's `Result` or `ItemError` -> the output tensors and the response parameters.

    A request of one image that failed raises that image's error (its status, as on `/v1`); with
    several, failed images count 0 rows and carry their error in `parameters["items"]`.
    """
    if len(answers) == 1 and isinstance(answers[0], ItemError):
        raise answers[0].to_exception()
    check_outputs(requested, task)
    specs = output_specs(task)
    wanted = [r.name for r in requested]
    tensors: list[Tensor] = []
    for spec in specs:
        if wanted and spec.name not in wanted:
            continue
        if spec is COUNTS:
            counts = np.array(
                [len(a.predictions) if isinstance(a, Result) else 0 for a in answers],
                dtype=np.int64,
            )
            tensors.append(Tensor(COUNTS.name, "INT64", (len(answers),), counts))
            continue
        tensor = _column(spec, answers)
        if tensor is not None:
            tensors.append(tensor)
    items = orjson.dumps([_item_entry(a) for a in answers]).decode("utf-8")
    return tensors, {"items": items}


# --- through the flow -----------------------------------------------------------------------


class OipFlow:
    """What the REST and gRPC transports do alike: check the model, run a parsed request through
    the `Caller`, answer readiness."""

    def __init__(self, front: Front) -> None:
        self._front = front
        self._limits = front.settings.limits

    async def _check_model(self, name: str, version: str | None) -> None:
        await self._front.find(name)
        check_model(name, version, self._front.versions)

    async def _ready(self, name: str | None, version: str | None = None) -> bool:
        """The server (`name` None: every stage and model) or one model version (None or "":
        the latest) is ready."""
        if name is None:
            return await self._front.readiness() is None
        return (await self._front.model_state(name, version or None)).ready

    async def _infer(
        self,
        name: str,
        version: str | None,
        request: InferRequest,
        deadline: float,
        request_id: str,
        trace: str | None,
    ) -> tuple[list[Tensor], dict[str, Any], str]:
        """One parsed infer request to `version` of `name` (None or "": the latest) through the
        graph -> its output tensors, its parameters and the model version that answered.

        `trace`: the client's W3C trace context (`traceparent` header or gRPC metadata)."""
        front = self._front
        task = front.tasks[name]
        version = version or None
        options = front.options(name, request.options, version)
        check_outputs(request.outputs, task)
        if request.timeout_s is not None:  # Triton's `timeout`: the tighter deadline wins
            deadline = min(deadline, front.deadline(request.timeout_s, "parameter 'timeout'"))
        if request.id and valid_request_id(request.id):
            request_id = request.id
        items = [
            front.item(i, options, request_id, deadline, name, version) for i in request.images
        ]
        if len(items) == 1:
            answers = [await front.caller.one(items[0], trace)]
        else:
            answers = await front.caller.many(items, trace)
        tensors, parameters = outputs_for(answers, task, request.outputs)
        return tensors, parameters, answered_version(answers, items[0].version)
