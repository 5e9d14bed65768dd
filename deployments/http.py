"""The HTTP edge, pure and Ray-free: options, media types, multipart, deadlines, error bodies.

Everything here is a plain function a unit test can call; the Ingress only wires it to requests.
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response

from deployments.errors import BadRequest, InvalidOption, PayloadTooLarge, VisionError
from deployments.types import Options, Task

OPTION_NAMES = ("top_k", "score_threshold", "max_detections")
TIMEOUT_HEADER = "x-request-timeout-seconds"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


def valid_request_id(value: str) -> bool:
    """1-200 printable ASCII characters, no spaces: safe to echo and to log."""
    return _REQUEST_ID.match(value) is not None


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


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over `limit`."""
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


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        content=orjson.dumps(content),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
