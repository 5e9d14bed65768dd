"""The Open Inference Protocol codec against tritonclient's own request builders and readers.

Requests are made by tritonclient (HTTP `generate_request_body`, gRPC's request builder) and
answers are read back with its `InferResult`s, so what passes here is what a Triton user sends
and reads. tritonclient's gRPC messages and ours register the same `inference.*` names in
protobuf's default pool, so this process uses only tritonclient's; a subprocess checks that our
generated messages have the same fields and numbers.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as triton_pb
import tritonclient.http as httpclient
from tritonclient.grpc._utils import _get_inference_request

from deployments import tasks
from deployments.errors import (
    BadRequest,
    CorruptImage,
    InvalidOption,
    PayloadTooLarge,
    UnknownModel,
)
from deployments.items import ImageInfo, ItemError, Prediction, Result
from deployments.settings import Limits
from deployments.transports import oip_grpc, oip_rest, oip_tensors
from tests import settings
from tests.images import jpeg, png
from tests.serving import ROOT
from vision_client.transport import V2

LIMITS = settings.limits(
    max_body_bytes=1 << 20, max_image_bytes=64 * 1024, max_images_per_request=4
)


def _limits(max_body_bytes: int, max_image_bytes: int) -> Limits:
    return settings.limits(
        max_body_bytes=max_body_bytes, max_image_bytes=max_image_bytes, max_images_per_request=4
    )


DETECTION = tasks.get("detection")
CLASSIFICATION = tasks.get("classification")
SEGMENTATION = tasks.get("segmentation")


def _images_input(images: list[bytes], shape: list[int] | None = None, **kwargs: Any) -> Any:
    data = np.array(images, dtype=np.object_).reshape(shape or [len(images)])
    tensor = httpclient.InferInput("image", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data, **kwargs)
    return tensor


def _rest(
    inputs: list[Any], outputs: list[Any] | None = None, **kwargs: Any
) -> tuple[bytes, str | None]:
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, **kwargs
    )
    return body, None if json_size is None else str(json_size)


def _grpc_request(images: list[bytes], shape: list[int] | None = None, **kwargs: Any) -> Any:
    data = np.array(images, dtype=np.object_).reshape(shape or [len(images)])
    tensor = grpcclient.InferInput("image", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    outputs = [grpcclient.InferRequestedOutput(n) for n in kwargs.pop("outputs", [])]
    return _get_inference_request(
        model_name="shapes",
        inputs=[tensor],
        model_version="",
        request_id=kwargs.pop("request_id", ""),
        outputs=outputs or None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=kwargs.pop("timeout", None),
        parameters=kwargs.pop("parameters", None),
    )


# --- requests -------------------------------------------------------------------------------


def test_rest_binary_request_from_tritonclient() -> None:
    images = [jpeg(64, 48, seed=1), png(32, 32, seed=2)]
    body, header = _rest(
        [_images_input(images)], request_id="req-7", parameters={"score_threshold": 0.3}
    )
    assert header is not None  # tritonclient sends images as binary data by default
    request = oip_rest.parse_rest(body, header, LIMITS)
    assert request.images == tuple(images)
    assert request.id == "req-7"
    assert request.options == (("score_threshold", 0.3),)
    assert request.binary_output  # no outputs named: tritonclient asks for binary ones
    parsed = tasks.parse_options(list(request.options), DETECTION, 100)
    assert parsed.get("score_threshold") == 0.3


def test_rest_column_shape_and_input_parameters_are_read() -> None:
    images = [jpeg(40, 30, seed=3), jpeg(30, 40, seed=4)]
    tensor = _images_input(images, shape=[2, 1])
    body, header = _rest([tensor], outputs=[httpclient.InferRequestedOutput("boxes")])
    assert header is not None
    # Options may also be the input's parameters (KServe's clients put them there).
    request = json.loads(body[: int(header)])
    request["inputs"][0]["parameters"]["max_detections"] = 5
    head = json.dumps(request).encode()
    parsed = oip_rest.parse_rest(head + body[int(header) :], str(len(head)), LIMITS)
    assert parsed.images == tuple(images)
    assert parsed.options == (("max_detections", 5),)
    assert parsed.outputs == (oip_tensors.RequestedOutput("boxes", True),)
    assert not parsed.binary_output


def test_rest_json_images_are_base64() -> None:
    images = [png(20, 10, seed=5)]
    text = np.array([base64.b64encode(images[0]).decode()], dtype=np.object_)
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(text, binary_data=False)
    body, header = _rest([tensor])
    assert header is None
    assert oip_rest.parse_rest(body, header, LIMITS).images == tuple(images)
    bad = json.loads(body)
    bad["inputs"][0]["data"] = ["not base64 at all!"]
    with pytest.raises(BadRequest, match="not base64"):
        oip_rest.parse_rest(json.dumps(bad).encode(), None, LIMITS)


def test_grpc_request_from_tritonclient() -> None:
    images = [jpeg(64, 48, seed=1), png(16, 16, seed=2)]
    request = _grpc_request(
        images, request_id="g-1", parameters={"score_threshold": 0.25}, timeout=2_000_000
    )
    parsed = oip_grpc.parse_grpc(request, LIMITS)
    assert parsed.images == tuple(images)
    assert parsed.id == "g-1"
    assert parsed.options == (("score_threshold", 0.25),)
    assert parsed.timeout_s == 2.0
    column = oip_grpc.parse_grpc(_grpc_request(images, shape=[2, 1]), LIMITS)
    assert column.images == tuple(images)
    inline = triton_pb.ModelInferRequest(model_name="shapes")
    inline.inputs.add(name="image", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        images
    )
    assert oip_grpc.parse_grpc(inline, LIMITS).images == tuple(images)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda r: r["inputs"][0].update(datatype="UINT8"), BadRequest, "datatype BYTES"),
        (lambda r: r["inputs"][0].update(name="input__0"), BadRequest, "named 'image'"),
        (lambda r: r["inputs"].append(dict(r["inputs"][0])), BadRequest, "exactly one input"),
        (lambda r: r["inputs"][0].update(shape=[2, 2]), BadRequest, r"\[N\] or \[N, 1\]"),
        (lambda r: r["inputs"][0].update(shape=[5]), PayloadTooLarge, "limit is 4"),
        (lambda r: r["inputs"][0].update(shape=[10**12]), PayloadTooLarge, "limit is 4"),
        (lambda r: r["inputs"][0].update(shape=[0]), BadRequest, "no image"),
        (lambda r: r["inputs"][0].update(shape=[3]), BadRequest, "end after 2"),
        (lambda r: r["inputs"][0].update(shape=[1]), BadRequest, "after its 1 element"),
        (
            lambda r: r["inputs"][0]["parameters"].update(binary_data_size=7),
            BadRequest,
            "declares binary_data_size 7",
        ),
        (lambda r: r.update(parameters={"priority": 1}), InvalidOption, "not supported"),
        (lambda r: r.update(parameters={"top_k": True}), InvalidOption, "string or a number"),
    ],
)
def test_rest_bad_requests_are_named(change: Any, error: type[Exception], match: str) -> None:
    body, header = _rest([_images_input([jpeg(20, 20), jpeg(20, 20, seed=1)])])
    assert header is not None
    request = json.loads(body[: int(header)])
    change(request)
    head = json.dumps(request).encode()
    with pytest.raises(error, match=match):
        oip_rest.parse_rest(head + body[int(header) :], str(len(head)), LIMITS)


def test_rest_sizes_are_bounded_before_they_are_used() -> None:
    big = bytes(LIMITS.max_image_bytes + 1)
    body, header = _rest([_images_input([big])])
    with pytest.raises(PayloadTooLarge, match="max_image_bytes"):
        oip_rest.parse_rest(body, header, _limits(1 << 22, LIMITS.max_image_bytes))
    with pytest.raises(PayloadTooLarge, match="the limit is 1048576 bytes"):
        oip_rest.parse_rest(body + bytes(1 << 20), header, LIMITS)
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        oip_rest.parse_rest(body, str(len(body) + 1), LIMITS)
    # A declared element length past the end of the data is refused, not allocated.
    lying = b'{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],' + (
        b'"parameters":{"binary_data_size":8}}]}'
    )
    framed = (
        lying + oip_tensors.join_bytes_elements([b"abcd"])[:4].replace(b"\x04", b"\xff") + b"abcd"
    )
    with pytest.raises(BadRequest, match="only 4 remain"):
        oip_rest.parse_rest(framed, str(len(lying)), _limits(1 << 20, 1 << 20))
    text = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]})
    padded = (text + " " * oip_tensors.MAX_JSON_BYTES).encode()
    with pytest.raises(PayloadTooLarge, match="send the images as binary data"):
        oip_rest.parse_rest(padded, None, _limits(2 * len(padded), 1 << 16))


def test_grpc_bad_requests_are_named() -> None:
    wrong = triton_pb.ModelInferRequest(model_name="shapes")
    wrong.inputs.add(name="image", datatype="FP32", shape=[1, 3, 8, 8])
    with pytest.raises(BadRequest, match="datatype BYTES"):
        oip_grpc.parse_grpc(wrong, LIMITS)
    too_many = _grpc_request([jpeg(8, 8)] * 5)
    with pytest.raises(PayloadTooLarge, match="limit is 4"):
        oip_grpc.parse_grpc(too_many, LIMITS)
    big = _grpc_request([bytes(LIMITS.max_image_bytes + 1)])
    with pytest.raises(PayloadTooLarge, match="max_image_bytes"):
        oip_grpc.parse_grpc(big, _limits(1 << 22, LIMITS.max_image_bytes))
    with pytest.raises(PayloadTooLarge, match="the request is"):
        oip_grpc.parse_grpc(big, _limits(1000, LIMITS.max_image_bytes))
    unsupported = _grpc_request([jpeg(8, 8)], parameters={"mask_format": "png"})
    options = oip_grpc.parse_grpc(unsupported, LIMITS).options
    with pytest.raises(InvalidOption, match="mask_format applies to"):
        tasks.parse_options(list(options), DETECTION, 100)


def test_model_and_version_are_checked() -> None:
    served = {"shapes": ("3",), "echo": ("1",)}
    oip_tensors.check_model("shapes", "", served)
    oip_tensors.check_model("shapes", None, served)
    oip_tensors.check_model("shapes", "3", served)
    with pytest.raises(UnknownModel, match="the models are: shapes, echo") as unknown:
        oip_tensors.check_model("resnet", None, served)
    assert unknown.value.status == 404
    with pytest.raises(UnknownModel, match="no version '1'; its versions are 3 "):
        oip_tensors.check_model("shapes", "1", served)


# --- responses ------------------------------------------------------------------------------


def _detection(item_id: str, boxes: list[tuple[float, float, float, float]]) -> Result:
    predictions = tuple(
        Prediction(label=f"class{i}", class_id=i, score=0.9 - 0.1 * i, box=box)
        for i, box in enumerate(boxes)
    )
    return Result(
        request_id="r",
        item_id=item_id,
        model="shapes",
        task="detection",
        image=ImageInfo(437, 273, "JPEG", 6),
        predictions=predictions,
        batch_size=3,
    )


ANSWERS: list[Result | ItemError] = [
    _detection("a", [(1.5, 2.25, 30.0, 40.5), (5.0, 6.0, 7.0, 8.0)]),
    ItemError("b", "corrupt_image", "the JPEG is truncated", 422),
    _detection("c", [(100.0, 50.0, 120.5, 60.25)]),
]


def _read_rest(body: bytes, headers: dict[str, str]) -> Any:
    length = headers.get(oip_tensors.HEADER_LENGTH)
    return httpclient.InferenceServerClient.parse_response_body(
        body, header_length=None if length is None else int(length)
    )


def _check_detection_outputs(read: Any, parameters: dict[str, Any]) -> None:
    boxes = read.as_numpy("boxes")
    assert boxes.dtype == np.float32 and boxes.shape == (3, 4)
    np.testing.assert_allclose(boxes[0], [1.5, 2.25, 30.0, 40.5])
    np.testing.assert_allclose(boxes[2], [100.0, 50.0, 120.5, 60.25])
    counts = read.as_numpy("counts")
    assert counts.tolist() == [2, 0, 1]
    per_image = np.split(read.as_numpy("class_ids"), np.cumsum(counts)[:-1])
    assert [p.tolist() for p in per_image] == [[0, 1], [], [0]]
    np.testing.assert_allclose(read.as_numpy("scores"), [0.9, 0.8, 0.9], rtol=1e-6)
    labels = [v.decode() if isinstance(v, bytes) else v for v in read.as_numpy("labels")]
    assert labels == ["class0", "class1", "class0"]
    items = json.loads(parameters["items"])
    assert items[0] == {
        "item_id": "a",
        "width": 437,
        "height": 273,
        "format": "JPEG",
        "orientation": 6,
        "batch_size": 3,
        "count": 2,
    }
    assert items[1]["error"] == {
        "code": "corrupt_image",
        "message": "the JPEG is truncated",
        "status": 422,
    }


@pytest.mark.parametrize("binary", [True, False])
def test_rest_detection_response_reads_back_in_tritonclient(binary: bool) -> None:
    request = oip_tensors.InferRequest(
        id="req-9", images=(b"",) * 3, options=(), binary_output=binary
    )
    tensors, parameters = oip_tensors.outputs_for(ANSWERS, DETECTION)
    assert [t.name for t in tensors] == ["boxes", "scores", "class_ids", "labels", "counts"]
    body, headers = oip_rest.rest_response("shapes", "3", request, tensors, parameters)
    read = _read_rest(body, headers)
    response = read.get_response()
    assert response["id"] == "req-9"
    assert (response["model_name"], response["model_version"]) == ("shapes", "3")
    _check_detection_outputs(read, response["parameters"])


def test_grpc_detection_response_reads_back_in_tritonclient() -> None:
    request = oip_tensors.InferRequest(id="g-9", images=(b"",) * 3, options=())
    tensors, parameters = oip_tensors.outputs_for(ANSWERS, DETECTION)
    response = oip_grpc.grpc_response(triton_pb, "shapes", "3", request, tensors, parameters)
    read = grpcclient.InferResult(
        triton_pb.ModelInferResponse.FromString(response.SerializeToString())
    )
    assert read.get_response().id == "g-9"
    assert read.get_response().model_version == "3"
    params = {k: oip_grpc.parameter_value(v) for k, v in read.get_response().parameters.items()}
    _check_detection_outputs(read, params)


def test_requested_outputs_only_and_per_output_binary() -> None:
    request = oip_tensors.InferRequest(
        id="",
        images=(b"",) * 3,
        options=(),
        outputs=(
            oip_tensors.RequestedOutput("boxes", True),
            oip_tensors.RequestedOutput("counts", False),
        ),
    )
    tensors, parameters = oip_tensors.outputs_for(ANSWERS, DETECTION, request.outputs)
    body, headers = oip_rest.rest_response("shapes", "3", request, tensors, parameters)
    read = _read_rest(body, headers)
    outputs = read.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["boxes", "counts"]
    assert "data" not in outputs[0] and outputs[1]["data"] == [2, 0, 1]
    assert read.as_numpy("boxes").shape == (3, 4)
    with pytest.raises(BadRequest, match="outputs are: boxes, scores"):
        oip_tensors.outputs_for(
            ANSWERS, DETECTION, (oip_tensors.RequestedOutput("detection_boxes"),)
        )


def test_one_failed_image_is_the_requests_error() -> None:
    with pytest.raises(CorruptImage, match="truncated"):
        oip_tensors.outputs_for([ANSWERS[1]], DETECTION)


def test_no_predictions_gives_empty_tensors() -> None:
    tensors, _ = oip_tensors.outputs_for([_detection("a", [])], DETECTION)
    shapes = {t.name: t.shape for t in tensors}
    assert shapes == {
        "boxes": (0, 4),
        "scores": (0,),
        "class_ids": (0,),
        "labels": (0,),
        "counts": (1,),
    }


def test_classification_and_segmentation_outputs_follow_the_task() -> None:
    top = Result(
        "r",
        "a",
        "echo",
        "classification",
        ImageInfo(8, 8, "PNG"),
        (Prediction("r255", 255, 0.9), Prediction("g000", 256, 0.1)),
        1,
    )
    tensors, _ = oip_tensors.outputs_for([top], CLASSIFICATION)
    assert [t.name for t in tensors] == ["scores", "class_ids", "labels", "counts"]
    rle = {"size": [8, 8], "counts": "abc"}
    segment = Prediction("red", 1, 0.99, (0.0, 0.0, 4.0, 4.0), area=16, mask=rle)
    seg = Result("r", "s", "colours", "segmentation", ImageInfo(8, 8, "PNG"), (segment,), 1)
    tensors, _ = oip_tensors.outputs_for([seg], SEGMENTATION)
    by_name = {t.name: t for t in tensors}
    assert list(by_name) == ["boxes", "scores", "class_ids", "labels", "areas", "masks", "counts"]
    assert json.loads(by_name["masks"].values[0]) == rle  # type: ignore[index]
    png_map = Result(
        "r",
        "s",
        "colours",
        "segmentation",
        ImageInfo(8, 8, "PNG"),
        (Prediction("red", 1, 0.99, (0.0, 0.0, 4.0, 4.0), area=16),),
        1,
        extra={"label_map": "iVBORw0KGgo="},
    )
    tensors, _ = oip_tensors.outputs_for([png_map, ANSWERS[1]], SEGMENTATION)
    by_name = {t.name: t for t in tensors}
    assert "masks" not in by_name
    assert by_name["label_maps"].values == [b"iVBORw0KGgo=", b""]


@pytest.mark.parametrize("name", sorted(tasks.REGISTRY))
def test_model_metadata_lists_every_output_of_the_task(name: str) -> None:
    meta = oip_tensors.model_metadata("m", ("3",), tasks.get(name))
    assert meta["versions"] == ["3"]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["counts"]["datatype"] == "INT64"
    assert outputs["labels"]["datatype"] == "BYTES"
    if "box" in tasks.get(name).prediction_schema.model_fields:
        assert outputs["boxes"] == {"name": "boxes", "datatype": "FP32", "shape": [-1, 4]}


def test_grpc_status_codes_follow_the_http_ones() -> None:
    assert oip_grpc.grpc_code(404) == "NOT_FOUND"
    assert oip_grpc.grpc_code(413) == "RESOURCE_EXHAUSTED"
    assert oip_grpc.grpc_code(422) == "INVALID_ARGUMENT"
    assert oip_grpc.grpc_code(503) == "UNAVAILABLE"
    assert oip_grpc.grpc_code(504) == "DEADLINE_EXCEEDED"


# --- the proto ------------------------------------------------------------------------------

_DUMP_OURS = """
import json
from deployments.oip_proto import grpc_predict_v2_pb2 as pb
out = {}
def walk(d):
    out[d.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
    for n in d.nested_types:
        walk(n)
for d in pb.DESCRIPTOR.message_types_by_name.values():
    walk(d)
service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
out["rpcs"] = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
print(json.dumps(out))
"""


def test_our_proto_speaks_tritonclients_wire_format() -> None:
    ours = json.loads(
        subprocess.run(
            [sys.executable, "-c", _DUMP_OURS], cwd=ROOT, capture_output=True, check=True
        ).stdout
    )
    theirs_service = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for rpc, (request, response) in ours.pop("rpcs").items():
        method = theirs_service.methods_by_name[rpc]
        assert [method.input_type.full_name, method.output_type.full_name] == [request, response]
    for full_name, fields in ours.items():
        theirs = triton_pb.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
        for name, spec in fields.items():
            field = theirs.fields_by_name[name]
            assert [field.number, field.type, field.is_repeated] == spec, f"{full_name}.{name}"


def test_vision_clients_v2_requests_parse() -> None:
    image = jpeg(32, 24, seed=9)
    built = V2(model="shapes-detector").request(httpx.AsyncClient(), image, [("top_k", "3")])
    assert built.url.path == "/v2/models/shapes-detector/infer"
    parsed = oip_rest.parse_rest(
        built.read(), built.headers["inference-header-content-length"], LIMITS
    )
    assert parsed.images == (image,)
    assert parsed.options == (("top_k", "3"),)
    assert not parsed.binary_output  # it reads the outputs as JSON
