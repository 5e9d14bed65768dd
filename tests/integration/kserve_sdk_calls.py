"""Calls to a running service through KServe's Python SDK (`kserve`, its v2 REST client), and
what the SDK made of each answer, as JSON: test_v2_oip.py's SDK test sends the calls and checks.

It runs in .venv-kserve (`make setup`), never in the tests' interpreter: every kserve release
asks for protobuf<7 (Ray's is 7), and its gRPC messages declare the same `inference.*` names as
tritonclient's and ours, so one process cannot import both.

stdin: {"base_url": ..., "calls": [{"call": "is_server_live" | "is_server_ready"},
{"call": "is_model_ready", "model": ...}, {"call": "infer", "model": ..., "images": [path, ...],
"parameters": {...}, "request_id": ...}]}; stdout: one result per call, in order.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, InferResponse, RESTConfig


def _plain(value: Any) -> Any:
    """A tensor's values as JSON: BYTES elements as text."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _response(response: InferResponse) -> dict[str, Any]:
    return {
        "id": response.id,
        "model_name": response.model_name,
        "parameters": response.parameters,
        "outputs": {
            o.name: {
                "datatype": o.datatype,
                "shape": list(o.shape),
                "data": _plain(o.as_numpy().tolist()),
            }
            for o in response.outputs
        },
    }


async def _call(client: InferenceRESTClient, base_url: str, call: dict[str, Any]) -> Any:
    kind = call["call"]
    if kind in ("is_server_live", "is_server_ready"):
        return await getattr(client, kind)(base_url)
    if kind == "is_model_ready":
        return await client.is_model_ready(base_url, call["model"])
    images = np.array([Path(p).read_bytes() for p in call["images"]], dtype=np.object_)
    tensor = InferInput(name="image", shape=[len(images)], datatype="BYTES")
    tensor.set_data_from_numpy(images, binary_data=True)
    request = InferRequest(
        model_name=call["model"],
        infer_inputs=[tensor],
        request_id=call.get("request_id"),
        parameters=call.get("parameters"),
    )
    try:
        return _response(await client.infer(base_url, request, model_name=call["model"]))
    except httpx.HTTPStatusError as error:
        return {"status": error.response.status_code, "message": str(error)}


async def main() -> None:
    plan = json.load(sys.stdin)
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        results = [await _call(client, plan["base_url"], call) for call in plan["calls"]]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
