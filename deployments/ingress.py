"""Ingress: the HTTP API and the Python handle API. It moves references, never pixels.

For each image it calls the Preprocessor, hands that `DeploymentResponse` straight to the Model and
both responses to the Postprocessor; Ray resolves them in the receiving replicas.
"""

import asyncio
import hmac
import logging
import math
import os
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
from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.errors import (
    BadRequest,
    ClientError,
    DeadlineExceeded,
    InvalidOption,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    VisionError,
)
from deployments.metrics import StageMetrics
from deployments.types import ItemError, Options, Result, Task, new_item_id

logger = logging.getLogger("ray.serve")

OPTION_NAMES = ("top_k", "score_threshold", "max_detections")
TIMEOUT_HEADER = "x-request-timeout-seconds"
API_KEY_ENV = "VISION_API_KEY"
API_KEY_FILE_ENV = (
    "VISION_API_KEY_FILE"  # a mounted Secret; Ray logs runtime_env values, so never put keys there
)
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,200}$")
# Failures that mean a replica (or its node) went away while it held the item: worth one retry.
_REPLICA_FAILURES = (RayActorError, WorkerCrashedError, ObjectLostError)
_AT_CAPACITY = "the service is at capacity; retry shortly"


@dataclass(frozen=True, slots=True)
class IngressSettings:
    task: Task
    max_top_k: int = 100
    max_body_bytes: int = 64 * 1024 * 1024
    max_images_per_request: int = 64
    retry_after_s: int = 1
    request_timeout_s: float | None = 30.0  # default deadline when a request states none


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


def deadline_from(header: str | None, default_s: float | None, now: float) -> float | None:
    """Wall-clock deadline for a request, answering a little before Serve's proxy gives up.

    Serve's proxy also honours `x-request-timeout-seconds` and answers 408 when it expires; we
    aim to answer 504 first, with `min(0.25 s, 10 %)` of the budget left for the way back.
    A value <= 0 turns the deadline off, as it does for the proxy.
    """
    if header is None:
        timeout = default_s
    else:
        try:
            timeout = float(header)
        except ValueError:
            raise BadRequest(
                f"{TIMEOUT_HEADER} must be a number of seconds; got {header!r}"
            ) from None
        if not math.isfinite(timeout):
            raise BadRequest(f"{TIMEOUT_HEADER} must be a finite number of seconds")
    if timeout is None or timeout <= 0:
        return None
    return now + timeout - min(0.25, 0.1 * timeout)


def load_api_key(environ: Mapping[str, str]) -> str | None:
    """The API key from VISION_API_KEY, else from the file VISION_API_KEY_FILE names, else None."""
    key = environ.get(API_KEY_ENV, "").strip()
    path = environ.get(API_KEY_FILE_ENV, "")
    if not key and path:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    return key or None


