"""Protocols: how one image becomes an HTTP request, and a response the body a JSON line holds.

A protocol is one class here and one entry in `PROTOCOLS`; finding images, concurrency, retries
and output are shared by all of them. Only `v1` exists. The Open Inference Protocol (`/v2`) would
be a second class: a tensor request to `/v2/models/{name}/infer`, its outputs read back into a body.
"""

from __future__ import annotations

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


def json_or_text(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            return response.json()
        except ValueError:
            pass  # a proxy's truncated or mislabelled answer: keep what came
    return response.text


# Each takes the served model's name (None: the default model).
PROTOCOLS: dict[str, Callable[[str | None], Transport]] = {"v1": V1}
