"""Ingress: the HTTP API, the Open Inference Protocol (REST and gRPC) and the Python handle API,
thin adapters over one `Caller`.

Each parses what it receives into `Item`s and formats the `Result`s or `ItemError`s it gets back;
the request flow itself (bundles, deadlines, retry, join) lives in `deployments.caller`, and the
OIP codec in `deployments.oip`.
"""

import asyncio
import importlib.metadata
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from fastapi import Request
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from deployments import oip, tasks
from deployments.auth import authorized, describe, load_api_key
from deployments.caller import BundleSettings, Caller, PoisonSettings
from deployments.errors import (
    BadRequest,
    ServerError,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
    VisionError,
)
from deployments.health import ModelState, Readiness
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
from deployments.tracing import Tracing, carrier
from deployments.types import Item, ItemError, ModelInfo, Options, Result, new_item_id

logger = logging.getLogger("ray.serve")
STAGES = ("preprocessor", "postprocessor")  # asked directly; models through Serve (health.py)
HEALTH_EVERY_S = 1.0  # how often the Ingress asks every stage whether it answers
HEALTH_STALE_S = 5.0  # older than this, a probe asks the stages itself
HEALTH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """What the Ingress knows of one served model: enough to validate a request for it."""

    task: str  # a name in deployments.tasks.REGISTRY: it validates the options
    model_name: str = ""  # the served model's name: the one /v2/models/{name} routes
    max_candidates: int = 100  # what the Model keeps per image (classification's max_top_k)


@dataclass(frozen=True, slots=True)
class IngressSettings:
    models: dict[str, ModelRoute]  # by served name (`models:` in serve_config.yaml)
    default_model: str  # what /v1/predict and the handle API run when no model is named
    max_body_bytes: int = 64 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024  # one multipart part's data
    max_images_per_request: int = 64  # multipart parts of any name
    max_body_bytes_in_flight: int = 256 * 1024 * 1024  # all bodies this replica holds at once
    retry_after_s: int = 1
    request_timeout_s: float = 30.0  # default deadline when a request states none
    max_request_timeout_s: float = 120.0  # a request may ask for more; it gets this
    bundles: BundleSettings = field(default_factory=BundleSettings)
    poison: PoisonSettings = field(default_factory=PoisonSettings)


def _pb() -> Any:
    """The generated OIP messages, imported on first use: tritonclient's gRPC modules register
    the same `inference.*` names in protobuf's default pool, so a process that imports this module
    with them (a test) must not also load ours."""
    from deployments.oip_proto import grpc_predict_v2_pb2

    return grpc_predict_v2_pb2


def _grpc_error(grpc_context: RayServegRPCContext, exc: VisionError, empty: Any) -> Any:
    """The RPC's status from the error's HTTP status, its message as details; `empty` returned."""
    grpc_context.set_code(getattr(grpc.StatusCode, oip.grpc_code(exc.status)))
    grpc_context.set_details(exc.message)
    grpc_context.set_trailing_metadata([("vision-error-code", exc.code)])
    return empty


