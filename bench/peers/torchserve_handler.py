"""The TorchServe peer's handler: the graph's decode, model and top-5 behind TorchServe.

TorchServe (`pip install -e '.[torchserve]'` and a Java 17 runtime; bench/README.md) runs this
file as the model's custom handler in its Python backend worker: 1 worker, `batchSize` 8,
`maxBatchDelay` 10 ms (`bench.service.TorchServeProcess` writes the config and the archive).
The frontend (Java, Netty) gathers up to 8 requests and hands them to `handle` as one list;
`handle` decodes each raw JPEG body, runs one forward pass and answers one JSON object per
request, as every other system does. The graph's args come in `app_args.json`, an extra file of
the model archive. One class in this module: TorchServe takes it as the handler.
"""

from __future__ import annotations

import json
import os
from typing import Any


class ClassifierHandler:
    def initialize(self, context: Any) -> None:
        from bench.peers.common import Classifier

        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "app_args.json")) as f:
            self.work = Classifier(json.load(f))

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """One answer per request, in order; a bad image answers its own request only."""
        pixels, errors = [], {}
        for i, row in enumerate(data):
            body = row.get("body") if row.get("body") is not None else row.get("data")
            try:
                pixels.append(self.work.decode(bytes(body or b"")))
            except Exception as exc:  # noqa: BLE001 - a bad image fails its own item only
                errors[i] = {"error": str(exc)}
                context.set_response_status(400, "bad image", idx=i)
        answers = iter(self.work.forward(pixels) if pixels else [])
        return [errors[i] if i in errors else next(answers) for i in range(len(data))]
