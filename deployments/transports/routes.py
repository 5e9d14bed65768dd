"""Routes the Ingress does not have: each answers in the error shape of the protocol whose prefix
it used (`/v2`: the Open Inference Protocol's `{"error": message}`; anything else: `/v1`'s
`{"error": {"code", "message"}, "request_id"}`), never the web framework's own `{"detail"}`.
Unknown gRPC methods are the gRPC server's `UNIMPLEMENTED` already."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from deployments.errors import BadRequest, ClientError, MethodNotAllowed, NoSuchRoute
from deployments.items import new_item_id
from deployments.transports.http_io import error_body
from deployments.transports.oip_rest import error_json

OIP_PREFIX = "/v2"


def _oip(path: str) -> bool:
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def route_error(method: str, path: str, status: int, allow: str | None) -> ClientError:
    """What to tell a client whose request matched no route (404) or no method of one (405)."""
    if status == 405:
        return MethodNotAllowed(
            f"{method} is not allowed on {path}" + (f"; use {allow}" if allow else "")
        )
    if _oip(path):
        hint = "the Open Inference Protocol's routes are listed at /docs"
    else:
        hint = "the routes are listed at /docs; predictions are POST /v1/predict"
    return NoSuchRoute(f"no route {method} {path}: {hint}")


async def unknown_route(request: Request, exc: Exception) -> Response:
    """The app's handler for the framework's 404 and 405 (and any other HTTPException)."""
    assert isinstance(exc, HTTPException)
    headers: Mapping[str, str] = exc.headers or {}
    path = request.url.path
    if exc.status_code in (404, 405):
        error = route_error(request.method, path, exc.status_code, headers.get("allow"))
    else:  # the framework's other refusals keep their status, in the protocol's shape
        error = BadRequest(str(exc.detail))
    if _oip(path):
        content = error_json(error)
    else:
        request_id = request.headers.get("x-request-id") or new_item_id()
        content = orjson.dumps(error_body(error, request_id))
    return Response(
        content=content,
        status_code=exc.status_code,
        headers={**headers, "content-type": "application/json"},
    )
