"""HTTP `/v1`: an image as the raw body or several as multipart in, JSON out; health and model
information. Options are query parameters; errors are `{"error": {code, message}, request_id}`.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from deployments.errors import (
    BadRequest,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
    VisionError,
)
from deployments.flow.health import STAGES, UNKNOWN
from deployments.items import Item, ItemError, Options, new_item_id
from deployments.tracing import carrier
from deployments.transports.base import Front
from deployments.transports.http_io import (
    TIMEOUT_HEADER,
    Part,
    Reservation,
    error_body,
    error_headers,
    image_parts,
    is_image_type,
    json_response,
    media_type,
    read_body,
    read_multipart,
    valid_request_id,
    within_deadline,
)
from deployments.transports.schema import (
    ERRORS,
    PREDICT_BODY,
    MultiResultOut,
    ResultOut,
    option_parameters,
)

# What /docs shows for both predict routes: the bodies, the options, every error.
PREDICT_DOCS: dict[str, Any] = {
    "response_model": ResultOut | MultiResultOut,
    "responses": ERRORS,
    "openapi_extra": {**PREDICT_BODY, "parameters": option_parameters()},
}
_FAILED = "the service failed on this request; it has been logged"


class V1Http:
    def __init__(self, front: Front) -> None:
        self._front = front

    def error(self, exc: VisionError, request_id: str) -> Response:
        headers = error_headers(exc, self._front.settings.retry_after_s)
        return json_response(
            error_body(exc, request_id), status=exc.status, headers=headers or None
        )

    async def predict(
        self, request: Request, model: str | None, version: str | None = None
    ) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or new_item_id()

        async def work(reservation: Reservation) -> Response:
            return await self._predict(request, model, version, request_id, reservation)

        response = await self._front.guarded(
            request_id,
            work,
            lambda exc: self.error(exc, request_id),
            VisionError(_FAILED),
        )
        # Time spent here, apart from any wait in front of the ingress (RFC 8673's Server-Timing).
        response.headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1e3:.1f}"
        return response

    async def _predict(
        self,
        request: Request,
        model: str | None,
        version: str | None,
        request_id: str,
        reservation: Reservation,
    ) -> Response:
        front = self._front
        if not valid_request_id(request_id):
            raise BadRequest("x-request-id must be 1-200 printable ASCII characters")
        front.authorize(request.headers.get("authorization"))
        await front.find(model)
        name = front.model_named(model)
        front.version_named(name, version)  # 404 before the body is read
        deadline = front.deadline(request.headers.get(TIMEOUT_HEADER), TIMEOUT_HEADER)
        options = front.options(name, request.query_params.multi_items(), version)
        kind, params = media_type(request.headers.get("content-type"))
        if kind != "multipart/form-data" and not is_image_type(kind):
            raise UnsupportedMediaType(
                f"Content-Type {kind!r} is not accepted; send the image as the raw body with "
                "Content-Type image/* or application/octet-stream, or as multipart/form-data "
                "with file parts named 'image'"
            )
        limits = front.settings.limits
        if kind == "multipart/form-data":
            # Parsed while it arrives, so a hostile body is refused at the chunk that crosses a
            # limit; the read as a whole is bounded by the request's deadline.
            boundary = params.get("boundary")
            read = read_multipart(request, reservation, boundary, limits)
            parts = image_parts(
                await within_deadline(read, deadline), limits.max_images_per_request
            )
            items = [
                self._part_item(p, options, request_id, deadline, name, version) for p in parts
            ]
            results = await front.caller.many(items, carrier(request.headers))
            return json_response(
                {"request_id": request_id, "results": [r.to_dict() for r in results]}
            )
        body = await within_deadline(
            read_body(request, limits.max_body_bytes, reservation), deadline
        )
        item = front.item(body, options, request_id, deadline, name, version)
        out = await front.caller.one(item, carrier(request.headers))
        if isinstance(out, ItemError):
            return self.error(out.to_exception(), request_id)
        return json_response(out.to_dict())

    def _part_item(
        self,
        part: Part,
        options: Options,
        request_id: str,
        deadline: float,
        model: str,
        version: str | None,
    ) -> Item | ItemError:
        kind, _ = media_type(part.content_type)
        if is_image_type(kind):
            return self._front.item(part.data, options, request_id, deadline, model, version)
        return ItemError.from_exception(
            new_item_id(),
            UnsupportedMediaType(
                f"part {part.filename or 'image'!r} has Content-Type {kind!r}; "
                "image parts must be image/* or application/octet-stream"
            ),
        )

    # --- health and model information -----------------------------------------------------

    @staticmethod
    def live() -> Response:
        # Liveness restarts a pod when it fails: it must never depend on a Model (a slow or
        # scaling one) or on anything downstream, only on this replica's event loop.
        return json_response({"status": "alive"})

    async def ready(self) -> Response:
        front = self._front
        problem = await front.readiness()
        models = _model_states(front)
        if problem is not None:
            body = {"status": "unavailable", "detail": problem, "models": models}
            return json_response(body, status=503)
        stages = dict.fromkeys(STAGES, "ready")
        return json_response({"status": "ok", "stages": stages, "models": models})

    async def models(self, request: Request) -> Response:
        front = self._front
        try:
            front.authorize(request.headers.get("authorization"))
        except Unauthorized as exc:
            return self.error(exc, request.headers.get("x-request-id", ""))
        await front.readiness()  # a fresh check when none ran lately
        states = _model_states(front)
        return json_response(
            {
                "default_model": front.settings.default_model,
                "models": [
                    {"name": n, "task": task.name, **states[n]} for n, task in front.tasks.items()
                ],
            }
        )

    async def model_info(self, request: Request, model: str | None) -> Response:
        front = self._front
        try:
            front.authorize(request.headers.get("authorization"))
            await front.find(model)
            name = front.model_named(model)
        except VisionError as exc:
            return self.error(exc, request.headers.get("x-request-id", ""))
        info = await front.describe(name)
        # The bundling of the Ingress replica that answered (the Model reports its own batching).
        return json_response({**info.to_dict(), "name": name, "bundles": front.caller.stats()})

    async def model_ready(self, name: str) -> Response:
        try:
            state = await self._front.model_state(name)
        except UnknownModel as exc:
            return self.error(exc, "")
        return json_response({"name": name, **state.to_dict()}, status=200 if state.ready else 503)


def _model_states(front: Front) -> dict[str, dict[str, Any]]:
    """Each model's state, by name: its latest version's, with `version` naming it, and with
    `versions` (every version's state) for a model served in several."""
    states = front.health.states()
    out: dict[str, dict[str, Any]] = {}
    for name, latest in front.latest.items():
        out[name] = {"version": latest, **states.get((name, latest), UNKNOWN).to_dict()}
        versions = front.versions[name]
        if len(versions) > 1:
            out[name]["versions"] = {v: states.get((name, v), UNKNOWN).to_dict() for v in versions}
    return out
