"""Every error the service reports, each mapped to one HTTP status in one place.

    VisionError
    ├── ClientError                    the caller can fix it (4xx)
    │   ├── BadRequest            400  malformed request (no image part, unknown field)
    │   │   ├── InvalidOption     400  a per-request option is out of range or unknown
    │   │   └── EmptyImage        400  zero bytes where an image was expected
    │   ├── Unauthorized          401  missing or wrong API key
    │   ├── UnknownModel          404  no served model has that name
    │   ├── RequestTimeout        408  the body did not arrive within the request's deadline
    │   ├── PayloadTooLarge       413  body, image bytes or image count over the limit
    │   │   └── TooManyPixels     413  decoded or resized size over the pixel limit (bomb, sliver)
    │   ├── UnsupportedMediaType  415  Content-Type is not an image, octet-stream or multipart
    │   │   └── UnsupportedFormat 415  the bytes are not an image format we decode
    │   ├── CorruptImage          422  a known format that fails to decode (truncated, bad CRC)
    │   └── PoisonImage           422  these exact bytes crashed the service twice; refused a while
    └── ServerError                    the service failed (5xx)
        ├── InferenceFailed       500  the forward pass failed for this item
        ├── JoinMismatch          500  a result met the wrong metadata (a bug; never joined)
        ├── NotSupported          501  a protocol operation this server does not offer
        ├── Overloaded            503  queues are full; retry after Retry-After
        └── DeadlineExceeded      504  the item's deadline passed before it was answered

Instances pickle by their message alone, so they cross Ray boundaries intact and callers of the
Python handle can catch them by class.
"""

from __future__ import annotations

from typing import ClassVar


class VisionError(Exception):
    """Base of every error this service raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(VisionError):
    status = 400
    code = "bad_request"


class BadRequest(ClientError):
    status = 400
    code = "bad_request"


class InvalidOption(BadRequest):
    code = "invalid_option"


class EmptyImage(BadRequest):
    code = "empty_image"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class UnknownModel(ClientError):
    status = 404
    code = "unknown_model"


class NoSuchRoute(ClientError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class TooManyPixels(PayloadTooLarge):
    code = "too_many_pixels"


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


class UnsupportedFormat(UnsupportedMediaType):
    code = "unsupported_format"


class CorruptImage(ClientError):
    status = 422
    code = "corrupt_image"


class PoisonImage(ClientError):
    status = 422
    code = "poison_image"


class ServerError(VisionError):
    status = 500
    code = "internal_error"


class InferenceFailed(ServerError):
    code = "inference_failed"


class JoinMismatch(ServerError):
    code = "join_mismatch"


class NotSupported(ServerError):
    status = 501
    code = "not_implemented"


class Overloaded(ServerError):
    status = 503
    code = "overloaded"


class DeadlineExceeded(ServerError):
    status = 504
    code = "deadline_exceeded"


def _all_subclasses(cls: type[VisionError]) -> list[type[VisionError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


ERRORS_BY_CODE: dict[str, type[VisionError]] = {c.code: c for c in _all_subclasses(VisionError)}
# `code` repeats on a few intermediate classes; the leaf-most wins for lookups below.
ERRORS_BY_CODE.update({"bad_request": BadRequest, "internal_error": ServerError})


def error_for_code(code: str, message: str) -> VisionError:
    """Rebuild the typed exception for an error code carried as data."""
    return ERRORS_BY_CODE.get(code, ServerError)(message)
