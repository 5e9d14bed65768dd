"""The response schema of the HTTP API: one source for `/docs` and for what the bodies hold.

Pydantic lives only here, at the edge; the bodies themselves are built from the frozen dataclasses
in `deployments.types` (`Result.to_dict`, `ItemError.to_dict`) and checked against these models in
the tests.
"""

from typing import Any

from pydantic import BaseModel

from deployments.errors import ERRORS_BY_CODE


class ImageOut(BaseModel):
    width: int
    height: int
    format: str
    orientation: int


class PredictionOut(BaseModel):
    label: str
    class_id: int
    score: float
    box: list[float] | None = None


class ResultOut(BaseModel):
    request_id: str
    item_id: str
    model: str
    task: str
    image: ImageOut
    predictions: list[PredictionOut]
    batch_size: int
    timings_ms: dict[str, float]


class ErrorDetail(BaseModel):
    code: str
    message: str
    status: int | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail
    request_id: str


class ItemErrorOut(BaseModel):
    item_id: str
    error: ErrorDetail


class MultiResultOut(BaseModel):
    request_id: str
    results: list[ResultOut | ItemErrorOut]


BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": BINARY,
            "application/octet-stream": BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "array", "items": BINARY["schema"]}},
                    "required": ["image"],
                }
            },
        },
    }
}


def _codes_by_status() -> dict[int, list[str]]:
    found: dict[int, set[str]] = {}
    for code, cls in ERRORS_BY_CODE.items():
        found.setdefault(cls.status, set()).add(code)
    return {status: sorted(codes) for status, codes in sorted(found.items())}


# Every status the API answers with, and its codes, read from the error tree itself.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": "error codes: " + ", ".join(codes)}
    for status, codes in _codes_by_status().items()
}
