"""The LitServe peer (`pip install -e '.[bench]'`): the graph's decode, model and top-5 behind
LitServe with `max_batch_size=8, batch_timeout=0.01`.

    python -m bench.peers.litserve_app --config <generated serve config> --port 8100

LitServe's shape: an API-server process (uvicorn + FastAPI) puts each request on a queue; one
inference worker process (`workers_per_device=1`, CPU, `torch_threads` 2) gathers up to 8 within
10 ms and runs `decode_request` -> `batch` -> `predict` -> `unbatch` -> `encode_response`. The body
is the raw JPEG (the same request the other systems get): `decode_request` declares it as a raw
`bytes` body, and `batch` decodes the gathered images in a thread pool of `decode_threads` (2),
as the plain Ray Serve peer does, before one forward pass. GET /health is LitServe's own.
"""

import argparse
import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import yaml
from fastapi import Body

from bench.service import LITSERVE_WORKER_COMM

# No `from __future__ import annotations` here: LitServe reads `decode_request`'s annotation to
# build its endpoint, and FastAPI needs the real `Annotated[bytes, Body(...)]`, not a string.


class ClassifierAPI(ls.LitAPI):
    def __init__(self, app_args: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app_args = app_args

    def setup(self, device: str) -> None:
        # A name the CPU meter can tell from LitServe's API-server processes (same cmdline).
        with contextlib.suppress(OSError):
            Path("/proc/self/comm").write_text(LITSERVE_WORKER_COMM)
        from bench.peers.common import Classifier

        self.work = Classifier(self.app_args)
        self.pool = ThreadPoolExecutor(self.work.args.decode_threads, "decode")

    # Evaluated at import by LitServe to build the endpoint: keep real (not string) annotations.
    def decode_request(self, request: Annotated[bytes, Body(media_type="image/jpeg")]) -> bytes:
        return request

    def batch(self, inputs: list[bytes]) -> list[Any]:
        return list(self.pool.map(self.work.decode, inputs))

    def predict(self, x: list[Any]) -> list[dict[str, Any]]:
        return self.work.forward(x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="generated serve config")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", default="vision", help="application whose args to use")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    app_args = next(a for a in config["applications"] if a["name"] == args.app)["args"]
    api = ClassifierAPI(app_args, max_batch_size=8, batch_timeout=0.01, api_path="/v1/predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
