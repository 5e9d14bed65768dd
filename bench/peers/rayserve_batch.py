"""The simplest plain Ray Serve peer: one deployment, one `@serve.batch` around decode + forward.

What a Ray Serve user writes from the `@serve.batch` docs, nothing more:

- one replica, placed like the graph's Model (`rayserve_plain.serve_config`), taking the HTTP
  request itself in a plain Starlette `__call__`;
- `@serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)` gathers the raw JPEG bodies; the
  batch method decodes each (a bad image becomes that item's 400, never the batch's) and runs one
  forward pass over the rest, all in one `asyncio.to_thread` call so the event loop keeps
  accepting requests and the next batch forms during a pass (`OFFLOAD`; bench/README.md has the
  measurement that chose it over running the batch inline);
- answers `{"model", "predictions": top-5, "batch_size"}` as JSON, like every other system.

    serve run <config>   # bench.run generates it: import_path bench.peers.rayserve_batch:build_app
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from bench.peers import rayserve_plain

APP = "plain-batch"
DEPLOYMENT = "BatchClassifier"
IMPORT_PATH = "bench.peers.rayserve_batch:build_app"
# Run each batch (decode + forward) in a worker thread rather than on the replica's event loop.
OFFLOAD = True


@serve.deployment(
    name=DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 1},
    # Above the deepest closed-loop point (32) so the batcher, not the proxy, holds the queue.
    max_ongoing_requests=64,
)
class BatchClassifier:
    def __init__(self, app_args: dict[str, Any]) -> None:
        from bench.peers.common import Classifier as Work

        self.work = Work(app_args)

    def _predict_batch(self, bodies: list[bytes]) -> list[dict[str, Any]]:
        """Decode each body, one forward pass over those that decoded; one answer per body."""
        pixels, errors = [], {}
        for i, data in enumerate(bodies):
            try:
                pixels.append(self.work.decode(data))
            except Exception as exc:  # noqa: BLE001 - a bad image fails its own item only
                errors[i] = {"error": str(exc)}
        answers = iter(self.work.forward(pixels) if pixels else [])
        return [errors[i] if i in errors else next(answers) for i in range(len(bodies))]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, bodies: list[bytes]) -> list[dict[str, Any]]:
        if OFFLOAD:
            return await asyncio.to_thread(self._predict_batch, bodies)
        return self._predict_batch(bodies)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/v1/health"):
            return PlainTextResponse("ok")
        if request.method != "POST" or not path.endswith("/v1/predict"):
            return JSONResponse({"error": "not found"}, status_code=404)
        answer = await self.predict(await request.body())
        return JSONResponse(answer, status_code=400 if "error" in answer else 200)


def build_app(args: dict[str, Any]) -> Application:
    """`args`: {"app_args": the graph's builder args from the generated config}."""
    return BatchClassifier.bind(args["app_args"])  # type: ignore[attr-defined,no-any-return]


def serve_config(
    graph_config: dict[str, Any], port: int, graph_app: str = "vision"
) -> dict[str, Any]:
    """A Serve config for this peer: the plain peer's, with this app's name and deployment."""
    config = rayserve_plain.serve_config(graph_config, port, graph_app)
    (app,) = config["applications"]
    app.update(name=APP, import_path=IMPORT_PATH)
    app["deployments"][0]["name"] = DEPLOYMENT
    return config
