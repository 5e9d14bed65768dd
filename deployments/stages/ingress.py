"""Ingress: the routes and RPCs of every transport, each delegating to its adapter.

Serve binds HTTP routes and gRPC methods only to methods of the deployment class itself, so they
are here, two to four lines each; what each protocol does lives in `deployments.transports`
(`v1`, `oip_rest`, `oip_grpc`, `handle`), over one `Front` (the request wrapper, auth, errors)
and one `Caller` (the request flow).
"""

import logging
import os
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from deployments.flow.catalogue import Catalogue, Served
from deployments.flow.health import ModelState, Readiness, StageWatch, serve_status
from deployments.flow.repository import Repository, app_configs, model_handle, serve_client
from deployments.flow.stats import CountedCaller, Reporter
from deployments.flow.tally import Tally
from deployments.items import ItemError, ModelInfo, Result
from deployments.tracing import Tracing
from deployments.transports import auth
from deployments.transports.base import Front, IngressSettings
from deployments.transports.handle import HandleApi
from deployments.transports.oip_grpc import OipGrpc
from deployments.transports.oip_repository import OipRepository
from deployments.transports.oip_rest import OipRest
from deployments.transports.routes import unknown_route
from deployments.transports.v1 import PREDICT_DOCS, V1Http

__all__ = ["Ingress", "IngressSettings"]
logger = logging.getLogger("ray.serve")

