"""The response schema of the HTTP API: one source for `/docs` and for what the bodies hold.

Pydantic lives only here, at the edge; the bodies themselves are built from the frozen dataclasses
in `deployments.items` (`Result.to_dict`, `ItemError.to_dict`) and checked against these models in
the tests.
"""

from typing import Any, Union

from pydantic import BaseModel, Field

from deployments import tasks
from deployments.errors import ERRORS_BY_CODE


class ImageOut(BaseModel):
    width: int
    height: int
    format: str
    orientation: int


# One entry of `predictions`, as each task shapes it (deployments/tasks).
PredictionOut = Union[tuple(dict.fromkeys(t.prediction_schema for t in tasks.REGISTRY.values()))]  # type: ignore[valid-type]  # noqa: UP007


class ResultOut(BaseModel):
    request_id: str
    item_id: str
    model: str
    model_version: str = Field(description="the version of the model that produced it")
    task: str
    image: ImageOut
    predictions: list[PredictionOut]  # type: ignore[valid-type]
    batch_size: int
    timings_ms: dict[str, float]
    label_map: str | None = Field(
        None,
        description="segmentation with mask_format=png: the label map in displayed pixels, a "
        "base64 PNG (a pixel holds its class id, or its instance's 1-based rank; 0 is nothing)",
    )


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


def option_parameters() -> list[dict[str, Any]]:
    """The query parameters of `/v1/predict` for `/docs`: every task's options, and which task
    takes each (a model accepts only its own task's)."""
    params = []
    for name, (spec, task_names) in tasks.all_option_specs().items():
        schemas: dict[str, dict[str, Any]] = {
            "int": {"type": "integer", "minimum": spec.low},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "choice": {"type": "string", "enum": list(spec.choices)},
        }
        schema = schemas[spec.kind]
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                "description": f"{' and '.join(task_names)}: {spec.description}",
            }
        )
    return params
