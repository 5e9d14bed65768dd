"""Ingress: the HTTP API and the Python handle API, thin adapters over one `Caller`.

Both parse what they receive into `Item`s and format the `Result`s or `ItemError`s they get back;
the request flow itself (bundles, deadlines, retry, join) lives in `deployments.caller`.
"""

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from deployments import tasks
from deployments.auth import authorized, describe, load_api_key
from deployments.caller import BundleSettings, Caller, PoisonSettings
from deployments.errors import (
    BadRequest,
    Unauthorized,
    UnsupportedMediaType,
    VisionError,
)
from deployments.http import (
    MAX_PART_HEADER_BYTES,
    TIMEOUT_HEADER,
    BodyBudget,
    MultipartLimits,
    Part,
    deadline_from,
    error_body,
    image_parts,
    is_image_type,
    json_response,
    media_type,
    read_body,
    read_multipart,
    valid_request_id,
    within_deadline,
)
from deployments.schema import ERRORS, PREDICT_BODY, MultiResultOut, ResultOut, option_parameters
from deployments.types import Item, ItemError, Options, Result, new_item_id

logger = logging.getLogger("ray.serve")
STAGES = ("preprocessor", "model", "postprocessor")
HEALTH_EVERY_S = 1.0  # how often the Ingress asks every stage whether it answers
HEALTH_STALE_S = 5.0  # older than this, a probe asks the stages itself
HEALTH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class IngressSettings:
    task: str  # a name in deployments.tasks.REGISTRY: it validates the options
    max_candidates: int = 100  # what the Model keeps per image (classification's max_top_k)
    max_body_bytes: int = 64 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024  # one multipart part's data
    max_images_per_request: int = 64  # multipart parts of any name
    max_body_bytes_in_flight: int = 256 * 1024 * 1024  # all bodies this replica holds at once
    retry_after_s: int = 1
    request_timeout_s: float = 30.0  # default deadline when a request states none
    max_request_timeout_s: float = 120.0  # a request may ask for more; it gets this
    bundles: BundleSettings = field(default_factory=BundleSettings)
    poison: PoisonSettings = field(default_factory=PoisonSettings)


