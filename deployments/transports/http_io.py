"""The HTTP edge, pure and Ray-free: media types, multipart, deadlines, body budgets,
error bodies.

Everything here is a plain function a unit test can call; the Ingress only wires it to requests.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response

from deployments.errors import (
    BadRequest,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    VisionError,
)
from deployments.settings import Limits

TIMEOUT_HEADER = "x-request-timeout-seconds"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,200}$")
T = TypeVar("T")


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


MAX_PART_HEADER_BYTES = 16 * 1024  # one part's headers; a real file part needs ~200 bytes
# The event loop yields after each slice of this many body bytes, so one big chunk never holds it.
_SLICE_BYTES = 64 * 1024


class MultipartReader:
    """Parses multipart/form-data as it arrives, chunk by chunk.

    Work per `feed` is linear in the chunk and bounded by the limits: the part count, a part's
    header bytes and a part's data bytes are checked in the parser's callbacks, so a hostile body
    (a million tiny parts, endless headers) is refused within the chunk that crosses a limit:
    `max_images_per_request` parts of any name, `max_image_bytes` of data and
    `MAX_PART_HEADER_BYTES` of headers each.
    """

    def __init__(self, boundary: str | None, limits: Limits) -> None:
        if not boundary:
            raise BadRequest("multipart/form-data needs a boundary parameter in its Content-Type")
        self._limits = limits
        self.parts: list[Part] = []
        self._headers: dict[str, str] = {}
        self._field: list[bytes] = []
        self._value: list[bytes] = []
        self._data: list[bytes] = []
        self._header_bytes = 0
        self._data_bytes = 0
        self._started = 0
        callbacks: Any = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }
        # The parser itself also bounds one header line (4 KiB) and headers per part (8).
        try:
            self._parser = MultipartParser(boundary, callbacks=callbacks)
        except Exception as exc:  # noqa: BLE001 - e.g. a boundary over 256 characters
            raise BadRequest(f"the multipart boundary is unusable: {exc}") from None

    def feed(self, chunk: bytes) -> None:
        """Parse the next piece of the body; raises `PayloadTooLarge` past a limit."""
        self._write(chunk)

    def finish(self) -> list[Part]:
        """Every part, in order, once the whole body has been fed."""
        try:
            self._parser.finalize()
        except Exception as exc:  # noqa: BLE001 - the parser's error types are not a stable API
            raise BadRequest(f"the multipart body is malformed: {exc}") from None
        if self._started != len(self.parts):
            raise BadRequest("the multipart body is malformed: it ends inside a part")
        return self.parts

    def _write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except VisionError:
            raise
        except Exception as exc:  # noqa: BLE001 - the parser's error types are not a stable API
            raise BadRequest(f"the multipart body is malformed: {exc}") from None

    def _on_part_begin(self) -> None:
        self._started += 1
        max_parts = self._limits.max_images_per_request
        if self._started > max_parts:
            raise PayloadTooLarge(
                f"the multipart body has more than {max_parts} parts; "
                f"the limit is {max_parts} (max_images_per_request)"
            )
        self._headers = {}
        self._data = []
        self._header_bytes = 0
        self._data_bytes = 0

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise PayloadTooLarge(
                f"part {self._started}'s headers are over the limit of "
                f"{MAX_PART_HEADER_BYTES} bytes"
            )

    def _on_header_field(self, buf: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field.append(buf[start:end])

    def _on_header_value(self, buf: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value.append(buf[start:end])

    def _on_header_end(self) -> None:
        name = b"".join(self._field).decode("latin-1").lower()
        self._headers[name] = b"".join(self._value).decode("latin-1")
        self._field.clear()
        self._value.clear()

    def _on_part_data(self, buf: bytes, start: int, end: int) -> None:
        self._data_bytes += end - start
        if self._data_bytes > self._limits.max_image_bytes:
            raise PayloadTooLarge(
                f"part {self._started} is over the limit of {self._limits.max_image_bytes} bytes "
                "(max_image_bytes)"
            )
        self._data.append(buf[start:end])

    def _on_part_end(self) -> None:
        _, disposition = parse_options_header(self._headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        self.parts.append(
            Part(
                name=name,
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                content_type=self._headers.get("content-type", ""),
                data=b"".join(self._data),
            )
        )


def parse_multipart(body: bytes, boundary: str | None, limits: Limits) -> list[Part]:
    """Every part of a whole multipart/form-data body, in order (`MultipartReader` at once)."""
    reader = MultipartReader(boundary, limits)
    reader.feed(body)
    return reader.finish()


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


def error_headers(exc: VisionError, retry_after_s: int) -> dict[str, str]:
    """What an HTTP error response adds: Retry-After on a 503, WWW-Authenticate on a 401."""
    if exc.status == 503:
        return {"retry-after": str(retry_after_s)}
    if exc.status == 401:
        return {"www-authenticate": "Bearer"}
    return {}


def error_body(exc: VisionError, request_id: str) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message}, "request_id": request_id}


def deadline_from(
    value: str | float | None,
    default_s: float,
    now: float,
    max_s: float,
    name: str = TIMEOUT_HEADER,
) -> float:
    """Wall-clock deadline for a request, answering a little before Serve's proxy gives up.

    Serve's proxy also honours `x-request-timeout-seconds` and answers 408 when it expires; we
    aim to answer 504 first, with `min(0.25 s, 10 %)` of the budget left for the way back.
    Every request has one: a value <= 0, or not finite, is a 400 (the proxy would read it as
    "no timeout"), and one above `max_s` is capped at `max_s`.
    """
    if value is None:
        timeout = default_s
    else:
        try:
            timeout = float(value)
        except ValueError:
            raise BadRequest(f"{name} must be a number of seconds; got {value!r}") from None
        if not (math.isfinite(timeout) and timeout > 0):
            raise BadRequest(
                f"{name} must be a positive, finite number of seconds (at most {max_s:g} are "
                f"used); got {value!r}"
            )
    timeout = min(timeout, max_s)
    return now + timeout - min(0.25, 0.1 * timeout)


class BodyBudget:
    """Bytes of request bodies one Ingress replica holds at once; past `limit`, 503.

    A request reserves its declared Content-Length up front, or its bytes as they arrive, and
    gives them back when it has been answered (`Reservation.release`, in a `finally`).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the body budget must be at least 1 byte")
        self.limit = limit
        self.held = 0

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise Overloaded(
                f"request bodies in flight would exceed this replica's budget of {self.limit} "
                "bytes (limits.max_body_bytes_in_flight); retry shortly"
            )
        self.held += n

    def _give(self, n: int) -> None:
        self.held -= n


