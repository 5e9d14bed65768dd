"""The plain Ray Serve peer: one deployment, `@serve.batch`, the graph's decode, model and top-5.

What a Ray Serve user would write first for this job, and the bar the graph has to clear:

- one replica (`num_cpus: 1`, plus the graph's Model's `num_gpus` when it asks for a GPU) that
  takes the HTTP request itself in a plain Starlette `__call__` (no FastAPI: nothing to route but
  two paths, and FastAPI's routing and validation would only add work per request);
- the body is decoded in a thread pool (`decode_threads`, 2) so the event loop keeps accepting;
- `@serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)` gathers decoded images, and each
  batch's forward pass runs in one dedicated thread (`torch_threads` 2), so decoding and
  accepting go on during a pass;
- answers `{"model", "predictions": top-5, "batch_size"}` as JSON.

    serve run <config>   # bench.run generates it: import_path bench.peers.rayserve_plain:build_app
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

APP = "plain"
DEPLOYMENT = "Classifier"


@serve.deployment(
    name=DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 1},
    # Above the deepest closed-loop point (32) so the batcher, not the proxy, holds the queue.
    max_ongoing_requests=64,
)
class Classifier:
    def __init__(self, app_args: dict[str, Any]) -> None:
        from bench.peers.common import Classifier as Work

        self.work = Work(app_args)
        self.decode_pool = ThreadPoolExecutor(self.work.args.decode_threads, "decode")
        self.forward_pool = ThreadPoolExecutor(1, "forward")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, pixels: list[npt.NDArray[np.uint8]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.forward_pool, self.work.forward, pixels)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/v1/health"):
            return PlainTextResponse("ok")
        if request.method != "POST" or not path.endswith("/v1/predict"):
            return JSONResponse({"error": "not found"}, status_code=404)
        data = await request.body()
        loop = asyncio.get_running_loop()
        try:
            pixels = await loop.run_in_executor(self.decode_pool, self.work.decode, data)
        except Exception as exc:  # noqa: BLE001 - any bad image is the client's 4xx here
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(await self.predict(pixels))


def build_app(args: dict[str, Any]) -> Application:
    """`args`: {"app_args": the graph's builder args from the generated config}."""
    return Classifier.bind(args["app_args"])  # type: ignore[attr-defined,no-any-return]


def serve_config(
    graph_config: dict[str, Any], port: int, graph_app: str = "vision"
) -> dict[str, Any]:
    """A Serve config for this peer with the graph config's model args, on 127.0.0.1:`port`."""
    app = next(a for a in graph_config["applications"] if a["name"] == graph_app)
    model = next((d for d in app.get("deployments", []) if d.get("name") == "Model"), {})
    # The peer's one replica is placed like the graph's Model: on a GPU when the Model asks for one.
    placement = {"num_cpus": 1, **model.get("ray_actor_options", {})}
    placement.pop("runtime_env", None)
    return {
        "proxy_location": graph_config.get("proxy_location", "EveryNode"),
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "bench.peers.rayserve_plain:build_app",
                "args": {"app_args": app["args"]},
                "deployments": [{"name": DEPLOYMENT, "ray_actor_options": placement}],
            }
        ],
    }