# `/docs` and `/redoc` load Swagger UI and ReDoc from the installed `fastapi_offline` package,
# served by this app under `/docs/static`: they work in a cluster without internet access.
app = FastAPIOffline(
    title="vision",
    summary="Micro-batched image classification, detection and segmentation on Ray Serve",
    version="1.0.0",
    static_url="/docs/static",
)


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        preprocessor: DeploymentHandle[Any],
        model: DeploymentHandle[Any],
        postprocessor: DeploymentHandle[Any],
        settings: IngressSettings,
    ) -> None:
        self._caller = Caller(preprocessor, model, postprocessor, settings.bundles, settings.poison)
        self._budget = BodyBudget(settings.max_body_bytes_in_flight)
        self._multipart = MultipartLimits(
            max_parts=settings.max_images_per_request,
            max_part_bytes=settings.max_image_bytes,
            max_header_bytes=MAX_PART_HEADER_BYTES,
        )
        self._pre_ready = preprocessor.options(method_name="ready")
        self._model_ready = model.options(method_name="ready")
        self._post_ready = postprocessor.options(method_name="ready")
        self._describe = model.options(method_name="describe")
        self._stages: tuple[float | None, str | None] = (None, None)  # (checked at, problem)
        self._watcher: asyncio.Task[None] | None = None
        self._settings = settings
        self._task = tasks.get(settings.task)
        # Read once; the key itself is never logged or echoed. Unusable key settings raise
        # `ApiKeyError` here, so the replica fails to start instead of serving without auth.
        self._api_key = load_api_key(os.environ)
        logger.info("API key %s", describe(self._api_key))

    # --- Python handle API -----------------------------------------------------------------

    async def predict(
        self,
        image: bytes,
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
        **options: int | float | str | None,
    ) -> Result:
        """One image -> its `Result`; a bad image raises the typed `VisionError` subclass.

        `options` are the task's (`top_k=3`, `score_threshold=0.4`, `mask_format="png"`, ...).
        """
        parsed = self._options(options)
        item = self._item(image, parsed, request_id or new_item_id(), self._deadline(timeout_s))
        out = await self._caller.one(item)
        if isinstance(out, ItemError):
            raise out.to_exception()
        return out

    async def predict_many(
        self,
        images: list[bytes],
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
        **options: int | float | str | None,
    ) -> list[Result | ItemError]:
        """Several images -> one `Result` or `ItemError` each, in input order."""
        parsed = self._options(options)
        rid = request_id or new_item_id()
        deadline = self._deadline(timeout_s)
        return await self._caller.many([self._item(i, parsed, rid, deadline) for i in images])

    def _deadline(self, timeout_s: float | None) -> float:
        settings = self._settings
        return deadline_from(
            timeout_s,
            settings.request_timeout_s,
            time.time(),
            settings.max_request_timeout_s,
            name="timeout_s",
        )

    def _options(self, given: dict[str, int | float | str | None]) -> Options:
        return tasks.parse_options(given, self._task, self._settings.max_candidates)

    @staticmethod
    def _item(data: bytes, options: Options, request_id: str, deadline: float) -> Item:
        return Item(
            item_id=new_item_id(),
            request_id=request_id,
            data=data,
            options=options,
            deadline=deadline,
        )

    # --- HTTP API --------------------------------------------------------------------------

    @app.post(
        "/v1/predict",
        response_model=ResultOut | MultiResultOut,
        responses=ERRORS,
        openapi_extra={**PREDICT_BODY, "parameters": option_parameters()},
        summary="Classify, detect or segment one image (raw body) or several (multipart)",
    )
    async def predict_http(self, request: Request) -> Response:
        started = time.perf_counter()
        response = await self._predict_http(request)
        # Time spent here, apart from any wait in front of the ingress (RFC 8673's Server-Timing).
        response.headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1e3:.1f}"
        return response

    async def _predict_http(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or new_item_id()
        # Body bytes this request holds, from the moment they are known until it is answered.
        reservation = self._budget.reservation()
        try:
            if not valid_request_id(request_id):
                raise BadRequest("x-request-id must be 1-200 printable ASCII characters")
            self._authorize(request)
            settings = self._settings
            deadline = deadline_from(
                request.headers.get(TIMEOUT_HEADER),
                settings.request_timeout_s,
                time.time(),
                settings.max_request_timeout_s,
            )
            options = tasks.parse_options(
                request.query_params.multi_items(), self._task, settings.max_candidates
            )
            kind, params = media_type(request.headers.get("content-type"))
            if kind != "multipart/form-data" and not is_image_type(kind):
                raise UnsupportedMediaType(
                    f"Content-Type {kind!r} is not accepted; send the image as the raw body with "
                    "Content-Type image/* or application/octet-stream, or as multipart/form-data "
                    "with file parts named 'image'"
                )
            limit = settings.max_body_bytes
            if kind == "multipart/form-data":
                # Parsed while it arrives, so a hostile body is refused at the chunk that
                # crosses a limit; the read as a whole is bounded by the request's deadline.
                boundary = params.get("boundary")
                read = read_multipart(request, limit, reservation, boundary, self._multipart)
                parts = image_parts(
                    await within_deadline(read, deadline), settings.max_images_per_request
                )
                items = [self._part_item(p, options, request_id, deadline) for p in parts]
                results = await self._caller.many(items)
                return json_response(
                    {"request_id": request_id, "results": [r.to_dict() for r in results]}
                )
            body = await within_deadline(read_body(request, limit, reservation), deadline)
            out = await self._caller.one(self._item(body, options, request_id, deadline))
            if isinstance(out, ItemError):
                return self._error(out.to_exception(), request_id)
            return json_response(out.to_dict())
        except VisionError as exc:  # a client's mistake, or a 503 from the body budget
            return self._error(exc, request_id)
        except ClientDisconnect:
            logger.info("request %s: the client left before its body arrived", request_id)
            gone = BadRequest("the client disconnected before sending the whole body")
            return self._error(gone, request_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            internal = VisionError("the service failed on this request; it has been logged")
            return json_response(error_body(internal, request_id), status=500)
        finally:
            reservation.release()

    def _part_item(
        self, part: Part, options: Options, request_id: str, deadline: float
    ) -> Item | ItemError:
        kind, _ = media_type(part.content_type)
        if is_image_type(kind):
            return self._item(part.data, options, request_id, deadline)
        return ItemError.from_exception(
            new_item_id(),
            UnsupportedMediaType(
                f"part {part.filename or 'image'!r} has Content-Type {kind!r}; "
                "image parts must be image/* or application/octet-stream"
            ),
        )

    def _authorize(self, request: Request) -> None:
        if self._api_key and not authorized(request.headers.get("authorization"), self._api_key):
            raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")

    def _error(self, exc: VisionError, request_id: str) -> Response:
        headers = {}
        if exc.status == 503:
            headers["retry-after"] = str(self._settings.retry_after_s)
        elif exc.status == 401:
            headers["www-authenticate"] = "Bearer"
        return json_response(
            error_body(exc, request_id), status=exc.status, headers=headers or None
        )

    @app.get("/v1/health", summary="200 when every stage answered within the last few seconds")
    async def health(self) -> Response:
        # Probes are answered from the latest check, which a background task repeats every
        # second: a probe never waits on three stage calls, so it stays fast under load.
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_stages())
        checked_at, problem = self._stages
        if checked_at is None or time.monotonic() - checked_at > HEALTH_STALE_S:
            problem = await self._check_stages()  # no recent check: the probe waits for one
        if problem is not None:
            return json_response({"status": "unavailable", "detail": problem}, status=503)
        return json_response({"status": "ok", "stages": dict.fromkeys(STAGES, "ready")})

    async def _watch_stages(self) -> None:
        while True:
            await self._check_stages()
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _check_stages(self) -> str | None:
        """Ask every stage; None when all answered, else what went wrong. Remembered."""
        checks = [
            self._pre_ready.remote(),
            self._model_ready.remote(),
            self._post_ready.remote(),
        ]
        problem: str | None = None
        try:
            await asyncio.wait_for(asyncio.gather(*checks), timeout=HEALTH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            problem = repr(exc)
        self._stages = (time.monotonic(), problem)
        return problem

    @app.get("/v1/model", summary="Model, task, labels, input size and batching settings")
    async def model_info(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except Unauthorized as exc:
            return self._error(exc, request.headers.get("x-request-id", ""))
        info = await self._describe.remote()
        # The bundling of the Ingress replica that answered (the Model reports its own batching).
        return json_response({**info.to_dict(), "bundles": self._caller.stats()})