# `/docs` and `/redoc` load Swagger UI and ReDoc from the installed `fastapi_offline` package,
# served by this app under `/docs/static`: they work in a cluster without internet access.
app = FastAPIOffline(
    title="vision",
    summary="Micro-batched image classification, detection and segmentation on Ray Serve",
    version="1.0.0",
    static_url="/docs/static",
)
app.add_exception_handler(HTTPException, unknown_route)


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        preprocessor: DeploymentHandle[Any],
        models: dict[tuple[str, str], DeploymentHandle[Any]],
        postprocessor: DeploymentHandle[Any],
        settings: IngressSettings,
    ) -> None:
        # `models`: every version of every bound model, by (name, version), each its own
        # deployment (graph.model_deployment); model applications are found as they come.
        context = serve.get_replica_context()
        cards = {(c.name, c.version): c for c in settings.cards}
        bound = {
            key: Served(cards[key], h, context.app_name, h.deployment_name)
            for key, h in models.items()
        }
        catalogue = Catalogue(context.app_name, bound, app_configs=app_configs, handle=model_handle)
        # Every image answered is counted for the OIP statistics (`deployments.flow.stats`).
        tally = Tally()
        reporter = Reporter(tally, context.app_name, f"Ingress#{context.replica_id.unique_id}")
        caller = CountedCaller(
            preprocessor,
            catalogue,
            postprocessor,
            settings.bundles,
            settings.poison,
            tracing=Tracing.from_env("Ingress"),
            tally=tally,
            reporter=reporter,
        )
        readiness = Readiness(catalogue, serve_status)
        stages = [h.options(method_name="ready").remote for h in (preprocessor, postprocessor)]
        # Read once; the keys themselves are never logged or echoed. Unusable key settings raise
        # `ApiKeyError` here, so the replica fails to start instead of serving without auth.
        api_key = auth.load_api_key(os.environ)
        management_key = auth.load_management_key(os.environ, api_key)
        logger.info(
            "API key %s; management key %s",
            auth.describe(api_key),
            auth.describe(management_key),
        )
        front = Front(caller, settings, StageWatch(stages, readiness), catalogue, api_key)
        self._front = front
        self._handle = HandleApi(front)
        self._v1 = V1Http(front)
        repository = OipRepository(
            front, reporter.totals, Repository(catalogue, management_key, serve_client)
        )
        self._rest = OipRest(front, repository)
        self._grpc = OipGrpc(front, repository)

    # --- Python handle API (transports.handle) ---------------------------------------------

    async def predict(
        self,
        image: bytes,
        *,
        model: str | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        **options: int | float | str | None,
    ) -> Result:
        """One image -> its `Result`; a bad image raises the typed `VisionError` subclass.

        `model` is a served model's name (the default model when None), `version` one of its
        versions (the latest when None; only that version answers); `options` are its task's
        (`top_k=3`, `score_threshold=0.4`, `mask_format="png"`, ...); `traceparent` (W3C)
        makes the request's spans part of the caller's trace.
        """
        args = (model, version, request_id, timeout_s, traceparent, options)
        return await self._handle.predict(image, *args)

    async def predict_many(
        self,
        images: list[bytes],
        *,
        model: str | None = None,
        version: str | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        traceparent: str | None = None,
        **options: int | float | str | None,
    ) -> list[Result | ItemError]:
        """Several images -> one `Result` or `ItemError` each, in input order."""
        args = (model, version, request_id, timeout_s, traceparent, options)
        return await self._handle.predict_many(images, *args)

    async def readiness(self) -> str | None:
        """None when the service is ready, else why not (from the latest background check)."""
        return await self._front.readiness()

    async def model_state(self, name: str, version: str | None = None) -> ModelState:
        """One model version's latest readiness (None: the latest; `UnknownModel` for a name or
        version not served)."""
        return await self._front.model_state(name, version)

    async def describe(self, model: str | None = None, version: str | None = None) -> ModelInfo:
        """What the named model version's replica reports about itself (it starts one if at
        zero)."""
        return await self._front.describe(model, version)

    # --- HTTP /v1 (transports.v1) ------------------------------------------------------------

    @app.post(
        "/v1/predict",
        **PREDICT_DOCS,
        summary="Classify, detect or segment one image (raw body) or several (multipart)",
    )
    async def predict_http(self, request: Request) -> Response:
        return await self._v1.predict(request, None)

    @app.post(
        "/v1/models/{name}/predict",
        **PREDICT_DOCS,
        summary="The same, by the named model (`models:` in serve_config.yaml)",
    )
    async def predict_model_http(self, name: str, request: Request) -> Response:
        return await self._v1.predict(request, name)

    @app.post(
        "/v1/models/{name}/versions/{version}/predict",
        **PREDICT_DOCS,
        summary="The same, by one version of the named model (only that version answers)",
    )
    async def predict_version_http(self, name: str, version: str, request: Request) -> Response:
        return await self._v1.predict(request, name, version)

    @app.get("/v1/health/live", summary="200 while this Ingress answers; asks no other stage")
    async def live(self) -> Response:
        return self._v1.live()

    @app.get(
        "/v1/health/ready",
        summary="200 when every stage answered lately and every model is ready (or at zero)",
    )
    async def ready_http(self) -> Response:
        return await self._v1.ready()

    @app.get("/v1/health", summary="The same as /v1/health/ready (kept for existing probes)")
    async def health(self) -> Response:
        return await self._v1.ready()

    @app.get("/v1/model", summary="The default model: task, labels, input size and batching")
    async def model_info(self, request: Request) -> Response:
        return await self._v1.model_info(request, None)

    @app.get("/v1/models", summary="Every served model: name, task and readiness")
    async def models_http(self, request: Request) -> Response:
        return await self._v1.models(request)

    @app.get("/v1/models/{name}", summary="One model: task, labels, input size and batching")
    async def named_model_info(self, name: str, request: Request) -> Response:
        return await self._v1.model_info(request, name)

    @app.get("/v1/models/{name}/ready", summary="200 when the model is ready (or at zero)")
    async def model_ready_http(self, name: str) -> Response:
        return await self._v1.model_ready(name)

    # --- Open Inference Protocol over REST (transports.oip_rest) -------------------------------

    @app.get("/v2", summary="OIP server metadata: name, version, extensions")
    async def oip_server_metadata(self, request: Request) -> Response:
        return await self._rest.server_metadata(request)

    @app.get("/v2/health/live", summary="OIP liveness: 200 while the Ingress answers")
    async def oip_live(self) -> Response:
        return self._rest.live()

    @app.get("/v2/health/ready", summary="OIP readiness: 200 when every stage answers, else 503")
    async def oip_ready(self) -> Response:
        return await self._rest.ready()

    # Triton's extensions (transports.oip_repository); before /v2/models/{name}, which would
    # take "stats" for a model's name.
    @app.get("/v2/models/stats", summary="Triton statistics of every model (README: OIP)")
    async def oip_all_statistics(self, request: Request) -> Response:
        return await self._rest.statistics(request, None, None)

    @app.get("/v2/models/{name}/stats", summary="Triton statistics of one model")
    @app.get("/v2/models/{name}/versions/{version}/stats", summary="Triton statistics")
    async def oip_statistics(
        self, request: Request, name: str, version: str | None = None
    ) -> Response:
        return await self._rest.statistics(request, name, version)

    @app.get("/v2/models/{name}/config", summary="Triton model configuration, as deployed")
    @app.get("/v2/models/{name}/versions/{version}/config", summary="Triton model configuration")
    async def oip_model_config(
        self, request: Request, name: str, version: str | None = None
    ) -> Response:
        return await self._rest.config(request, name, version)

    @app.post("/v2/repository/index", summary="Triton repository index: models and states")
    async def oip_repository_index(self, request: Request) -> Response:
        return await self._rest.index(request)

    @app.post(
        "/v2/repository/models/{name}/load",
        summary="Triton load: serve a model of the repository, or add one with "
        "`parameters.config` (management key; README: Models while serving)",
    )
    async def oip_load(self, request: Request, name: str) -> Response:
        return await self._rest.load(request, name)

    @app.post(
        "/v2/repository/models/{name}/unload",
        summary="Triton unload: stop serving a model application (management key)",
    )
    async def oip_unload(self, request: Request, name: str) -> Response:
        return await self._rest.unload(request, name)

    @app.get("/v2/models/{name}", summary="OIP model metadata: inputs and outputs")
    @app.get("/v2/models/{name}/versions/{version}", summary="OIP model metadata")
    async def oip_model_metadata(
        self, request: Request, name: str, version: str | None = None
    ) -> Response:
        return await self._rest.model_metadata(request, name, version)

    @app.get("/v2/models/{name}/ready", summary="OIP model readiness: 200 when it can infer")
    @app.get("/v2/models/{name}/versions/{version}/ready", summary="OIP model readiness")
    async def oip_model_ready(self, name: str, version: str | None = None) -> Response:
        return await self._rest.model_ready(name, version)

    @app.post(
        "/v2/models/{name}/infer",
        summary="OIP inference: encoded images as the BYTES input 'image' (README: Open "
        "Inference Protocol)",
    )
    @app.post("/v2/models/{name}/versions/{version}/infer", summary="OIP inference")
    async def oip_infer(self, request: Request, name: str, version: str | None = None) -> Response:
        return await self._rest.infer(request, name, version)

    # --- Open Inference Protocol over gRPC (transports.oip_grpc): one method per RPC ---------

    async def ServerLive(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return self._grpc.server_live()

    async def ServerReady(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.server_ready()

    async def ModelReady(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.model_ready(request, grpc_context)

    async def ServerMetadata(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.server_metadata(grpc_context)

    async def ModelMetadata(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.model_metadata(request, grpc_context)

    async def ModelInfer(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.infer(request, grpc_context)

    async def ModelConfig(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.config(request, grpc_context)

    async def ModelStatistics(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.statistics(request, grpc_context)

    async def RepositoryIndex(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.index(request, grpc_context)

    async def RepositoryModelLoad(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.load(request, grpc_context)

    async def RepositoryModelUnload(self, request: Any, grpc_context: RayServegRPCContext) -> Any:
        return await self._grpc.unload(request, grpc_context)
