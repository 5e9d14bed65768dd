"""Protocols: how one image becomes an HTTP request, and a response the body a JSON line holds.

A protocol is one class here and one entry in `PROTOCOLS`; finding images, concurrency, retries
and output are shared by all of them: `v1` (the service's own API) and `v2` (the Open Inference
Protocol, as Triton's clients speak it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx


class Transport(Protocol):
    def request(
        self, client: httpx.AsyncClient, image: bytes, options: Sequence[tuple[str, str]]
    ) -> httpx.Request:
        """The request that sends `image` with the task's `options` (`("top_k", "3")`, ...)."""
        ...

    def body(self, response: httpx.Response) -> Any:
        """What the JSON line keeps of the response: its JSON, else its text."""
        ...


@dataclass(frozen=True, slots=True)
class V1:
    """`POST /v1/predict` (or `/v1/models/{model}/predict`): the raw image as the body, the
    options as query parameters."""

    model: str | None = None  # a served model's name; None: the service's default model

    @property
    def path(self) -> str:
        return (
            "/v1/predict"
            if self.model is None
            else f"/v1/models/{quote(self.model, safe='')}/predict"
        )

    def request(
        self, client: httpx.AsyncClient, image: bytes, options: Sequence[tuple[str, str]]
    ) -> httpx.Request:
        # The service reads the format from the bytes themselves, so no type is guessed here.
        return client.build_request(
            "POST",
            self.path,
            content=image,
            params=list(options),
            headers={"content-type": "application/octet-stream"},
        )

    def body(self, response: httpx.Response) -> Any:
        return json_or_text(response)


@dataclass(frozen=True, slots=True)
class V2:
    """`POST /v2/models/{model}/infer`: the image as a one-element BYTES tensor named `image`, sent
    as binary data (the protocol's binary-data extension), the options as request `parameters`;
    the answer's output tensors come back as JSON."""

    model: str | None = None  # required: the protocol names the model in every request

    def request(
        self, client: httpx.AsyncClient, image: bytes, options: Sequence[tuple[str, str]]
    ) -> httpx.Request:
        if self.model is None:  # the command line refuses this before any request
            raise ValueError("the Open Inference Protocol needs a model name")
        element = len(image).to_bytes(4, "little") + image  # a BYTES element: length, bytes
        header = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "parameters": dict(options),
        }
        head = json.dumps(header).encode()
        return client.build_request(
            "POST",
            f"/v2/models/{quote(self.model, safe='')}/infer",
            content=head + element,
            headers={
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(head)),
            },
        )

    def body(self, response: httpx.Response) -> Any:
        return json_or_text(response)


def json_or_text(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            return response.json()
        except ValueError:
            pass  # a proxy's truncated or mislabelled answer: keep what came
    return response.text


# Each takes the served model's name (None: the default model).
PROTOCOLS: dict[str, Callable[[str | None], Transport]] = {"v1": V1, "v2": V2}