class Reservation:
    """One request's share of a `BodyBudget`."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    def ensure(self, total: int) -> None:
        """Hold at least `total` bytes; raises `Overloaded` when the budget has no room."""
        if total > self.held:
            self._budget._take(total - self.held)
            self.held = total

    def release(self) -> None:
        self._budget._give(self.held)
        self.held = 0


def declared_length(request: Request, limit: int) -> int | None:
    """The Content-Length, refused with 413 when it is over `limit`; None when not declared."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit} bytes")
    return int(declared)


async def body_slices(
    request: Request, limit: int, reservation: Reservation
) -> AsyncIterator[bytes]:
    """The body as it arrives, in slices of at most 64 KiB, each counted against `limit` and
    reserved before it is yielded; the event loop is yielded between slices."""
    size = 0
    async for chunk in request.stream():
        for start in range(0, len(chunk), _SLICE_BYTES):
            piece = chunk[start : start + _SLICE_BYTES]
            size += len(piece)
            if size > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
            reservation.ensure(size)
            yield piece
            await asyncio.sleep(0)  # let health checks and other requests in


async def read_body(request: Request, limit: int, reservation: Reservation) -> bytes:
    """The whole raw body, refused with 413 as soon as it is known to be over `limit`."""
    declared = declared_length(request, limit)
    if declared is not None:
        reservation.ensure(declared)
    return b"".join([piece async for piece in body_slices(request, limit, reservation)])


async def read_multipart(
    request: Request, reservation: Reservation, boundary: str | None, limits: Limits
) -> list[Part]:
    """Every part of a multipart body, parsed while it arrives; refused (413) at the first chunk
    that crosses a limit (`max_body_bytes` for the whole body), before the rest is read."""
    reader = MultipartReader(boundary, limits)
    declared = declared_length(request, limits.max_body_bytes)
    if declared is not None:
        reservation.ensure(declared)
    async for piece in body_slices(request, limits.max_body_bytes, reservation):
        reader.feed(piece)
    return reader.finish()


async def within_deadline(read: Awaitable[T], deadline: float) -> T:
    """`read` (of a request body), or `RequestTimeout` (408) once `deadline` has passed."""
    try:
        return await asyncio.wait_for(read, timeout=max(0.0, deadline - time.time()))
    except TimeoutError:
        raise RequestTimeout(
            "the request body did not arrive before the request's deadline "
            f"({TIMEOUT_HEADER} or the default); send it faster or allow more time"
        ) from None


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        content=orjson.dumps(content),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