def _version() -> str:
    try:
        return importlib.metadata.version("vision-serve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# `/docs` and `/redoc` load Swagger UI and ReDoc from the installed `fastapi_offline` package,
# served by this app under `/docs/static`: they work in a cluster without internet access.
app = FastAPIOffline(
    title="vision",
    summary="Micro-batched image classification, detection and segmentation on Ray Serve",
    version="1.0.0",
    static_url="/docs/static",
)


# What /docs shows for both predict routes: the bodies, the options, every error.
PREDICT_DOCS: dict[str, Any] = {
    "response_model": ResultOut | MultiResultOut,
    "responses": ERRORS,
    "openapi_extra": {**PREDICT_BODY, "parameters": option_parameters()},
}


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        preprocessor: DeploymentHandle[Any],
        models: dict[str, DeploymentHandle[Any]],
        postprocessor: DeploymentHandle[Any],
        settings: IngressSettings,
    ) -> None:
        self._caller = Caller(
            preprocessor,
            models,
            postprocessor,
            settings.bundles,
            settings.poison,
            tracing=Tracing.from_env("Ingress"),
        )
        self._budget = BodyBudget(settings.max_body_bytes_in_flight)
        self._multipart = MultipartLimits(
            max_parts=settings.max_images_per_request,
            max_part_bytes=settings.max_image_bytes,
            max_header_bytes=MAX_PART_HEADER_BYTES,
        )
        self._pre_ready = preprocessor.options(method_name="ready")
        self._post_ready = postprocessor.options(method_name="ready")
        self._describe = {n: h.options(method_name="describe") for n, h in models.items()}
        app_name = preprocessor.app_name
        self._readiness = Readiness(
            app_name, {n: h.deployment_name for n, h in models.items()}, serve.status
        )
        self._stages: tuple[float | None, str | None] = (None, None)  # (checked at, problem)
        self._watcher: asyncio.Task[None] | None = None
        self._settings = settings
        self._tasks = {n: tasks.get(r.task) for n, r in settings.models.items()}
        # Read once; the key itself is never logged or echoed. Unusable key settings raise
        # `ApiKeyError` here, so the replica fails to start instead of serving without auth.
        self._api_key = load_api_key(os.environ)
        logger.info("API key %s", describe(self._api_key))

    # --- Python handle API -----------------------------------------------------------------

    async def predict(
        self,
        image: bytes,
        *,
        model: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        **options: int | float | str | None,
    ) -> Result:
        """One image -> its `Result`; a bad image raises the typed `VisionError` subclass.

        `model` is a served model's name (the default model when None); `options` are its
        task's (`top_k=3`, `score_threshold=0.4`, `mask_format="png"`, ...); `traceparent`
        (W3C) makes the request's spans part of the caller's trace.
        """
        name = self._model_named(model)
        parsed = self._options(name, options)
        rid = request_id or new_item_id()
        item = self._item(image, parsed, rid, self._deadline(timeout_s), name)
        out = await self._caller.one(item, traceparent)
        if isinstance(out, ItemError):
            raise out.to_exception()
        return out

    async def predict_many(
        self,
        images: list[bytes],
        *,
        model: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        **options: int | float | str | None,
    ) -> list[Result | ItemError]:
        """Several images -> one `Result` or `ItemError` each, in input order."""
        name = self._model_named(model)
        parsed = self._options(name, options)
        rid = request_id or new_item_id()
        deadline = self._deadline(timeout_s)
        items = [self._item(i, parsed, rid, deadline, name) for i in images]
        return await self._caller.many(items, traceparent)

    def _model_named(self, name: str | None) -> str:
        """A served model's name (the default for None); `UnknownModel` (404) for any other."""
        if name is None:
            return self._settings.default_model
        if name not in self._settings.models:
            served = ", ".join(sorted(self._settings.models))
            raise UnknownModel(f"no model is served as {name[:100]!r}; served: {served}")
        return name

    def _deadline(self, timeout_s: str | float | None, name: str = "timeout_s") -> float:
        """The deadline for a timeout a caller sent as `name` (None: the configured default)."""
        settings = self._settings
        return deadline_from(
            timeout_s,
            settings.request_timeout_s,
            time.time(),
            settings.max_request_timeout_s,
            name=name,
        )

    def _options(
        self,
        model: str,
        given: Mapping[str, int | float | str | None] | Sequence[tuple[str, str | int | float]],
    ) -> Options:
        route = self._settings.models[model]
        return tasks.parse_options(given, self._tasks[model], route.max_candidates)

    @staticmethod
    def _item(data: bytes, options: Options, request_id: str, deadline: float, model: str) -> Item:
        return Item(
            item_id=new_item_id(),
            request_id=request_id,
            data=data,
            options=options,
            deadline=deadline,
            model=model,
        )

    # --- HTTP API --------------------------------------------------------------------------

    @app.post(
        "/v1/predict",
        **PREDICT_DOCS,
        summary="Classify, detect or segment one image (raw body) or several (multipart)",
    )
    async def predict_http(self, request: Request) -> Response:
        return await self._timed_predict(request, None)

    @app.post(
        "/v1/models/{name}/predict",
        **PREDICT_DOCS,
        summary="The same, by the named model (`models:` in serve_config.yaml)",
    )
    async def predict_model_http(self, name: str, request: Request) -> Response:
        return await self._timed_predict(request, name)

    async def _timed_predict(self, request: Request, model: str | None) -> Response:
        started = time.perf_counter()
        response = await self._predict_http(request, model)
        # Time spent here, apart from any wait in front of the ingress (RFC 8673's Server-Timing).
        response.headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1e3:.1f}"
        return response

    async def _predict_http(self, request: Request, model: str | None) -> Response:
        request_id = request.headers.get("x-request-id") or new_item_id()
        # Body bytes this request holds, from the moment they are known until it is answered.
        reservation = self._budget.reservation()
        try:
            if not valid_request_id(request_id):
                raise BadRequest("x-request-id must be 1-200 printable ASCII characters")
            self._authorize(request)
            name = self._model_named(model)
            deadline = self._deadline(request.headers.get(TIMEOUT_HEADER), TIMEOUT_HEADER)
            options = self._options(name, request.query_params.multi_items())
            kind, params = media_type(request.headers.get("content-type"))
            if kind != "multipart/form-data" and not is_image_type(kind):
                raise UnsupportedMediaType(
                    f"Content-Type {kind!r} is not accepted; send the image as the raw body with "
                    "Content-Type image/* or application/octet-stream, or as multipart/form-data "
                    "with file parts named 'image'"
                )
            limit = self._settings.max_body_bytes
            if kind == "multipart/form-data":
                # Parsed while it arrives, so a hostile body is refused at the chunk that
                # crosses a limit; the read as a whole is bounded by the request's deadline.
                boundary = params.get("boundary")
                read = read_multipart(request, limit, reservation, boundary, self._multipart)
                parts = image_parts(
                    await within_deadline(read, deadline), self._settings.max_images_per_request
                )
                items = [self._part_item(p, options, request_id, deadline, name) for p in parts]
                results = await self._caller.many(items, carrier(request.headers))
                return json_response(
                    {"request_id": request_id, "results": [r.to_dict() for r in results]}
                )
            body = await within_deadline(read_body(request, limit, reservation), deadline)
            item = self._item(body, options, request_id, deadline, name)
            out = await self._caller.one(item, carrier(request.headers))
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
        self, part: Part, options: Options, request_id: str, deadline: float, model: str
    ) -> Item | ItemError:
        kind, _ = media_type(part.content_type)
        if is_image_type(kind):
            return self._item(part.data, options, request_id, deadline, model)
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

    # --- Health and model information --------------------------------------------------------

    @app.get("/v1/health/live", summary="200 while this Ingress answers; asks no other stage")
    async def live(self) -> Response:
        # Liveness restarts a pod when it fails: it must never depend on a Model (a slow or
        # scaling one) or on anything downstream, only on this replica's event loop.
        return json_response({"status": "alive"})

    @app.get(
        "/v1/health/ready",
        summary="200 when every stage answered lately and every model is ready (or at zero)",
    )
    async def ready_http(self) -> Response:
        return await self._ready_response()

    @app.get("/v1/health", summary="The same as /v1/health/ready (kept for existing probes)")
    async def health(self) -> Response:
        return await self._ready_response()

    async def _ready_response(self) -> Response:
        problem = await self.readiness()
        models = {n: s.to_dict() for n, s in self._readiness.states().items()}
        if problem is not None:
            body = {"status": "unavailable", "detail": problem, "models": models}
            return json_response(body, status=503)
        stages = dict.fromkeys(STAGES, "ready")
        return json_response({"status": "ok", "stages": stages, "models": models})

    async def readiness(self) -> str | None:
        """None when the service is ready, else why not (transports format it).

        Probes are answered from the latest check, which a background task repeats every
        second: a probe never waits on the stages, so it stays fast under load.
        """
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_stages())
        checked_at, problem = self._stages
        if checked_at is None or time.monotonic() - checked_at > HEALTH_STALE_S:
            problem = await self._check_stages()  # no recent check: the probe waits for one
        return problem

    async def model_state(self, name: str) -> ModelState:
        """One model's latest readiness (`UnknownModel` for a name not served)."""
        name = self._model_named(name)
        await self.readiness()  # a fresh check when none ran lately
        return self._readiness.states()[name]

    async def _watch_stages(self) -> None:
        while True:
            await self._check_stages()
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _check_stages(self) -> str | None:
        """Ask the Preprocessor and Postprocessor, and Serve for every model; None when all
        are ready, else what is not. Remembered."""
        checks = [self._pre_ready.remote(), self._post_ready.remote()]
        problem: str | None = None
        try:
            await asyncio.wait_for(asyncio.gather(*checks), timeout=HEALTH_TIMEOUT_S)
            states = await asyncio.wait_for(self._readiness.refresh(), timeout=HEALTH_TIMEOUT_S)
            waiting = {n: s.state for n, s in states.items() if not s.ready}
            if waiting:
                problem = f"models not ready: {waiting}"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            problem = repr(exc)
        self._stages = (time.monotonic(), problem)
        return problem

    @app.get("/v1/model", summary="The default model: task, labels, input size and batching")
    async def model_info(self, request: Request) -> Response:
        return await self._model_info_http(request, None)

    @app.get("/v1/models", summary="Every served model: name, task and readiness")
    async def models_http(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except Unauthorized as exc:
            return self._error(exc, request.headers.get("x-request-id", ""))
        await self.readiness()  # a fresh check when none ran lately
        states = self._readiness.states()
        return json_response(
            {
                "default_model": self._settings.default_model,
                "models": [
                    {"name": n, "task": r.task, **states[n].to_dict()}
                    for n, r in self._settings.models.items()
                ],
            }
        )

    @app.get("/v1/models/{name}", summary="One model: task, labels, input size and batching")
    async def named_model_info(self, name: str, request: Request) -> Response:
        return await self._model_info_http(request, name)

    @app.get("/v1/models/{name}/ready", summary="200 when the model is ready (or at zero)")
    async def model_ready_http(self, name: str) -> Response:
        try:
            state = await self.model_state(name)
        except UnknownModel as exc:
            return self._error(exc, "")
        return json_response({"name": name, **state.to_dict()}, status=200 if state.ready else 503)

    async def _model_info_http(self, request: Request, model: str | None) -> Response:
        try:
            self._authorize(request)
            name = self._model_named(model)
        except VisionError as exc:
            return self._error(exc, request.headers.get("x-request-id", ""))
        info = await self.describe(name)
        # The bundling of the Ingress replica that answered (the Model reports its own batching).
        return json_response({**info.to_dict(), "name": name, "bundles": self._caller.stats()})

    async def describe(self, model: str | None = None) -> ModelInfo:
        """What the named model's replica reports about itself (it starts one if at zero)."""
        info: ModelInfo = await self._describe[self._model_named(model)].remote()
        return info

    # --- Open Inference Protocol (KServe v2): REST, then gRPC; the codec is deployments.oip ---

    def _oip_models(self) -> tuple[str, ...]:
        return tuple(self._settings.models)

    async def _oip_ready(self, name: str | None) -> bool:
        """The server (`name` None: every stage and model) or one model is ready."""
        if name is None:
            return await self.readiness() is None
        return (await self.model_state(name)).ready

    def _oip_limits(self) -> oip.Limits:
        settings = self._settings
        return oip.Limits(
            max_body_bytes=settings.max_body_bytes,
            max_image_bytes=settings.max_image_bytes,
            max_images=settings.max_images_per_request,
        )

    async def _oip_infer(
        self,
        name: str,
        request: oip.InferRequest,
        deadline: float,
        request_id: str,
        trace: str | None,
    ) -> tuple[list[oip.Tensor], dict[str, Any]]:
        """One parsed infer request through the graph -> its output tensors and parameters.

        `trace`: the client's W3C trace context (`traceparent` header or gRPC metadata)."""
        task = self._tasks[name]
        options = self._options(name, request.options)
        oip.check_outputs(request.outputs, task)
        if request.timeout_s is not None:  # Triton's `timeout`: the tighter deadline wins
            deadline = min(deadline, self._deadline(request.timeout_s, "parameter 'timeout'"))
        if request.id and valid_request_id(request.id):
            request_id = request.id
        items = [self._item(i, options, request_id, deadline, name) for i in request.images]
        if len(items) == 1:
            answers = [await self._caller.one(items[0], trace)]
        else:
            answers = await self._caller.many(items, trace)
        return oip.outputs_for(answers, task, request.outputs)

    def _oip_error(self, exc: VisionError) -> Response:
        headers = {"content-type": "application/json"}
        if exc.status == 503:
            headers["retry-after"] = str(self._settings.retry_after_s)
        elif exc.status == 401:
            headers["www-authenticate"] = "Bearer"
        return Response(content=oip.error_json(exc), status_code=exc.status, headers=headers)

    @app.get("/v2", summary="OIP server metadata: name, version, extensions")
    async def oip_server_metadata(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except VisionError as exc:
            return self._oip_error(exc)
        return json_response(oip.server_metadata(_version()))

    @app.get("/v2/health/live", summary="OIP liveness: 200 while the Ingress answers")
    async def oip_live(self) -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready", summary="OIP readiness: 200 when every stage answers, else 503")
    async def oip_ready(self) -> Response:
        ready = await self._oip_ready(None)
        return json_response({"ready": ready}, status=200 if ready else 503)

    @app.get("/v2/models/{name}", summary="OIP model metadata: inputs and outputs")
    @app.get("/v2/models/{name}/versions/{version}", summary="OIP model metadata")
    async def oip_model_metadata(
        self, request: Request, name: str, version: str | None = None
    ) -> Response:
        try:
            self._authorize(request)
            oip.check_model(name, version, self._oip_models())
        except VisionError as exc:
            return self._oip_error(exc)
        return json_response(oip.model_metadata(name, self._tasks[name]))

    @app.get("/v2/models/{name}/ready", summary="OIP model readiness: 200 when it can infer")
    @app.get("/v2/models/{name}/versions/{version}/ready", summary="OIP model readiness")
    async def oip_model_ready(self, name: str, version: str | None = None) -> Response:
        try:
            oip.check_model(name, version, self._oip_models())
        except VisionError as exc:
            return self._oip_error(exc)
        ready = await self._oip_ready(name)
        return json_response({"name": name, "ready": ready}, status=200 if ready else 503)

    @app.post(
        "/v2/models/{name}/infer",
        summary="OIP inference: encoded images as the BYTES input 'image' (README: Open "
        "Inference Protocol)",
    )
    @app.post("/v2/models/{name}/versions/{version}/infer", summary="OIP inference")
    async def oip_infer(self, request: Request, name: str, version: str | None = None) -> Response:
        reservation = self._budget.reservation()
        header_id = request.headers.get("x-request-id", "")
        request_id = header_id if valid_request_id(header_id) else new_item_id()
        try:
            self._authorize(request)
            oip.check_model(name, version, self._oip_models())
            deadline = self._deadline(request.headers.get(TIMEOUT_HEADER), TIMEOUT_HEADER)
            read = read_body(request, self._settings.max_body_bytes, reservation)
            body = await within_deadline(read, deadline)
            parsed = oip.parse_rest(
                body, request.headers.get(oip.HEADER_LENGTH), self._oip_limits()
            )
            trace = carrier(request.headers)
            tensors, parameters = await self._oip_infer(name, parsed, deadline, request_id, trace)
            content, headers = oip.rest_response(name, parsed, tensors, parameters)
            return Response(content=content, headers=headers)
        except VisionError as exc:
            return self._oip_error(exc)
        except ClientDisconnect:
            logger.info("request %s: the client left before its body arrived", request_id)
            return self._oip_error(BadRequest("the client disconnected before the whole body"))
        except Exception:
            logger.exception("request %s failed", request_id)
            return self._oip_error(ServerError("the service failed on this request; logged"))
        finally:
            reservation.release()

    # gRPC: Serve's proxy calls the method named after the RPC (serve_config.yaml grpc_options).

    async def ServerLive(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return _pb().ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return _pb().ServerReadyResponse(ready=await self._oip_ready(None))

    async def ModelReady(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        pb = _pb()
        try:
            oip.check_model(request.name, request.version, self._oip_models())
        except VisionError as exc:
            return _grpc_error(grpc_context, exc, pb.ModelReadyResponse())
        return pb.ModelReadyResponse(ready=await self._oip_ready(request.name))

    async def ServerMetadata(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        pb = _pb()
        try:
            self._grpc_authorize(grpc_context)
        except VisionError as exc:
            return _grpc_error(grpc_context, exc, pb.ServerMetadataResponse())
        return pb.ServerMetadataResponse(**oip.server_metadata(_version()))

    async def ModelMetadata(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        pb = _pb()
        try:
            self._grpc_authorize(grpc_context)
            oip.check_model(request.name, request.version, self._oip_models())
        except VisionError as exc:
            return _grpc_error(grpc_context, exc, pb.ModelMetadataResponse())
        meta = oip.model_metadata(request.name, self._tasks[request.name])
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        pb = _pb()
        reservation = self._budget.reservation()
        request_id = grpc_context.request_id() or new_item_id()
        try:
            self._grpc_authorize(grpc_context)
            oip.check_model(request.model_name, request.model_version, self._oip_models())
            reservation.ensure(request.ByteSize())  # already in memory; counted as /v1 bodies are
            deadline = self._deadline(None)
            parsed = oip.parse_grpc(request, self._oip_limits())
            trace = carrier(dict(grpc_context.invocation_metadata()))
            tensors, parameters = await self._oip_infer(
                request.model_name, parsed, deadline, request_id, trace
            )
            return oip.grpc_response(pb, request.model_name, parsed, tensors, parameters)
        except VisionError as exc:
            return _grpc_error(grpc_context, exc, pb.ModelInferResponse())
        except Exception:
            logger.exception("request %s failed", request_id)
            failed = ServerError("the service failed on this request; logged")
            return _grpc_error(grpc_context, failed, pb.ModelInferResponse())
        finally:
            reservation.release()

    def _grpc_authorize(self, grpc_context: RayServegRPCContext) -> None:
        if not self._api_key:
            return
        metadata = dict(grpc_context.invocation_metadata())
        if not authorized(metadata.get("authorization"), self._api_key):
            raise Unauthorized(
                "a valid API key is required: send the metadata 'authorization: Bearer <key>'"
            )