def authorized(header: str | None, api_key: str) -> bool:
    """Constant-time check of `Authorization: Bearer <key>`."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )


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


async def _resolve(response: DeploymentResponse[Any]) -> Result | ItemError:
    out: Result | ItemError = await response
    return out


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
        # Pinned by reference: a Sample passes from the Preprocessor to the Model and Postprocessor
        # as an object reference, so pixels never come back through here (Serve's by-value mode,
        # if ever switched on, would route every response through the caller).
        self._pre = preprocessor.options(_by_reference=True)
        self._model = model.options(method_name="predict", _by_reference=True)
        self._describe = model.options(method_name="describe")
        self._model_ready = model.options(method_name="ready")
        self._post = postprocessor.options(_by_reference=True)
        self._settings = settings
        self._metrics = StageMetrics()
        # Read once; the key itself is never logged or echoed.
        self._api_key = load_api_key(os.environ)
        logger.info("API key %s", "required" if self._api_key else "not configured")

    # --- Python handle API -----------------------------------------------------------------

    async def predict(
        self,
        image: bytes,
        *,
        top_k: int | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Result:
        """One image -> its `Result`; a bad image raises the typed `VisionError` subclass."""
        options = self._options(top_k, score_threshold, max_detections)
        deadline = self._deadline(timeout_s)
        out = await self._run_item(image, options, request_id or new_item_id(), deadline)
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
        timeout_s: float | None = None,
    ) -> list[Result | ItemError]:
        """Several images -> one `Result` or `ItemError` each, in input order."""
        options = self._options(top_k, score_threshold, max_detections)
        rid = request_id or new_item_id()
        deadline = self._deadline(timeout_s)
        items = (self._run_item(i, options, rid, deadline) for i in images)
        return list(await asyncio.gather(*items))

    def _deadline(self, timeout_s: float | None) -> float | None:
        header = None if timeout_s is None else str(timeout_s)
        return deadline_from(header, self._settings.request_timeout_s, time.time())

    def _options(
        self, top_k: int | None, score_threshold: float | None, max_detections: int | None
    ) -> Options:
        given = {
            "top_k": top_k,
            "score_threshold": score_threshold,
            "max_detections": max_detections,
        }
        return parse_options(given, self._settings.task, self._settings.max_top_k)

    async def _run_item(
        self, data: bytes, options: Options, request_id: str, deadline: float | None
    ) -> Result | ItemError:
        """One image through the graph: retried once if a replica dies holding it, bounded by
        its deadline, and never an exception for anything that is not our bug."""
        started = time.perf_counter()
        item_id = new_item_id()
        for attempt in (1, 2):
            try:
                out = await self._attempt(data, options, request_id, item_id, deadline)
                break
            except Exception as exc:
                kind = failure_kind(exc)
                if kind == "overloaded":
                    out = ItemError.from_exception(item_id, Overloaded(_AT_CAPACITY))
                    break
                if kind != "replica":
                    raise
                if attempt == 2:
                    logger.error(
                        "request %s item %s: replica failed again: %r", request_id, item_id, exc
                    )
                    failed = Overloaded("a replica failed while holding this image, twice; retry")
                    out = ItemError.from_exception(item_id, failed)
                    break
                logger.warning(
                    "request %s item %s: replica failed (%s); retrying once",
                    request_id,
                    item_id,
                    exc,
                )
        elapsed_ms = (time.perf_counter() - started) * 1e3
        if isinstance(out, Result):
            out = replace(out, timings_ms={**out.timings_ms, "total": round(elapsed_ms, 3)})
            self._metrics.observe("total", elapsed_ms)
            self._metrics.outcome("ok")
        else:
            self._metrics.outcome(out.code)
        return out

    async def _attempt(
        self,
        data: bytes,
        options: Options,
        request_id: str,
        item_id: str,
        deadline: float | None,
    ) -> Result | ItemError:
        sample: Any = self._pre.remote(data, options, request_id, item_id, deadline)
        raw: Any = self._model.remote(sample)
        post: Any = self._post.remote(raw, sample)
        if deadline is None:
            return await _resolve(post)
        try:
            return await asyncio.wait_for(_resolve(post), timeout=max(0.0, deadline - time.time()))
        except TimeoutError:
            for response in (post, raw, sample):  # frees the batch slot if it has not run yet
                response.cancel()
            logger.info("request %s item %s: deadline passed; answering 504", request_id, item_id)
            expired = DeadlineExceeded("the request's deadline passed before an answer")
            return ItemError.from_exception(item_id, expired)

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
        started = time.perf_counter()
        response = await self._predict_http(request)
        # Time spent here, apart from any wait in front of the ingress (RFC 8673's Server-Timing).
        response.headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1e3:.1f}"
        return response

    async def _predict_http(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or new_item_id()
        try:
            if not _REQUEST_ID.match(request_id):
                raise BadRequest("x-request-id must be 1-200 printable ASCII characters")
            self._authorize(request)
            settings = self._settings
            deadline = deadline_from(
                request.headers.get(TIMEOUT_HEADER), settings.request_timeout_s, time.time()
            )
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
                parts = await self._predict_parts(body, params, options, request_id, deadline)
                return _json(parts)
            out = await self._run_item(body, options, request_id, deadline)
            if isinstance(out, ItemError):
                return self._error(out.to_exception(), request_id)
            return _json(out.to_dict())
        except ClientError as exc:
            return self._error(exc, request_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            internal = VisionError("the service failed on this request; it has been logged")
            return _json(error_body(internal, request_id), status=500)

    def _authorize(self, request: Request) -> None:
        if self._api_key and not authorized(request.headers.get("authorization"), self._api_key):
            raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")

    def _error(self, exc: VisionError, request_id: str) -> Response:
        headers = {}
        if exc.status == 503:
            headers["retry-after"] = str(self._settings.retry_after_s)
        elif exc.status == 401:
            headers["www-authenticate"] = "Bearer"
        return _json(error_body(exc, request_id), status=exc.status, headers=headers or None)

    async def _predict_parts(
        self,
        body: bytes,
        params: dict[str, str],
        options: Options,
        request_id: str,
        deadline: float | None,
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
            return await self._run_item(part.data, options, request_id, deadline)

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
    async def model_info(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except Unauthorized as exc:
            return self._error(exc, request.headers.get("x-request-id", ""))
        info = await self._describe.remote()
        return _json(info.to_dict())
