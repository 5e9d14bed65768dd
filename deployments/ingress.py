"""Ingress: the HTTP API and the Python handle API. It moves references, never pixels.

For each image it calls the Preprocessor, hands that `DeploymentResponse` straight to the Model and
both responses to the Postprocessor; Ray resolves them in the receiving replicas.
"""

import asyncio
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from python_multipart.multipart import MultipartParser, parse_options_header
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.errors import (
    BadRequest,
    ClientError,
    InvalidOption,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
    VisionError,
)
from deployments.types import ItemError, Options, Result, Task, new_item_id

logger = logging.getLogger("ray.serve")

OPTION_NAMES = ("top_k", "score_threshold", "max_detections")
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True, slots=True)
class IngressSettings:
    task: Task
    max_top_k: int = 100
    max_body_bytes: int = 64 * 1024 * 1024
    max_images_per_request: int = 64
    retry_after_s: int = 1


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


# --- pure request parsing (unit-tested without Ray) -------------------------------------------


def _parse_int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidOption(
            f"{name} must be an integer from {low} to {high}; got {raw!r}"
        ) from None
    if not low <= value <= high:
        raise InvalidOption(f"{name} must be an integer from {low} to {high}; got {value}")
    return value


def _parse_probability(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidOption(f"{name} must be a number from 0 to 1; got {raw!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidOption(f"{name} must be a number from 0 to 1; got {raw}")
    return value


def parse_options(
    params: Mapping[str, str | int | float | None] | Sequence[tuple[str, str]],
    task: Task,
    max_top_k: int,
) -> Options:
    """Validate per-request options; an unknown, repeated, misapplied or bad value names itself."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    seen: set[str] = set()
    values: dict[str, str] = {}
    for name, raw in pairs:
        if raw is None:
            continue
        if name not in OPTION_NAMES:
            raise InvalidOption(
                f"unknown parameter {name!r}; the options are {', '.join(OPTION_NAMES)}"
            )
        if name in seen:
            raise InvalidOption(f"parameter {name} is given more than once")
        seen.add(name)
        values[name] = str(raw)
    if task == "detection" and "top_k" in values:
        raise InvalidOption(
            "top_k applies to classification; this model does detection "
            "(use score_threshold and max_detections)"
        )
    if task == "classification":
        for name in ("score_threshold", "max_detections"):
            if name in values:
                raise InvalidOption(
                    f"{name} applies to detection; this model does classification (use top_k)"
                )
    return Options(
        top_k=_parse_int("top_k", values["top_k"], 1, max_top_k) if "top_k" in values else None,
        score_threshold=(
            _parse_probability("score_threshold", values["score_threshold"])
            if "score_threshold" in values
            else None
        ),
        max_detections=(
            _parse_int("max_detections", values["max_detections"], 1, 1000)
            if "max_detections" in values
            else None
        ),
    )


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """`image/jpeg; q=1` -> ("image/jpeg", {"q": "1"}); a missing header reads as octet-stream."""
    if not content_type:
        return "application/octet-stream", {}
    value, params = parse_options_header(content_type)
    return (
        value.decode("latin-1").lower(),
        {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()},
    )


def is_image_type(value: str) -> bool:
    return value.startswith("image/") or value == "application/octet-stream"


def parse_multipart(body: bytes, boundary: str | None) -> list[Part]:
    """Every part of a multipart/form-data body, in order."""
    if not boundary:
        raise BadRequest("multipart/form-data needs a boundary parameter in its Content-Type")
    parts: list[Part] = []
    headers: dict[str, str] = {}
    field: list[bytes] = []
    value: list[bytes] = []
    data: list[bytes] = []

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(buf: bytes, start: int, end: int) -> None:
        field.append(buf[start:end])

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        value.append(buf[start:end])

    def on_header_end() -> None:
        headers[b"".join(field).decode("latin-1").lower()] = b"".join(value).decode("latin-1")
        field.clear()
        value.clear()

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        data.append(buf[start:end])

    def on_part_end() -> None:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        parts.append(
            Part(
                name=name,
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                content_type=headers.get("content-type", ""),
                data=b"".join(data),
            )
        )

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - the parser's error types are not a stable API
        raise BadRequest(f"the multipart body is malformed: {exc}") from None
    return parts


def image_parts(parts: Sequence[Part], max_images: int) -> list[Part]:
    """The parts named `image`; anything else is a client mistake worth naming."""
    images = [p for p in parts if p.name == "image"]
    others = sorted({p.name for p in parts if p.name != "image"})
    if others:
        raise BadRequest(
            f"unexpected form field(s) {', '.join(repr(o) for o in others)}; send each image as a "
            "file part named 'image' and options as query parameters"
        )
    if not images:
        raise BadRequest("the multipart body has no part named 'image'")
    if len(images) > max_images:
        raise PayloadTooLarge(f"{len(images)} images in one request; the limit is {max_images}")
    return images


def error_body(exc: VisionError, request_id: str) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message}, "request_id": request_id}


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=orjson.dumps(content),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


# --- OpenAPI description (pydantic only at the edge) ------------------------------------------


class ImageOut(BaseModel):
    width: int
    height: int
    format: str
    orientation: int


class PredictionOut(BaseModel):
    label: str
    class_id: int
    score: float
    box: list[float] | None = None


class ResultOut(BaseModel):
    request_id: str
    item_id: str
    model: str
    task: str
    image: ImageOut
    predictions: list[PredictionOut]
    batch_size: int
    timings_ms: dict[str, float]


class ErrorDetail(BaseModel):
    code: str
    message: str
    status: int | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail
    request_id: str


class ItemErrorOut(BaseModel):
    item_id: str
    error: ErrorDetail


class MultiResultOut(BaseModel):
    request_id: str
    results: list[ResultOut | ItemErrorOut]


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "array", "items": _BINARY["schema"]}},
                    "required": ["image"],
                }
            },
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        400: "malformed request or invalid option",
        413: "body, image or pixel count over the limit",
        415: "not an image media type or format",
        422: "corrupt or undecodable image",
        503: "overloaded; retry after the Retry-After header",
    }.items()
}

app = FastAPI(
    title="vision",
    summary="Micro-batched image classification and detection on Ray Serve",
    version="1.0.0",
)


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        preprocessor: DeploymentHandle[Any],
        model: DeploymentHandle[Any],
        postprocessor: DeploymentHandle[Any],
        settings: IngressSettings,
    ) -> None:
        self._pre = preprocessor
        self._model = model.options(method_name="predict")
        self._describe = model.options(method_name="describe")
        self._model_ready = model.options(method_name="ready")
        self._post = postprocessor
        self._settings = settings

    # --- Python handle API -----------------------------------------------------------------

    async def predict(
        self,
        image: bytes,
        *,
        top_k: int | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        request_id: str | None = None,
    ) -> Result:
        """One image -> its `Result`; a bad image raises the typed `VisionError` subclass."""
        options = self._options(top_k, score_threshold, max_detections)
        out = await self._run_item(image, options, request_id or new_item_id())
        if isinstance(out, ItemError):
            raise out.to_exception()
        return out

    async def predict_many(
        self,
        images: list[bytes],
        *,
        top_k: int | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        request_id: str | None = None,
    ) -> list[Result | ItemError]:
        """Several images -> one `Result` or `ItemError` each, in input order."""
        options = self._options(top_k, score_threshold, max_detections)
        rid = request_id or new_item_id()
        return list(await asyncio.gather(*(self._run_item(i, options, rid) for i in images)))

    def _options(
        self, top_k: int | None, score_threshold: float | None, max_detections: int | None
    ) -> Options:
        given = {
            "top_k": top_k,
            "score_threshold": score_threshold,
            "max_detections": max_detections,
        }
        return parse_options(given, self._settings.task, self._settings.max_top_k)

    async def _run_item(self, data: bytes, options: Options, request_id: str) -> Result | ItemError:
        started = time.perf_counter()
        sample = self._pre.remote(data, options, request_id)
        raw = self._model.remote(sample)
        out: Result | ItemError = await self._post.remote(raw, sample)
        if isinstance(out, Result):
            timings = {**out.timings_ms, "total": round((time.perf_counter() - started) * 1e3, 3)}
            out = replace(out, timings_ms=timings)
        return out

    # --- HTTP API --------------------------------------------------------------------------

    @app.post(
        "/v1/predict",
        response_model=ResultOut | MultiResultOut,
        responses=_ERRORS,
        openapi_extra=_PREDICT_BODY,
        summary="Classify or detect objects in one image (raw body) or several (multipart)",
    )
    async def predict_http(
        self,
        request: Request,
        top_k: str | None = Query(None, description="classification: how many classes"),
        score_threshold: str | None = Query(None, description="detection: minimum score, 0..1"),
        max_detections: str | None = Query(None, description="detection: at most this many"),
    ) -> Response:
        request_id = request.headers.get("x-request-id") or new_item_id()
        try:
            if not _REQUEST_ID.match(request_id):
                raise BadRequest("x-request-id must be 1-200 printable ASCII characters")
            settings = self._settings
            options = parse_options(
                request.query_params.multi_items(), settings.task, settings.max_top_k
            )
            kind, params = media_type(request.headers.get("content-type"))
            if kind != "multipart/form-data" and not is_image_type(kind):
                raise UnsupportedMediaType(
                    f"Content-Type {kind!r} is not accepted; send the image as the raw body with "
                    "Content-Type image/* or application/octet-stream, or as multipart/form-data "
                    "with file parts named 'image'"
                )
            body = await _read_body(request, settings.max_body_bytes)
            if kind == "multipart/form-data":
                return _json(await self._predict_parts(body, params, options, request_id))
            out = await self._run_item(body, options, request_id)
            if isinstance(out, ItemError):
                return _json(error_body(out.to_exception(), request_id), status=out.status)
            return _json(out.to_dict())
        except ClientError as exc:
            return _json(error_body(exc, request_id), status=exc.status)
        except BackPressureError:
            exc_503 = Overloaded("the service is at capacity; retry shortly")
            headers = {"retry-after": str(self._settings.retry_after_s)}
            return _json(error_body(exc_503, request_id), status=503, headers=headers)
        except Exception:
            logger.exception("request %s failed", request_id)
            internal = VisionError("the service failed on this request; it has been logged")
            return _json(error_body(internal, request_id), status=500)

    async def _predict_parts(
        self, body: bytes, params: dict[str, str], options: Options, request_id: str
    ) -> dict[str, Any]:
        parts = image_parts(
            parse_multipart(body, params.get("boundary")), self._settings.max_images_per_request
        )

        async def one(part: Part) -> Result | ItemError:
            kind, _ = media_type(part.content_type)
            if not is_image_type(kind):
                return ItemError.from_exception(
                    new_item_id(),
                    UnsupportedMediaType(
                        f"part {part.filename or 'image'!r} has Content-Type {kind!r}; "
                        "image parts must be image/* or application/octet-stream"
                    ),
                )
            return await self._run_item(part.data, options, request_id)

        results = await asyncio.gather(*(one(p) for p in parts))
        return {"request_id": request_id, "results": [r.to_dict() for r in results]}

    @app.get("/v1/health", summary="200 when every stage answers")
    async def health(self) -> Response:
        checks = {
            "preprocessor": self._pre.ready.remote(),
            "model": self._model_ready.remote(),
            "postprocessor": self._post.ready.remote(),
        }
        try:
            await asyncio.wait_for(asyncio.gather(*checks.values()), timeout=10.0)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return _json({"status": "unavailable", "detail": repr(exc)}, status=503)
        return _json({"status": "ok", "stages": dict.fromkeys(checks, "ready")})

    @app.get("/v1/model", summary="Model, task, labels, input size and batching settings")
    async def model_info(self) -> Response:
        info = await self._describe.remote()
        return _json(info.to_dict())
