"""The response schema of the HTTP API: one source for `/docs` and for what the bodies hold.

Pydantic lives only here, at the edge; the bodies themselves are built from the frozen dataclasses
in `deployments.types` (`Result.to_dict`, `ItemError.to_dict`) and checked against these models in
the tests.
"""

from typing import Any

from pydantic import BaseModel


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
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        400: "malformed request or invalid option",
        413: "body, image or pixel count over the limit",
        415: "not an image media type or format",
        422: "corrupt or undecodable image",
        503: "overloaded; retry after the Retry-After header",
    }.items()
}
